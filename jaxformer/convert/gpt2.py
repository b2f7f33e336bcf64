"""GPT-2 (Radford et al. 2019; Hugging Face `GPT2LMHeadModel`) -> jaxformer.

GPT-2 is jaxformer's default architecture with biases: learned positions, pre-LayerNorm, a 4x `gelu_new` (tanh
GELU) MLP, tied head. Its `Conv1D` weights are already [in, out] and `c_attn` is the fused [q | k | v] kernel, so
every tensor is copied as stored.
"""

from __future__ import annotations

from jaxformer.convert.common import ConvertError, Entry, Family

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_map(hf: dict) -> dict:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ConvertError(f"config.json: {flag}=true is not supported (jaxformer scales attention by 1/sqrt(d) "
                               "in every layer)")
    if not hf.get("scale_attn_weights", True):
        raise ConvertError("config.json: scale_attn_weights=false is not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConvertError(f"config.json: activation_function={act!r} is not supported; supported: "
                           f"{', '.join(ACTIVATIONS)}")
    n_positions = hf.get("n_positions", 1024)
    return {
        "model.n_layer": hf["n_layer"], "model.n_head": hf["n_head"], "model.n_kv_head": hf["n_head"],
        "model.n_embd": hf["n_embd"], "model.vocab_size": hf["vocab_size"], "model.bias": True,
        "model.mlp": ACTIVATIONS[act], "model.mlp_hidden": hf.get("n_inner") or 4 * hf["n_embd"],
        "model.norm": "layernorm", "model.norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "model.tie_embeddings": True, "model.head_dim": 0, "model.qkv_bias": False,
        "model.position.name": "learned", "model.position.learned.max_len": n_positions,
        "data.block_size": n_positions,
    }


def param_map(hf: dict) -> list[Entry]:
    D, V, L = hf["n_embd"], hf["vocab_size"], hf["n_layer"]
    F = hf.get("n_inner") or 4 * D
    entries = [Entry("wte.weight", (V, D), "wte/embedding"),
               Entry("wpe.weight", (hf.get("n_positions", 1024), D), "position/params/table"),
               Entry("ln_f.weight", (D,), "ln_f/scale"), Entry("ln_f.bias", (D,), "ln_f/bias")]
    for i in range(L):
        h, b = f"h.{i}.", f"blocks/{i}/"
        entries += [
            Entry(h + "ln_1.weight", (D,), b + "ln1/scale"), Entry(h + "ln_1.bias", (D,), b + "ln1/bias"),
            Entry(h + "attn.c_attn.weight", (D, 3 * D), b + "attn/params/qkv/kernel"),
            Entry(h + "attn.c_attn.bias", (3 * D,), b + "attn/params/qkv/bias"),
            Entry(h + "attn.c_proj.weight", (D, D), b + "attn/params/out/kernel"),
            Entry(h + "attn.c_proj.bias", (D,), b + "attn/params/out/bias"),
            Entry(h + "ln_2.weight", (D,), b + "ln2/scale"), Entry(h + "ln_2.bias", (D,), b + "ln2/bias"),
            Entry(h + "mlp.c_fc.weight", (D, F), b + "mlp/fc/kernel"),
            Entry(h + "mlp.c_fc.bias", (F,), b + "mlp/fc/bias"),
            Entry(h + "mlp.c_proj.weight", (F, D), b + "mlp/proj/kernel"),
            Entry(h + "mlp.c_proj.bias", (D,), b + "mlp/proj/bias"),
        ]
    return entries


def ignored(name: str, hf: dict) -> bool:
    # The causal-mask buffers of older checkpoints, and the head: tied to wte (saved as a copy by some writers).
    return name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight"


FAMILY = Family("gpt2", config_map, param_map, ignored, strip_prefixes=("transformer.",))
