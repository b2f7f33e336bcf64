"""Writes tests/golden/model_defaults/<cpu kind>.npz + .json: parameters and logits of the model at commit 89ef887
(before model.norm / mlp / tie_embeddings / head_dim / qkv_bias existed), built on THIS machine, and its fingerprint.

`tests/test_model.py::test_default_fields_bit_for_bit` rebuilds the same configs with the current code (`build`)
and asserts the same parameter tree and parameters and logits equal to the golden of this machine's kind, bit for
bit (to tests/goldens.RTOL where no golden of this kind exists), so the new fields' defaults change nothing.

To add a CPU kind: python tests/golden/make_model_defaults.py
(it extracts 89ef887 with `git archive` into a temporary folder and builds the old model there, in a subprocess;
the fingerprint is this machine's, recorded by the current code). Goldens so far:
  AuthenticAMD-26-2: AMD EPYC Zen 5 (family 26 model 2), 2026-12-06, jax/jaxlib 0.10.2; its instruction-set flags
    and numpy version were not recorded, so it is compared bitwise nowhere (to RTOL everywhere).
  GenuineIntel-6-167: Intel Xeon (family 6 model 167, AVX-512, AMX), 2026-12-07.
"""

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

COMMIT = "89ef887"
MATMUL = "xla rows_dot_general"  # the products of 89ef887's model: XLA's dot on flattened rows
CASES = {  # name -> overrides of configs/tiny.py
    "rope": {},
    "learned_bias_gelu_tanh": {"model.position.name": "learned", "model.bias": True, "model.gelu_approximate": True},
    "alibi_gqa": {"model.position.name": "alibi", "model.n_kv_head": 2},
}
HERE = os.path.dirname(os.path.abspath(__file__))


def build(overrides: dict, *, legacy: bool = False) -> tuple[dict, np.ndarray]:
    """(flat parameters, logits) of the tiny model with `overrides`; `legacy`: with 89ef887's code on the path."""
    from jaxformer.configs import tiny

    from jaxformer import config as config_lib
    from jaxformer.model import GPT

    cfg = tiny.get_config()
    for field, value in overrides.items():
        node = cfg
        *sections, leaf = field.split(".")
        for s in sections:
            node = node[s]
        node[leaf] = value
    cfg = config_lib.resolve(cfg, vocab_size=37)
    if legacy:
        model = GPT(cfg.model, rngs=nnx.Rngs(0))
    else:
        from jaxformer import matmul, platform

        # As a CPU model is built since issue 23 (loader.build_model with XLA's dot): the forms the maths had
        # inline at 89ef887 (products on flattened rows, erf GELU, no size-1 head axes) are injected from the edge.
        model = GPT(cfg.model, rngs=nnx.Rngs(0), dot_general=matmul.rows_dot_general, **platform.model_ops())
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 16), 0, 37), np.int32)
    logits = np.asarray(model(tokens))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
    return flat, logits


def write_legacy(path: str) -> None:
    out = {}
    for name, overrides in CASES.items():
        flat, logits = build(overrides, legacy=True)
        out.update({f"{name}:param:{k}": v for k, v in flat.items()})
        out[f"{name}:logits"] = logits
    np.savez_compressed(path, **out)


def main() -> None:
    from jaxformer import fingerprint

    fp = fingerprint.machine(matmul=MATMUL)
    c = fp["cpu"]
    name = f"{c['vendor']}-{c['family']}-{c['model']}"
    path = os.path.join(HERE, "model_defaults", name + ".npz")
    if os.path.exists(path):
        sys.exit(f"{path} exists: this CPU kind has its golden already (delete it first to write it again)")
    repo = os.path.dirname(os.path.dirname(HERE))
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", repo, "archive", COMMIT], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": old}
        subprocess.run([sys.executable, __file__, "--legacy", path], check=True, env=env, cwd=old)
    record = {"fingerprint": fp, "code": f"jaxformer at {COMMIT}", "written_by": "tests/golden/make_model_defaults.py"}
    with open(path[:-4] + ".json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    print("wrote", path, "on", fingerprint.describe(fp))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--legacy"]:
        write_legacy(sys.argv[2])
    else:
        main()
