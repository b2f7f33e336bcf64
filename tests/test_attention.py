"""attention.py: each implementation against the float64 NumPy reference (outputs, gradients); properties."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxformer import attention

IMPLEMENTATIONS = sorted(attention.IMPLEMENTATIONS)
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def rel_err(actual, expected, magnitude=None):
    """max |actual - expected| / max |expected| (or max |magnitude|): error relative to the array's scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected if magnitude is None else magnitude).max()
    error = np.abs(actual - expected).max()
    return error / scale if scale > 0 else error


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Tiny arrays: compile time dominates, so skip XLA's optimisation passes (restored afterwards)."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def normal(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.normal(size=shape), dtype)


def f64(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


# ------------------------------------------------------------------------------------- the reference itself

def test_hand_computed_weights():
    # q = [0, √2], k = I: logits q·kᵀ/√2 = [0, 1], so the weights are [1, e] / (1 + e).
    q = jnp.array([[0.0, math.sqrt(2.0)]])
    v = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    out, weights = attention.scaled_dot_product_attention(q, jnp.eye(2), v, return_weights=True)
    expected = np.array([1.0, math.e]) / (1.0 + math.e)
    np.testing.assert_allclose(weights[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[0], expected @ np.asarray(v), rtol=1e-6)
    ref_out, ref_weights = reference.attention_head(np.array([[0.0, math.sqrt(2.0)]]), np.eye(2), v)
    np.testing.assert_allclose(ref_weights[0], expected, rtol=1e-12)
    np.testing.assert_allclose(ref_out[0], expected @ np.asarray(v), rtol=1e-12)


def test_numpy_vjp_matches_finite_differences():
    rng = np.random.default_rng(0)
    q, k, v, dout, bias = (rng.normal(size=s) for s in [(3, 4), (5, 4), (5, 2), (3, 2), (3, 5)])
    mask = rng.random((3, 5)) > 0.3
    mask[1] = False
    grads = reference.attention_head_vjp(q, k, v, dout, mask, bias)
    loss = lambda q, k, v, bias: np.sum(reference.attention_head(q, k, v, mask, bias)[0] * dout)
    args, eps = [q, k, v, bias], 1e-6
    for i, grad in enumerate(grads):
        numeric = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, atol=1e-8)


# ---------------------------------------------------------------------------- the single-head function

@settings(max_examples=6, deadline=None)
@given(T=st.integers(1, 6), S=st.integers(1, 6), d=st.integers(1, 5), dv=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1), masked=st.booleans(), biased=st.booleans())
def test_single_head_matches_numpy(T, S, d, dv, seed, masked, biased):
    """Random shapes, values, masks and biases. Tiny arrays can cancel (a result near 0 built from O(1)
    terms), so the error is relative to the magnitude of the terms (see reference.attention_head_vjp)."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (normal(rng, s) for s in [(T, d), (S, d), (S, dv), (T, dv)])
    mask = jnp.asarray(rng.random((T, S)) > 0.4) if masked else None
    bias = normal(rng, (T, S)) if biased else jnp.zeros((T, S))

    @jax.jit
    def loss(q, k, v, bias):
        out = attention.scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, scale=0.7)
        return jnp.sum(out * dout), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, bias)
    ref_out, ref_weights = reference.attention_head(q, k, v, mask, bias, scale=0.7)
    ref_grads = reference.attention_head_vjp(q, k, v, dout, mask, bias, scale=0.7)
    magnitudes = reference.attention_head_vjp(q, k, v, dout, mask, bias, scale=0.7, magnitudes=True)
    assert rel_err(out, ref_out, ref_weights @ np.abs(f64(v))) <= 1e-5
    for grad, ref_grad, magnitude in zip(grads, ref_grads, magnitudes, strict=True):
        assert np.all(np.isfinite(grad))
        assert rel_err(grad, ref_grad, magnitude) <= 1e-5


def test_weights_rows_sum_to_one_and_masked_entries_are_zero():
    rng = np.random.default_rng(1)
    mask = rng.random((6, 7)) > 0.5
    mask[2] = False
    out, weights = attention.scaled_dot_product_attention(normal(rng, (6, 4)), normal(rng, (7, 4)),
                                                          normal(rng, (7, 3)), mask=jnp.asarray(mask),
                                                          return_weights=True)
    chex.assert_shape(weights, (6, 7))
    chex.assert_type(weights, jnp.float32)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), np.where(mask.any(-1), 1.0, 0.0), atol=1e-6)
    assert np.all(np.asarray(weights)[~mask] == 0.0)
    assert np.all(np.asarray(out)[2] == 0.0)


def test_single_head_under_vmap_equals_a_loop():
    rng = np.random.default_rng(2)
    q, k, v = normal(rng, (3, 4, 8)), normal(rng, (3, 5, 8)), normal(rng, (3, 5, 2))
    batched = jax.vmap(attention.scaled_dot_product_attention)(q, k, v)
    looped = jnp.stack([attention.scaled_dot_product_attention(q[i], k[i], v[i]) for i in range(3)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------ every implementation against the float64 reference

def _slopes_bias_fn(slopes_H):
    """An ALiBi-like positional bias with differentiable slopes, to exercise bias_fn and its gradient."""
    return lambda q_pos, k_pos: -slopes_H[:, None, None] * jnp.abs(q_pos[:, None] - k_pos[None, :]).astype(
        jnp.float32)


# name: (B, T, S, H, K, d, dv, causal, block_size, mask shape or None, bias shape, with bias_fn)
CASES = {
    # GQA, T != S, dv != d, head-wise mask with a fully masked query, per-batch bias, bias_fn, S % block != 0.
    "gqa_mask_bias_fn": (2, 5, 7, 4, 2, 8, 6, False, 3, (4, 5, 7), (2, 1, 5, 7), True),
    # Multi-query decoding: causal with queries at the last T of S positions, a [T, S] bias, several blocks.
    "mqa_causal_offset": (1, 3, 10, 2, 1, 8, 8, True, 4, None, (3, 10), False),
    # Plain multi-head (H = K: the reference maps no group axis), causal, head-wise mask, per-batch bias, bias_fn.
    "mha_causal_mask_bias_fn": (2, 6, 6, 3, 3, 4, 5, True, 4, (3, 6, 6), (2, 3, 6, 6), True),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_numpy_reference(implementation, case, dtype):
    B, T, S, H, K, d, dv, causal, block, mask_shape, bias_shape, with_bias_fn = CASES[case]
    rng = np.random.default_rng(3)
    q, k = normal(rng, (B, T, H, d), dtype), normal(rng, (B, S, K, d), dtype)
    v = normal(rng, (B, S, K, dv), dtype)
    bias, dout = normal(rng, bias_shape), normal(rng, (B, T, H, dv))
    slopes = jnp.asarray(rng.uniform(0.1, 1.0, H), jnp.float32)
    mask = None
    if mask_shape is not None:
        mask = rng.random(mask_shape) > 0.3
        mask[1, 2] = False  # head 1 may not attend anything from query 2
        mask = jnp.asarray(mask)

    @jax.jit
    def loss(q, k, v, bias, slopes):
        out = attention.multi_head_attention(
            q, k, v, mask=mask, bias=bias, bias_fn=_slopes_bias_fn(slopes) if with_bias_fn else None,
            causal=causal, implementation=implementation, block_size=block)
        return jnp.sum(out.astype(jnp.float32) * dout), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)(q, k, v, bias, slopes)
    chex.assert_shape(out, (B, T, H, dv))
    chex.assert_type(out, dtype)

    # The reference sees the same (dtype-rounded) inputs, in float64, with causal and bias_fn spelled out.
    q_pos, k_pos = S - T + np.arange(T), np.arange(S)
    full_mask = np.ones((1, 1, T, S), bool) if mask is None else np.asarray(mask)
    if causal:
        full_mask = full_mask & (k_pos[None, :] <= q_pos[:, None])
    distance = np.abs(q_pos[:, None] - k_pos[None, :]).astype(np.float64)
    full_bias = f64(bias) - (f64(slopes)[:, None, None] * distance if with_bias_fn else 0.0)
    args = (f64(q), f64(k), f64(v))
    ref_out, _ = reference.multi_head_attention(*args, full_mask, full_bias)
    dq, dk, dv_, dbias_full = reference.multi_head_attention_vjp(*args, f64(dout), full_mask, full_bias)
    bias_shape4 = (1,) * (4 - len(bias_shape)) + bias_shape  # the bias broadcast over these size-1 dims
    dbias = dbias_full.sum(axis=tuple(a for a, n in enumerate(bias_shape4) if n == 1), keepdims=True)
    dslopes = -(dbias_full * distance).sum(axis=(0, 2, 3))
    expected = {"out": ref_out, "dq": dq, "dk": dk, "dv": dv_, "dbias": dbias.reshape(bias_shape),
                "dslopes": dslopes}
    actual = dict(zip(["out", "dq", "dk", "dv", "dbias", "dslopes"], [out, *grads], strict=True))
    if not with_bias_fn:
        del expected["dslopes"], actual["dslopes"]
    errors = {name: rel_err(actual[name], expected[name]) for name in expected}
    assert max(errors.values()) <= TOLERANCE[dtype], errors
    assert all(np.all(np.isfinite(f64(x))) for x in actual.values())
    if mask is not None:  # the fully masked query: exactly zero output, zero gradient
        assert np.all(f64(out)[1, 2, 1] == 0.0)
        assert np.all(f64(grads[0])[1, 2, 1] == 0.0)


def _float_intermediate_shapes(jaxpr):
    """Shapes of every float value a jaxpr computes, sub-jaxprs (pjit, custom_vjp, scan bodies) included."""
    for eqn in jaxpr.eqns:
        yield from (tuple(v.aval.shape) for v in eqn.outvars if jnp.issubdtype(v.aval.dtype, jnp.floating))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _float_intermediate_shapes(inner)


@pytest.mark.parametrize("B, H, K", [(2, 3, 3), (2, 4, 2), (2, 4, 1), (1, 3, 3)], ids=["mha", "gqa", "mqa", "b1"])
def test_reference_maps_no_size_one_axis_with_the_cpu_vmap(B, H, K):
    """With the head mapping a CPU model is built with (`platform.unit_axis_vmap`, injected as `vmap=`), forward and
    backward hold the [T, S] logits of all heads as [B, K, G, T, S] without its size-1 axes: XLA:CPU ran the
    softmax-backward reduction over a [B, K, 1, T, S] array ~6x slower than over [B, K, T, S] (benchmarks/NOTES.md).
    The plain `jax.vmap` (the maths' default) keeps them; both give the same outputs and gradients."""
    from jaxformer import platform

    T, G = 5, H // K
    rng = np.random.default_rng(4)
    q, k, v = normal(rng, (B, T, H, 4)), normal(rng, (B, T, K, 4)), normal(rng, (B, T, K, 4))
    results = {}
    for name, vmap in (("cpu", platform.unit_axis_vmap), ("plain", jax.vmap)):
        loss = lambda q, k, v, vmap=vmap: attention.multi_head_attention(
            q, k, v, causal=True, implementation="reference", vmap=vmap).sum()
        grad = jax.grad(loss, argnums=(0, 1, 2))
        shapes = set(_float_intermediate_shapes(jax.make_jaxpr(grad)(q, k, v).jaxpr))
        results[name] = ({s for s in shapes if s[-2:] == (T, T)}, grad(q, k, v))
    logits = results["cpu"][0]
    assert tuple(n for n in (B, K, G) if n > 1) + (T, T) in logits, logits
    assert not any(1 in s[:-2] for s in logits), logits
    assert (B, K, G, T, T) in results["plain"][0], results["plain"][0]
    for cpu, plain in zip(results["cpu"][1], results["plain"][1], strict=True):
        np.testing.assert_allclose(np.asarray(cpu), np.asarray(plain), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- properties

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_causal_no_leak(implementation):
    """Keys/values after position i change neither output i nor its gradient (nanodo's causality probe)."""
    rng = np.random.default_rng(4)
    B, T, H, d, i = 1, 8, 2, 4, 3
    q, k, v = normal(rng, (B, T, H, d)), normal(rng, (B, T, H, d)), normal(rng, (B, T, H, d))
    attend = jax.jit(lambda q, k, v: attention.multi_head_attention(
        q, k, v, causal=True, implementation=implementation, block_size=3))
    loss_i = lambda q, k, v: jnp.sum(attend(q, k, v)[:, i] ** 2)
    probe = jax.jit(jax.value_and_grad(loss_i, argnums=(0, 1, 2)))
    later = jnp.arange(T)[None, :, None, None] > i
    k2, v2 = jnp.where(later, 100.0 * k + 1.0, k), jnp.where(later, -50.0 * v, v)
    (value, grads), (value2, grads2) = probe(q, k, v), probe(q, k2, v2)
    assert value == value2
    np.testing.assert_array_equal(attend(q, k, v)[:, : i + 1], attend(q, k2, v2)[:, : i + 1])
    for grad, grad2 in zip(grads, grads2, strict=True):
        np.testing.assert_array_equal(grad, grad2)
    for grad in grads[1:]:  # the gradient at position i w.r.t. later keys/values is exactly zero
        assert np.all(np.asarray(grad)[:, i + 1:] == 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_permutation_equivariance(implementation):
    """Without mask or positions, attention permutes with the queries and ignores the order of the keys."""
    rng = np.random.default_rng(5)
    q, k, v = normal(rng, (2, 6, 2, 4)), normal(rng, (2, 9, 2, 4)), normal(rng, (2, 9, 2, 3))
    attend = jax.jit(lambda q, k, v: attention.multi_head_attention(q, k, v, implementation=implementation,
                                                                    block_size=4))
    perm_t, perm_s = rng.permutation(6), rng.permutation(9)
    out = attend(q, k, v)
    np.testing.assert_allclose(attend(q[:, perm_t], k, v), out[:, perm_t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attend(q, k[:, perm_s], v[:, perm_s]), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_kv_cache_positions_mask_unfilled_slots(implementation):
    """Queries n-T..n-1 against a cache of capacity S (garbage after slot n) = attention over n keys."""
    rng = np.random.default_rng(6)
    B, T, S, n, H, d = 2, 2, 8, 5, 2, 4
    q, k, v = normal(rng, (B, T, H, d)), normal(rng, (B, S, H, d)), normal(rng, (B, S, H, d))
    k_garbage, v_garbage = k.at[:, n:].set(1e4), v.at[:, n:].set(-1e4)

    @jax.jit
    def cached_and_filled(q, k, v, k_garbage, v_garbage):
        cached = attention.multi_head_attention(
            q, k_garbage, v_garbage, causal=True, q_positions=n - T + jnp.arange(T),
            k_positions=jnp.arange(S), implementation=implementation, block_size=3)
        return cached, attention.multi_head_attention(q, k[:, :n], v[:, :n], causal=True,
                                                      implementation=implementation)

    np.testing.assert_allclose(*cached_and_filled(q, k, v, k_garbage, v_garbage), rtol=1e-5, atol=1e-6)


def test_chunked_memory_is_linear_in_sequence_length():
    """Compiled temporary memory of forward+backward: chunked O(T·block), reference the [H, T, S] weights."""
    B, T, H, d, block = 1, 1024, 2, 16, 64
    x = jnp.zeros((B, T, H, d))

    def temp_bytes(implementation):
        f = lambda q, k, v: attention.multi_head_attention(
            q, k, v, causal=True, implementation=implementation, block_size=block).sum()
        compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(x, x, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    weights_bytes = B * H * T * T * 4
    assert temp_bytes("reference") >= weights_bytes
    assert temp_bytes("chunked") <= 8 * B * H * T * block * 4 < weights_bytes


class JitAndNoJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_and_dtypes(self):
        rng = np.random.default_rng(7)
        q, k, v = normal(rng, (2, 5, 4, 8), jnp.bfloat16), normal(rng, (2, 6, 2, 8), jnp.bfloat16), normal(
            rng, (2, 6, 2, 3), jnp.bfloat16)
        for implementation in IMPLEMENTATIONS:
            out = self.variant(lambda q, k, v, impl=implementation: attention.multi_head_attention(
                q, k, v, causal=True, implementation=impl, block_size=4))(q, k, v)
            chex.assert_shape(out, (2, 5, 4, 3))
            chex.assert_type(out, jnp.bfloat16)
            chex.assert_tree_all_finite(out)
        with_weights = lambda q, k, v: attention.multi_head_attention(q, k, v, return_weights=True)
        out, weights = self.variant(with_weights)(q, k, v)
        chex.assert_shape(weights, (2, 4, 5, 6))
        chex.assert_type(weights, jnp.float32)



def test_chunked_under_vmap_and_grad():
    """vmap over an extra leading axis (through the custom VJP too) = that axis folded into the batch."""
    rng = np.random.default_rng(8)
    q, k, v = normal(rng, (3, 1, 4, 2, 4)), normal(rng, (3, 1, 7, 2, 4)), normal(rng, (3, 1, 7, 2, 4))
    attend = lambda q, k, v: attention.multi_head_attention(q, k, v, causal=True, implementation="chunked",
                                                            block_size=3)
    loss = lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v)))
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2))))(q, k, v)
    value, folded_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q[:, 0], k[:, 0], v[:, 0])
    np.testing.assert_allclose(values.sum(), value, rtol=1e-6)
    for grad, folded_grad in zip(grads, folded_grads, strict=True):
        np.testing.assert_allclose(grad[:, 0], folded_grad, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- masks

def test_mask_builders():
    np.testing.assert_array_equal(attention.causal_mask(3), np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(attention.causal_mask(2, 4, offset=2), [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(attention.sliding_window_mask(4, window=2),
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(attention.sliding_window_mask(1, 4, window=2, offset=3), [[0, 0, 1, 1]])
    padding = attention.padding_mask(jnp.array([1, 3]), 4)
    chex.assert_shape(padding, (2, 1, 1, 4))
    np.testing.assert_array_equal(padding[:, 0, 0], [[1, 0, 0, 0], [1, 1, 1, 0]])
    chex.assert_shape(attention.padding_mask(jnp.array([1, 3]), 4, T=5), (2, 1, 5, 4))
    combined = attention.causal_mask(4) & attention.padding_mask(jnp.array([2, 4]), 4)
    chex.assert_shape(combined, (2, 1, 4, 4))
    np.testing.assert_array_equal(combined[0, 0, 3], [1, 1, 0, 0])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_combined_mask_equals_its_arguments(implementation):
    """causal=True and an explicit causal_mask & padding_mask give the same attention."""
    rng = np.random.default_rng(9)
    q, k, v = normal(rng, (2, 5, 2, 4)), normal(rng, (2, 5, 2, 4)), normal(rng, (2, 5, 2, 4))
    padding = attention.padding_mask(jnp.array([3, 5]), 5)

    @jax.jit
    def explicit_and_flagged(q, k, v):
        explicit = attention.multi_head_attention(q, k, v, mask=attention.causal_mask(5) & padding,
                                                  implementation=implementation, block_size=2)
        return explicit, attention.multi_head_attention(q, k, v, mask=padding, causal=True,
                                                        implementation=implementation, block_size=2)

    np.testing.assert_allclose(*explicit_and_flagged(q, k, v), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------- errors

def test_errors_say_what_to_do():
    x = jnp.zeros((1, 2, 4, 8))
    with pytest.raises(ValueError, match="choose one of: reference, chunked, fused"):
        attention.multi_head_attention(x, x, x, implementation="flash")
    for implementation in ("chunked", "fused"):
        with pytest.raises(ValueError, match=f"implementation='{implementation}' cannot return"):
            attention.multi_head_attention(x, x, x, implementation=implementation, return_weights=True)
    with pytest.raises(ValueError, match="K dividing H"):
        attention.multi_head_attention(x, jnp.zeros((1, 2, 3, 8)), jnp.zeros((1, 2, 3, 8)))
    with pytest.raises(ValueError, match="mask has shape"):
        attention.multi_head_attention(x, x, x, mask=jnp.ones((3, 2, 2), bool))


# ---------------------------------------------------------------------------------------------- projections

@pytest.mark.parametrize("use_bias", [False, True])
def test_projections_and_self_attention(use_bias):
    D, H, K, d, B, T = 16, 4, 2, 4, 2, 5
    params = attention.init_attention_params(jax.random.key(0), n_embd=D, n_head=H, n_kv_head=K,
                                             use_bias=use_bias, out_std=0.01)
    chex.assert_shape(params["qkv"]["kernel"], (D, (H + 2 * K) * d))
    chex.assert_shape(params["out"]["kernel"], (H * d, D))
    assert ("bias" in params["qkv"]) == ("bias" in params["out"]) == use_bias
    np.testing.assert_allclose(np.std(params["out"]["kernel"]), 0.01, rtol=0.3)
    if use_bias:
        params = jax.tree.map(lambda p: p + 0.1, params)
    x = normal(np.random.default_rng(10), (B, T, D))
    q, k, v = attention.qkv_projection(params, x, n_head=H, n_kv_head=K)
    chex.assert_shape([q, k, v], [(B, T, H, d), (B, T, K, d), (B, T, K, d)])
    fused64 = np.asarray(x, np.float64) @ np.asarray(params["qkv"]["kernel"], np.float64)
    fused64 = fused64 + (np.asarray(params["qkv"]["bias"], np.float64) if use_bias else 0.0)
    # Columns [q heads | k heads | v heads], d each, every head checked against the float64 product.
    for h in range(H):
        np.testing.assert_allclose(q[:, :, h], fused64[..., h * d:(h + 1) * d], rtol=1e-5, atol=1e-6)
    for h in range(K):
        np.testing.assert_allclose(k[:, :, h], fused64[..., (H + h) * d:(H + h + 1) * d], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v[:, :, h], fused64[..., (H + K + h) * d:(H + K + h + 1) * d], rtol=1e-5,
                                   atol=1e-6)

    calls = []

    def rotate(q, k, q_pos, k_pos):
        calls.append((q_pos, k_pos))
        return 2.0 * q, k

    # Composed as the model composes them (model.Attention: projection, rotation, attention, output).
    from flax import nnx

    from jaxformer import config as config_lib
    from jaxformer import model as model_lib

    model_cfg = config_lib.load("tiny").model
    model_cfg.update(n_embd=D, n_head=H, n_kv_head=K, bias=use_bias)
    graphdef, _ = nnx.split(model_lib.Attention(model_cfg, rngs=nnx.Rngs(params=0)))
    layer = nnx.merge(graphdef, {"params": params})
    positions = jnp.arange(T) + 3
    y, _, weights = layer(x, positions_T=positions, rotate=rotate, bias_fn=None, return_weights=True)
    np.testing.assert_array_equal(calls[0][0], positions)
    out = attention.multi_head_attention(2.0 * q, k, v, causal=True, q_positions=positions,
                                         k_positions=positions)
    np.testing.assert_allclose(y, attention.output_projection(params, out), rtol=1e-5, atol=1e-7)
    chex.assert_shape([y, weights], [(B, T, D), (B, H, T, T)])
    assert np.all(np.asarray(weights)[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0.0)
