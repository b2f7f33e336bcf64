"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM; Hugging Face `LlamaForCausalLM` and its kin) -> jaxformer.

RMSNorm, a SwiGLU MLP (gate, up, down), grouped-query attention, an untied head (or tied: SmolLM), `head_dim`,
q/k/v biases (Qwen2), RoPE with its scalings (linear, llama3). torch Linear weights are [out, in]: transposed.
Hugging Face rotates halves (x_i, x_{i+d/2}); jaxformer rotates pairs (x_2i, x_2i+1): q's and k's output columns are
permuted within each head at import (`common.permute_heads`), which leaves every logit unchanged.
"""

from __future__ import annotations

from jaxformer.convert.common import ConvertError, Entry, Family, permute_heads, transpose

ROPE_TYPES = ("default", "linear", "llama3")


def _dims(hf: dict) -> tuple[int, int, int, int]:
    H = hf["num_attention_heads"]
    K = hf.get("num_key_value_heads") or H
    D = hf["hidden_size"]
    d = hf.get("head_dim") or D // H
    return D, H, K, d


def rope_parameters(hf: dict) -> tuple[float, dict]:
    """(theta, scaling dict) from either transformers 4's `rope_theta` + `rope_scaling` or 5's `rope_parameters`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    merged = {**params, **scaling}
    merged.setdefault("rope_type", merged.get("type", "default"))
    return float(theta), merged


def config_map(hf: dict) -> dict:
    D, H, K, d = _dims(hf)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConvertError(f"config.json: hidden_act={act!r} is not supported; the Llama family's SwiGLU uses silu")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag) and hf.get("model_type") != "qwen2":
            raise ConvertError(f"config.json: {flag}=true is not supported (jaxformer's Llama family has biases on "
                               "q, k, v only: model.qkv_bias)")
    theta, rope = rope_parameters(hf)
    rope_type = rope["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise ConvertError(f"config.json: rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConvertError("config.json: partial_rotary_factor != 1 is not supported for the Llama family")
    max_pos = hf.get("max_position_embeddings", 2048)
    block = max_pos
    window = hf.get("sliding_window") if hf.get("use_sliding_window", hf.get("model_type") == "mistral") else None
    if window:  # attention within the window equals full attention for contexts up to it
        block = min(block, window)
    fields = {
        "model.n_layer": hf["num_hidden_layers"], "model.n_head": H, "model.n_kv_head": K, "model.n_embd": D,
        "model.vocab_size": hf["vocab_size"], "model.bias": False, "model.head_dim": d,
        "model.mlp": "swiglu", "model.mlp_hidden": hf["intermediate_size"],
        "model.norm": "rmsnorm", "model.norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "model.tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "model.qkv_bias": hf.get("model_type") == "qwen2" or bool(hf.get("attention_bias", False)),
        "model.position.name": "rope", "model.position.rope.theta": theta,
        "model.position.rope.fraction": 1.0, "model.position.rope.scaling": "none",
        "model.position.rope.factor": 1.0, "model.position.rope.original_max_len": max_pos,
        "data.block_size": block,
    }
    if rope_type == "linear":
        fields.update({"model.position.rope.scaling": "linear", "model.position.rope.factor": float(rope["factor"])})
    elif rope_type == "llama3":
        fields.update({
            "model.position.rope.scaling": "llama3", "model.position.rope.factor": float(rope["factor"]),
            "model.position.rope.original_max_len": int(rope["original_max_position_embeddings"]),
            "model.position.rope.low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
            "model.position.rope.high_freq_factor": float(rope.get("high_freq_factor", 4.0))})
    return fields


def param_map(hf: dict) -> list[Entry]:
    D, H, K, d = _dims(hf)
    V, F, L = hf["vocab_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    q_cols, k_cols, v_cols = (0, H * d), (H * d, (H + K) * d), ((H + K) * d, (H + 2 * K) * d)
    q_kernel = lambda x: permute_heads(transpose(x), H, d)
    k_kernel = lambda x: permute_heads(transpose(x), K, d)
    entries = [Entry("model.embed_tokens.weight", (V, D), "wte/embedding"),
               Entry("model.norm.weight", (D,), "ln_f/scale")]
    if not hf.get("tie_word_embeddings", False):
        entries.append(Entry("lm_head.weight", (V, D), "lm_head/kernel", transpose))
    qkv_bias = hf.get("model_type") == "qwen2" or bool(hf.get("attention_bias", False))
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blocks/{i}/"
        qkv = b + "attn/params/qkv/"
        entries += [
            Entry(p + "input_layernorm.weight", (D,), b + "ln1/scale"),
            Entry(p + "self_attn.q_proj.weight", (H * d, D), qkv + "kernel", q_kernel, q_cols),
            Entry(p + "self_attn.k_proj.weight", (K * d, D), qkv + "kernel", k_kernel, k_cols),
            Entry(p + "self_attn.v_proj.weight", (K * d, D), qkv + "kernel", transpose, v_cols),
            Entry(p + "self_attn.o_proj.weight", (D, H * d), b + "attn/params/out/kernel", transpose),
            Entry(p + "post_attention_layernorm.weight", (D,), b + "ln2/scale"),
            Entry(p + "mlp.gate_proj.weight", (F, D), b + "mlp/gate/kernel", transpose),
            Entry(p + "mlp.up_proj.weight", (F, D), b + "mlp/fc/kernel", transpose),
            Entry(p + "mlp.down_proj.weight", (D, F), b + "mlp/proj/kernel", transpose),
        ]
        if qkv_bias:
            entries += [
                Entry(p + "self_attn.q_proj.bias", (H * d,), qkv + "bias", lambda x: permute_heads(x, H, d), q_cols),
                Entry(p + "self_attn.k_proj.bias", (K * d,), qkv + "bias", lambda x: permute_heads(x, K, d), k_cols),
                Entry(p + "self_attn.v_proj.bias", (K * d,), qkv + "bias", columns=v_cols),
            ]
    return entries


def ignored(name: str, hf: dict) -> bool:
    # Older checkpoints store RoPE's inverse frequencies (recomputed from the config); a tied head may be saved twice.
    return name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and hf.get("tie_word_embeddings", False))


FAMILY = Family("llama", config_map, param_map, ignored)
