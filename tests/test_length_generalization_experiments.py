"""The length-generalization experiments' comparison scripts (issue 24): their committed comparisons.md regenerate
from the committed run files alone, and their paired intervals are scipy's paired t."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
FOLDERS = ("context_extension", "algorithmic_length_generalization")


def _script(folder: str):
    path = os.path.join(EXPERIMENTS, folder, "comparisons.py")
    spec = importlib.util.spec_from_file_location(f"comparisons_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed(folder: str) -> bool:
    return os.path.exists(os.path.join(EXPERIMENTS, folder, "comparisons.md"))


@pytest.mark.parametrize("folder", [f for f in FOLDERS if _committed(f)])
def test_committed_comparisons_regenerate_byte_for_byte(folder):
    with open(os.path.join(EXPERIMENTS, folder, "comparisons.md")) as f:
        committed = f.read()
    assert _script(folder).render(os.path.join(EXPERIMENTS, folder, "sweep")) == committed


def _t_interval(diffs):
    d = np.asarray(diffs, np.float64)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean(), d.mean() - half, d.mean() + half


@pytest.mark.skipif(not _committed("context_extension"), reason="the context-extension runs are not committed")
def test_context_extension_cells_are_scipy_paired_t_on_the_run_files():
    """YaRN − NTK after fine-tuning at 256 tokens, recomputed from each seed's extrapolation.json with scipy."""
    module = _script("context_extension")
    sweep = os.path.join(EXPERIMENTS, "context_extension", "sweep")
    losses = {}
    for method in ("yarn", "ntk"):
        for seed in (0, 1, 2):
            with open(os.path.join(sweep, "runs", f"scaling={method},seed={seed}", "extrapolation.json")) as f:
                losses[method, seed] = {x["length"]: x["loss"] for x in json.load(f)["lengths"]}
    mean, lo, hi = _t_interval([losses["yarn", s][256] - losses["ntk", s][256] for s in (0, 1, 2)])
    row = next(line for line in module.render(sweep).splitlines() if line.startswith("| YaRN fine-tuned - NTK"))
    cell = row.split(" | ")[3]  # the columns: comparison, 64, 128, 256, 512
    assert cell.startswith(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ")
    p = stats.ttest_rel([losses["yarn", s][256] for s in (0, 1, 2)], [losses["ntk", s][256] for s in (0, 1, 2)]).pvalue
    assert f"p={p:.2g} (Holm " in cell
    holm = float(cell.split("(Holm ")[1].split(",")[0])
    assert holm >= p and (" tie" in cell) == (holm > 0.05)  # the verdict is Holm's, over the table's cells


def test_algorithmic_pairs_keep_only_seeds_where_both_reached():
    """The precondition drops a seed where either model is below 99% in distribution; without it every shared seed
    counts; the interval is scipy's paired t on what is kept."""
    module = _script("algorithmic_length_generalization")
    runs = {("a", "ordered", "t"): {0: {"id": 1.0, "ood": 0.50, "ood_tokens": 0.9},
                                    1: {"id": 0.995, "ood": 0.40, "ood_tokens": 0.8},
                                    2: {"id": 0.90, "ood": 0.90, "ood_tokens": 0.9},
                                    3: {"id": 1.0, "ood": 0.35, "ood_tokens": 0.7}},
            ("b", "ordered", "t"): {0: {"id": 1.0, "ood": 0.20, "ood_tokens": 0.6},
                                    1: {"id": 1.0, "ood": 0.30, "ood_tokens": 0.7},
                                    2: {"id": 1.0, "ood": 0.10, "ood_tokens": 0.5},
                                    3: {"id": 0.999, "ood": 0.30, "ood_tokens": 0.6}}}
    d, note = module._pair(runs, ("a", "ordered", "t"), ("b", "ordered", "t"), "ood")
    assert note == "3/4"
    mean, lo, hi = _t_interval([0.30, 0.10, 0.05])
    assert (d["mean"], d["lo"], d["hi"]) == pytest.approx((mean, lo, hi), abs=1e-12)
    assert d["p"] == pytest.approx(stats.ttest_rel([0.40, 0.50, 0.35], [0.30, 0.20, 0.30]).pvalue, rel=1e-9)
    d, note = module._pair(runs, ("a", "ordered", "t"), ("b", "ordered", "t"), "ood", precondition=False)
    mean, lo, hi = _t_interval([0.30, 0.10, 0.80, 0.05])
    assert note == "4/4"
    module.statistics.adjust([d], "holm")  # a family of one: Holm's p is the raw one
    assert module._cell(d).startswith(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] p={d['p']:.2g} (Holm {d['p']:.2g}")
