"""The GPT modules: shapes, parameter count, causality, KV-cache decoding = full forward for every variant."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import positional
from jaxformer.model import GPT, count_params


def make_cfg(position="rope", implementation="reference", **model):
    cfg = config_lib.load("tiny")
    cfg.model.position.name = position
    cfg.model.attention.implementation = implementation
    cfg.model.attention.block_size = 4  # several key blocks even at T=8, so the chunked path really chunks
    for key, value in model.items():
        cfg.model[key] = value
    return config_lib.resolve(cfg, vocab_size=13)


def build(cfg, seed=0):
    model = GPT(cfg.model, rngs=nnx.Rngs(params=seed))
    # Random, non-zero values everywhere (zero-initialised biases and tables would hide position bugs).
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def jitted(model):
    """model(tokens) and model.decode(tokens, cache), compiled (eager op-by-op dispatch is slow on 2 cores)."""
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    forward = jax.jit(lambda p, tokens: nnx.merge(graphdef, p)(tokens))
    decode = jax.jit(lambda p, tokens, cache: nnx.merge(graphdef, p).decode(tokens, cache))
    return (lambda tokens: forward(params, tokens)), (lambda tokens, cache: decode(params, tokens, cache))


def test_logits_shape_and_dtype():
    model = build(make_cfg())
    tokens = jax.random.randint(jax.random.key(0), (3, 8), 0, 13)
    logits = model(tokens)
    assert logits.shape == (3, 8, 13) and logits.dtype == jnp.float32


def test_parameter_count_matches_nanogpt_formula():
    cfg = config_lib.load("shakespeare_char_cpu")
    cfg = config_lib.resolve(cfg, vocab_size=65)
    model = GPT(cfg.model, rngs=nnx.Rngs(params=0))
    D, L, V, T = 128, 4, 65, 64
    per_block = D + 3 * D * D + D * D + D + 4 * D * D + 4 * D * D  # ln1, qkv, attn proj, ln2, fc, mlp proj
    expected = L * per_block + V * D + T * D + D  # + tied token table, learned positions, ln_f
    assert count_params(model) == expected
    assert count_params(model, non_embedding=True) == expected - V * D - T * D  # nanoGPT reports 0.80M


@pytest.mark.parametrize("position", positional.list_positional_encodings())
def test_causal_no_leak(position):
    """Changing tokens after position i changes no logit at positions <= i (every variant)."""
    forward, _ = jitted(build(make_cfg(position)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 13, (2, 8))
    i = 4
    changed = tokens.copy()
    changed[:, i + 1:] = rng.integers(0, 13, (2, 8 - i - 1))
    a, b = forward(jnp.asarray(tokens)), forward(jnp.asarray(changed))
    np.testing.assert_array_equal(np.asarray(a[:, : i + 1]), np.asarray(b[:, : i + 1]))
    assert not np.allclose(np.asarray(a[:, i + 1:]), np.asarray(b[:, i + 1:]))


def test_causality_probe_gradient_is_zero_after_position():
    """nanodo's probe: the loss at position i has zero gradient w.r.t. the inputs at positions j > i.

    The learned position table's row j enters the network only as the input at position j, so its gradient is that
    input's gradient (the token table is tied to the output layer, so it would not isolate the input side).
    """
    model = build(make_cfg("learned"))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 13)
    table = params["position"]["params"]["table"]

    for i in (0, 3, 6):
        def loss_at_i(table, i=i):
            p = {**params, "position": {"params": {"table": table}}}
            logits = nnx.merge(graphdef, p)(tokens)
            return jnp.sum(jax.nn.log_softmax(logits[:, i])[:, 0])

        grad = np.asarray(jax.grad(loss_at_i)(table))
        np.testing.assert_array_equal(grad[i + 1:], 0.0)
        assert np.all(np.abs(grad[: i + 1]).sum(axis=1) > 0)


@pytest.mark.parametrize("position", positional.list_positional_encodings())
@pytest.mark.parametrize("implementation", ["reference", "chunked"])
def test_kv_cache_decoding_matches_full_forward(position, implementation):
    """Prefill 3 tokens, then decode one at a time: each step's logits equal the full forward pass's."""
    model = build(make_cfg(position, implementation))
    forward, decode = jitted(model)
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 13)
    full = np.asarray(forward(tokens))
    cache = model.init_cache(2, capacity=9)
    logits, cache = decode(tokens[:, :3], cache)
    steps = [np.asarray(logits)]
    for t in range(3, 9):
        logits, cache = decode(tokens[:, t:t + 1], cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=2e-5, atol=2e-5)
    assert int(cache["index"]) == 9


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_kv_cache_decoding_with_grouped_query_heads_matches_full_forward(position):
    """Four query heads over two key/value heads: the cache holds K = 2 heads and decoding still equals the full
    pass."""
    model = build(make_cfg(position, n_head=4, n_kv_head=2))
    forward, decode = jitted(model)
    tokens = jax.random.randint(jax.random.key(5), (2, 7), 0, 13)
    cache = model.init_cache(2, capacity=7)
    assert cache["layers"][0]["k"].shape == (2, 7, 2, 8)
    logits, cache = decode(tokens[:, :2], cache)
    steps = [np.asarray(logits)]
    for t in range(2, 7):
        logits, cache = decode(tokens[:, t:t + 1], cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(forward(tokens)), rtol=2e-5, atol=2e-5)


def test_dropout_only_with_key():
    model = build(make_cfg(dropout=0.5))
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 13)
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(model(tokens)))
    a = model(tokens, dropout_key=jax.random.key(0))
    b = model(tokens, dropout_key=jax.random.key(1))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_with_float32_params():
    cfg = make_cfg(dtype="bfloat16")
    model = build(cfg)
    state = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype("float32")}
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 13)
    low = model(tokens)
    assert low.dtype == jnp.float32 and np.isfinite(np.asarray(low)).all()
    full = build(make_cfg())(tokens)
    np.testing.assert_allclose(np.asarray(low), np.asarray(full), atol=3e-2)  # measured: 7e-3 at |logits| <= 1.5


def test_grouped_query_attention_model():
    model = build(make_cfg(n_head=4, n_kv_head=2, n_embd=32))
    tokens = jax.random.randint(jax.random.key(5), (2, 8), 0, 13)
    assert model(tokens).shape == (2, 8, 13)
    cache = model.init_cache(2, 8)
    assert cache["layers"][0]["k"].shape == (2, 8, 2, 8)


def test_attention_weights_capture_shape():
    model = build(make_cfg("t5"))
    tokens = jax.random.randint(jax.random.key(6), (1, 8), 0, 13)
    logits, weights = model.attention_weights(tokens)
    assert weights.shape == (1, 1, 2, 8, 8)  # [L, B, H, T, T]
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "xpos", "alibi", "t5", "kerple"])
def test_relative_variants_see_only_position_differences(position):
    """Randomized positions are sorted random integers: a relative variant's logits depend only on their
    differences (shifting them all changes nothing), an absolute one's on the values themselves."""
    model = build(make_cfg(position))
    forward = jax.jit(lambda tokens, positions: model(tokens, positions_T=positions))
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 13)
    positions = positional.random_positions(jax.random.key(5), 8, 200)
    shifted = positions - positions[0] + 37
    np.testing.assert_allclose(np.asarray(forward(tokens, positions)), np.asarray(forward(tokens, shifted)),
                               rtol=2e-5, atol=2e-5)
    assert not np.allclose(forward(tokens, positions), forward(tokens, jnp.arange(8, dtype=jnp.int32)), atol=1e-4)


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_absolute_variants_see_the_randomized_positions_themselves(position):
    cfg = make_cfg(position)
    if position == "learned":
        cfg.model.position.learned.max_len = 256
    model = build(cfg)
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 13)
    positions = positional.random_positions(jax.random.key(5), 8, 200)
    a, b = model(tokens, positions_T=positions), model(tokens, positions_T=positions - positions[0] + 37)
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("position", ["rope", "alibi", "fire"])
def test_randomized_positions_through_the_chunked_attention_equal_the_reference(position):
    tokens = jax.random.randint(jax.random.key(6), (2, 12), 0, 13)
    positions = positional.random_positions(jax.random.key(7), 12, 100)
    out = [np.asarray(build(make_cfg(position, impl))(tokens, positions_T=positions))
           for impl in ("reference", "chunked")]
    np.testing.assert_allclose(out[0], out[1], rtol=2e-5, atol=2e-5)


