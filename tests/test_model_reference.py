"""The whole GPT forward against a float64 NumPy reference written out here: the token table, every positional
encoding at the point where it acts (the embedding, q and k, the logits' bias), LayerNorm, the attention of every
layer, the MLP and the tied output. It shows each variant, with non-default fields, really reaches the model.

The positional pieces come from `reference_positional.py` (the papers' formulas, nothing shared with the code).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_positional as ref
from flax import nnx

from jaxformer import config as config_lib
from jaxformer.model import GPT

V, T, B = 13, 8, 2

CASES = [  # (name, non-default fields)
    ("none", {}),
    ("sinusoidal", {"scale": 0.5}),  # the default sqrt_d scheme: token embeddings x sqrt(D)
    ("sinusoidal", {"scheme": "matched"}),  # the table at the embeddings' RMS
    ("learned", {"max_len": 24}),
    ("rope", {"theta": 500.0}),
    ("rope", {"fraction": 0.5, "scaling": "yarn", "factor": 4.0, "original_max_len": 16}),
    ("rope", {"scaling": "ntk", "factor": 2.0}),
    ("rope", {"scaling": "linear", "factor": 3.0}),
    ("rope", {"scaling": "llama3", "factor": 8.0, "original_max_len": 32, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "theta": 50.0}),
    ("xpos", {"theta": 800.0, "scale_base": 16.0, "gamma": 0.3, "center": 4}),
    ("alibi", {}),
    ("t5", {"num_buckets": 6, "max_distance": 10}),
    ("kerple", {}),
    ("fire", {"mlp_width": 8, "init_L": 6.0, "eps": 1e-3}),
]


def build(name, fields, *, n_layer=2, n_head=2, n_kv_head=None, model_fields=None, embed_multiplier=1.0):
    cfg = config_lib.load("tiny")
    cfg.model.embed_multiplier = embed_multiplier
    cfg.model.position.name = name
    for key, value in fields.items():
        cfg.model.position[name][key] = value
    for key, value in (model_fields or {}).items():
        cfg.model[key] = value
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_kv_head = n_layer, n_head, n_kv_head
    cfg = config_lib.resolve(cfg, vocab_size=V)
    model = GPT(cfg.model, rngs=nnx.Rngs(params=0))
    # Random, non-zero values everywhere: zero-initialised tables and biases would hide a dropped encoding.
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    params = jax.tree.unflatten(treedef, leaves)
    return cfg, nnx.merge(graphdef, params), jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def layer_norm(x, scale, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale


def rms_norm(x, scale, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def silu(x):
    return x / (1 + np.exp(-x))


def gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def softplus(x):
    return np.log1p(np.exp(x))


def reference_forward(cfg, p, tokens, positions):
    """Logits [B, T, V] and weights [L, B, H, T, T], float64, from the parameters `p` (a plain dict)."""
    m = cfg.model
    name, fields = m.position.name, m.position[m.position.name].to_dict()
    H, K = m.n_head, m.n_kv_head or m.n_head
    d = m.head_dim or m.n_embd // H

    def norm(x, params):
        if m.norm == "rmsnorm":
            return rms_norm(x, params["scale"], m.norm_eps)
        return layer_norm(x, params["scale"], m.norm_eps)

    def mlp(h, params):
        if m.mlp == "swiglu":
            return (silu(h @ params["gate"]["kernel"]) * (h @ params["fc"]["kernel"])) @ params["proj"]["kernel"]
        return gelu(h @ params["fc"]["kernel"], m.gelu_approximate or m.mlp == "gelu_tanh") @ params["proj"]["kernel"]
    pp = p.get("position", {}).get("params", {})
    multiplier = m.embed_multiplier or math.sqrt(m.n_embd)  # 0 = sqrt(D), Vaswani et al. 2017
    if name == "sinusoidal" and fields["scheme"] == "sqrt_d":  # the variant's own factor, on top
        multiplier *= math.sqrt(m.n_embd)
    x = multiplier * p["wte"]["embedding"][tokens]  # the input side only: the output head uses the table as it is
    if name == "sinusoidal":
        x = x + fields["scale"] * ref.sinusoidal(positions, m.n_embd)[None]  # resolved: 1, or 0.02 sqrt(2) matched
    elif name == "learned":
        x = x + pp["table"][positions][None]

    def rotate(x_Txd, is_key):
        if name == "rope":
            return ref.rope(x_Txd, positions, **fields)
        if name == "xpos":
            return ref.xpos(x_Txd, positions, is_key=is_key, **fields)
        return x_Txd

    if name == "alibi":
        bias = ref.alibi_bias(positions, positions, H)
    elif name == "t5":
        bias = ref.t5_bias(pp["table"], positions, positions, fields["bidirectional"], fields["max_distance"])
    elif name == "kerple":
        bias = ref.kerple_log(softplus(pp["r1_raw"]), softplus(pp["r2_raw"]), positions, positions)
    elif name == "fire":
        bias = ref.fire(pp, positions, positions, init_L=fields["init_L"], eps=fields["eps"])
    else:
        bias = np.zeros((H, T, T))
    causal = np.tril(np.ones((T, T), bool))
    all_weights = []
    for i in range(m.n_layer):
        block = p["blocks"][i]
        h = norm(x, block["ln1"])
        qkv = h @ block["attn"]["params"]["qkv"]["kernel"]
        if m.qkv_bias:
            qkv = qkv + block["attn"]["params"]["qkv"]["bias"]
        q = qkv[..., : H * d].reshape(B, T, H, d)
        k = qkv[..., H * d: (H + K) * d].reshape(B, T, K, d)
        v = qkv[..., (H + K) * d:].reshape(B, T, K, d)
        out = np.zeros((B, T, H, d))
        weights = np.zeros((B, H, T, T))
        for b in range(B):
            for head in range(H):
                kv = head // (H // K)  # grouped-query: consecutive query heads share a key/value head
                qh, kh = rotate(q[b, :, head], False), rotate(k[b, :, kv], True)
                logits = qh @ kh.T / math.sqrt(d) + bias[head]
                logits = np.where(causal, logits, -np.inf)
                w = np.exp(logits - logits.max(-1, keepdims=True))
                w /= w.sum(-1, keepdims=True)
                weights[b, head] = w
                out[b, :, head] = w @ v[b, :, kv]
        all_weights.append(weights)
        x = x + out.reshape(B, T, H * d) @ block["attn"]["params"]["out"]["kernel"]
        x = x + mlp(norm(x, block["ln2"]), block["mlp"])
    x = norm(x, p["ln_f"])
    head = p["wte"]["embedding"].T if m.tie_embeddings else p["lm_head"]["kernel"]
    return x @ head, np.stack(all_weights)


@pytest.mark.parametrize("name,fields", CASES, ids=[f"{n}-{'-'.join(map(str, f.values())) or 'defaults'}"
                                                     for n, f in CASES])
def test_model_equals_the_float64_reference_for_every_encoding(name, fields):
    cfg, model, p = build(name, fields)
    assert not cfg.model.bias and cfg.model.dropout == 0.0  # what the reference writes out
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, V, (B, T))
    positions = np.arange(T) + 5  # not 0..T-1: the positions passed in must be the ones used
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, t, pos: nnx.merge(graphdef, s).attention_weights(t, positions_T=pos))
    logits, weights = run(state, jnp.asarray(tokens), jnp.asarray(positions, jnp.int32))
    want_logits, want_weights = reference_forward(cfg, p, tokens, positions)
    np.testing.assert_allclose(np.asarray(weights)[:, :, :, :, :], want_weights, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
    # The plain forward (the training path, any attention implementation) gives the same logits.
    forward = jax.jit(lambda s, t, pos: nnx.merge(graphdef, s)(t, positions_T=pos))
    np.testing.assert_allclose(np.asarray(forward(state, jnp.asarray(tokens), jnp.asarray(positions, jnp.int32))),
                               want_logits, rtol=1e-4, atol=1e-4)


def test_grouped_query_model_equals_the_float64_reference():
    cfg, model, p = build("rope", {}, n_head=4, n_kv_head=2)
    tokens = np.random.default_rng(4).integers(0, V, (B, T))
    positions = np.arange(T)
    graphdef, state = nnx.split(model)
    logits, weights = jax.jit(lambda s, t: nnx.merge(graphdef, s).attention_weights(t))(state, jnp.asarray(tokens))
    want_logits, want_weights = reference_forward(cfg, p, tokens, positions)
    np.testing.assert_allclose(np.asarray(weights), want_weights, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("multiplier", [0.0, 2.5])
def test_token_embedding_multiplier_equals_the_float64_reference(multiplier):
    """Vaswani et al.'s sqrt(D) scheme (embed_multiplier 0) with the unit sinusoidal table, and any multiplier."""
    cfg, model, p = build("sinusoidal", {"scheme": "matched", "scale": 1.0}, embed_multiplier=multiplier)
    tokens = np.random.default_rng(5).integers(0, V, (B, T))
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(tokens))
    want, _ = reference_forward(cfg, p, tokens, np.arange(T))
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    plain, _ = reference_forward(config_lib.resolve(config_lib.load("tiny", [
        "--config.model.position.name=sinusoidal", "--config.model.n_layer=2", "--config.model.n_head=2",
        "--config.model.position.sinusoidal.scale=1.0", "--config.model.position.sinusoidal.scheme=matched"]),
        vocab_size=V), p, tokens, np.arange(T))
    assert np.abs(plain - want).max() > 1e-2  # the multiplier changes the function


