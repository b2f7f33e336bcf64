"""Comparing numbers XLA computes now with numbers a committed file holds (goldens, fixtures), on any CPU kind.

Each golden `<name>.npz` has a `<name>.json` beside it with the fingerprint of the machine that wrote it
(`jaxformer.fingerprint.machine()`). Where a golden's fingerprint matches this machine the comparison is bitwise;
otherwise it is to `RTOL` of the golden's largest magnitude: XLA:CPU's kernels round differently on other CPU kinds
(Zen 5 vs an Intel Xeon with AMX: logits of the tiny model differ by up to 2.6e-7 of their largest value), while a
change in the maths moves them by far more than 1e-5.

tests/golden/hf/ holds transformers' (torch's) outputs, another implementation: test_convert.py compares them at
a tolerance on every machine (and greedy tokens, which float32 rounding does not flip there), so no fingerprint
governs them.
"""

import glob
import json
import os

import numpy as np

from jaxformer import fingerprint

RTOL = 1e-5  # float32 rounding across CPU kinds, with ~40x room over the largest difference seen


def load(folder: str) -> list[tuple[str, dict, dict]]:
    """Every golden in `folder`: (name, its record with "fingerprint", its arrays), sorted by name."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        with open(path[:-4] + ".json") as f:
            record = json.load(f)
        with np.load(path) as arrays:
            out.append((os.path.basename(path)[:-4], record, dict(arrays)))
    if not out:
        raise FileNotFoundError(f"no golden .npz in {folder}")
    return out


def pick(folder: str, current: dict) -> tuple[str, dict, bool]:
    """The golden to compare with: one written on this machine's kind (bitwise), else the first (to RTOL).
    Returns (name, arrays, bitwise)."""
    goldens = load(folder)
    for name, record, arrays in goldens:
        if not fingerprint.differences(record["fingerprint"], current):
            return name, arrays, True
    name, _, arrays = goldens[0]
    return name, arrays, False


def assert_matches(actual, want, *, bitwise: bool, err_msg: str = "") -> None:
    """Bitwise when `bitwise`, else |actual - want| <= RTOL * (|want| + max |want|)."""
    actual, want = np.asarray(actual), np.asarray(want)
    if bitwise:
        np.testing.assert_array_equal(actual, want, err_msg=err_msg)
    else:
        scale = float(np.abs(want).max()) if want.size else 0.0
        np.testing.assert_allclose(actual, want, rtol=RTOL, atol=RTOL * scale, err_msg=err_msg)