def test_default_fields_bit_for_bit():
    """The model fields added for pretrained models (norm, mlp, tie_embeddings, head_dim, qkv_bias) at their
    defaults build today's model: the same parameter tree, and parameters and logits equal to the model made before
    the fields existed (tests/golden/model_defaults/<cpu kind>.npz, written by tests/golden/make_model_defaults.py
    from commit 89ef887's code), for a RoPE model, a GPT-2-style one (learned, biases, tanh GELU) and ALiBi with GQA.
    Bit for bit where a golden was written on this machine's kind (tests/goldens.py), to float32 rounding elsewhere."""
    import goldens
    from golden import make_model_defaults as golden

    from jaxformer import fingerprint

    folder = os.path.join(os.path.dirname(__file__), "golden", "model_defaults")
    kind, want, bitwise = goldens.pick(folder, fingerprint.machine(matmul=golden.MATMUL))
    for name, overrides in golden.CASES.items():
        flat, logits = golden.build(overrides)
        want_params = {k.split(":param:", 1)[1] for k in want if k.startswith(f"{name}:param:")}
        assert set(flat) == want_params, name
        for key, value in flat.items():
            goldens.assert_matches(value, want[f"{name}:param:{key}"], bitwise=bitwise, err_msg=f"{kind} {name} {key}")
        goldens.assert_matches(logits, want[f"{name}:logits"], bitwise=bitwise, err_msg=f"{kind} {name}")