LLAMA_FIELDS = [  # the Llama family's model fields, each alone and all together (with GQA)
    {"norm": "rmsnorm", "norm_eps": 1e-6},
    {"mlp": "swiglu", "mlp_hidden": 40},
    {"mlp": "gelu_tanh"},
    {"tie_embeddings": False},
    {"head_dim": 24},
    {"qkv_bias": True},
    {"norm": "rmsnorm", "norm_eps": 1e-6, "mlp": "swiglu", "mlp_hidden": 40, "tie_embeddings": False,
     "head_dim": 8, "qkv_bias": True},
]


@pytest.mark.parametrize("model_fields", LLAMA_FIELDS, ids=["-".join(f) for f in LLAMA_FIELDS])
def test_model_fields_equal_the_float64_reference(model_fields):
    cfg, model, p = build("rope", {}, n_head=4, n_kv_head=2, model_fields=model_fields)
    tokens = np.random.default_rng(5).integers(0, V, (B, T))
    graphdef, state = nnx.split(model)
    logits, weights = jax.jit(lambda s, t: nnx.merge(graphdef, s).attention_weights(t))(state, jnp.asarray(tokens))
    want_logits, want_weights = reference_forward(cfg, p, tokens, np.arange(T))
    np.testing.assert_allclose(np.asarray(weights), want_weights, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
