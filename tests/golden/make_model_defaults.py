"""Writes tests/golden/model_defaults.npz: parameters and logits of today's model at its default fields.

Made once at commit 89ef887 (before model.norm / mlp / tie_embeddings / head_dim / qkv_bias existed); the test
`tests/test_model.py::test_default_fields_bit_for_bit` rebuilds the same configs with the current code and asserts
the same parameter tree and bitwise-equal parameters and logits, so the new fields' defaults change nothing.
Run: python tests/golden/make_model_defaults.py
"""

import os

import jax
import numpy as np
from flax import nnx
from jaxformer.configs import tiny

from jaxformer import config as config_lib
from jaxformer import matmul, platform
from jaxformer.model import GPT

CASES = {  # name -> overrides of configs/tiny.py
    "rope": {},
    "learned_bias_gelu_tanh": {"model.position.name": "learned", "model.bias": True, "model.gelu_approximate": True},
    "alibi_gqa": {"model.position.name": "alibi", "model.n_kv_head": 2},
}


def build(overrides: dict) -> tuple[dict, np.ndarray]:
    cfg = tiny.get_config()
    for field, value in overrides.items():
        node = cfg
        *sections, leaf = field.split(".")
        for s in sections:
            node = node[s]
        node[leaf] = value
    cfg = config_lib.resolve(cfg, vocab_size=37)
    # As a CPU model is built since issue 23 (loader.build_model with XLA's dot): the forms the maths had inline
    # at 89ef887 (products on flattened rows, erf GELU, no size-1 head axes) are injected from the edge.
    model = GPT(cfg.model, rngs=nnx.Rngs(0), dot_general=matmul.rows_dot_general, **platform.model_ops())
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 16), 0, 37), np.int32)
    logits = np.asarray(model(tokens))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
    return flat, logits


if __name__ == "__main__":
    out = {}
    for name, overrides in CASES.items():
        flat, logits = build(overrides)
        out.update({f"{name}:param:{k}": v for k, v in flat.items()})
        out[f"{name}:logits"] = logits
    np.savez_compressed(os.path.join(os.path.dirname(__file__), "model_defaults.npz"), **out)
    print(len(out), "arrays")