def test_default_fields_golden_of_another_cpu_kind_agrees_to_float32_rounding():
    """Every committed golden, whatever kind wrote it, holds today's model to tests/goldens.RTOL: a golden that
    disagrees beyond float32 rounding means the model changed, not the machine."""
    import goldens
    from golden import make_model_defaults as golden

    built = {name: golden.build(overrides) for name, overrides in golden.CASES.items()}
    for kind, _, want in goldens.load(os.path.join(os.path.dirname(__file__), "golden", "model_defaults")):
        for name, (flat, logits) in built.items():
            goldens.assert_matches(logits, want[f"{name}:logits"], bitwise=False, err_msg=f"{kind} {name}")
            for key, value in flat.items():
                goldens.assert_matches(value, want[f"{name}:param:{key}"], bitwise=False, err_msg=f"{kind} {key}")


def test_saved_config_without_the_model_fields_loads_as_before():
    """A config.json written before the fields existed gets today's model from LEGACY_DEFAULTS."""
    import json

    cfg = make_cfg()
    saved = cfg.to_dict()
    for field in ("norm", "norm_eps", "mlp", "mlp_hidden", "tie_embeddings", "head_dim", "qkv_bias"):
        del saved["model"][field]
    for field in ("low_freq_factor", "high_freq_factor"):
        del saved["model"]["position"]["rope"][field]
    loaded = config_lib.from_json(json.dumps(saved))
    assert loaded.to_dict() == cfg.to_dict()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 13, (1, 8)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(GPT(loaded.model, rngs=nnx.Rngs(0))(tokens)),
                                  np.asarray(GPT(cfg.model, rngs=nnx.Rngs(0))(tokens)))


def test_llama_fields_train():
    """The Llama family's fields are usable for training: every parameter they add gets a gradient, and a few
    optimizer steps on a fixed batch lower the loss (through the training step's own loss and optimizer)."""
    from jaxformer import train as train_lib

    cfg = make_cfg(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_hidden=48, tie_embeddings=False, head_dim=8,
                   qkv_bias=True, n_head=4, n_kv_head=2)
    graphdef, params = train_lib.split_model(train_lib.build_model(cfg))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 13, (4, 9)).astype(np.int32)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
             "weights": jnp.ones((4, 8), jnp.float32)}
    grads = jax.grad(train_lib.loss_fn)(params, graphdef, batch)
    for path in (("lm_head", "kernel"), ("blocks", 0, "mlp", "gate", "kernel"), ("blocks", 0, "ln1", "scale"),
                 ("blocks", 0, "attn", "params", "qkv", "bias")):
        g = grads
        for key in path:
            g = g[key]
        assert float(jnp.abs(g).max()) > 0, path
    optimizer = train_lib.make_optimizer(cfg.optim)
    state = optimizer.init(params)
    step = jax.jit(lambda p, s: _optimizer_step(p, s, optimizer, graphdef, batch))
    first = float(train_lib.loss_fn(params, graphdef, batch))
    for _ in range(20):
        params, state = step(params, state)
    assert float(train_lib.loss_fn(params, graphdef, batch)) < first - 0.3


def _optimizer_step(params, state, optimizer, graphdef, batch):
    import optax

    from jaxformer import train as train_lib

    grads = jax.grad(train_lib.loss_fn)(params, graphdef, batch)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state
