"""Every JAX transformation a researcher applies goes through the maths and the whole GPT loss, with the CPU BLAS
matmul (`matmul.gemm_p`) on and off: jvp (checked against <grad, tangent>), linearize, jacfwd, hessian,
forward-over-reverse HVPs (checked against reverse-over-reverse, i.e. grad of grad), vmap over a batch of
parameter sets and jax.checkpoint.

Attention implementations: `reference` and `fused` take all of them. `chunked` takes the reverse-mode ones (grad,
grad of grad, vmap, checkpoint) but no forward mode (jvp, linearize, jacfwd, hessian, HVPs): its O(T·block)-memory
backward is a `jax.custom_vjp`, and JAX cannot differentiate a custom_vjp function in forward mode; the test below
holds it to that error so a change in either direction is seen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import attention, matmul, positional
from jaxformer import config as config_lib
from jaxformer.kernels import cpu_gemm
from jaxformer.model import GPT


@pytest.fixture(params=["xla", "blas"])
def dot_general(request):
    """The products the model is built with: XLA's dot, or the BLAS primitive (which must load here)."""
    if request.param == "xla":
        yield jax.lax.dot_general
        return
    before = matmul.cpu_backend()
    matmul.set_cpu_backend("blas")
    assert cpu_gemm.load() == cpu_gemm.TARGET, cpu_gemm.reason()
    chosen = matmul.default_dot_general()
    assert chosen is matmul.dot_general
    yield chosen
    matmul.set_cpu_backend(before)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _uses_kernel(fn, *args):
    return cpu_gemm.TARGET in jax.jit(fn).lower(*args).as_text()


def _vdot(a, b):
    return sum(float(jnp.vdot(x.astype(jnp.float64) if x.dtype == jnp.float64 else x, y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _check_all(f, x, *, expect_kernel, tol=2e-3):
    """f: a pytree -> scalar. jvp, linearize, jacfwd, forward-over-reverse HVP, grad of grad, checkpoint, vmap
    (each jitted, as a researcher would run them)."""
    t = jax.tree.map(lambda a: _normal(a.size, a.shape), x)
    grad = jax.jit(jax.grad(f))
    g = grad(x)
    y, dy = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, t)
    np.testing.assert_allclose(float(y), float(jax.jit(f)(x)), rtol=1e-6)
    np.testing.assert_allclose(float(dy), _vdot(g, t), rtol=tol, atol=tol * 1e-2)  # jvp = <grad, tangent>
    lin = jax.jit(lambda x, t: jax.linearize(f, x)[1](t))(x, t)
    np.testing.assert_allclose(float(lin), float(dy), rtol=1e-5, atol=1e-6)
    jac = jax.jit(jax.jacfwd(f))(x)
    for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 1e-2)
    # Forward-over-reverse HVP against reverse-over-reverse (the gradient of <grad f, t>): two routes, one H·t.
    hvp = jax.jit(lambda x, t: jax.jvp(jax.grad(f), (x,), (t,))[1])(x, t)
    hvp_rr = jax.jit(jax.grad(lambda x, t: _vdot_traced(jax.grad(f)(x), t)))(x, t)
    for a, b in zip(jax.tree.leaves(hvp), jax.tree.leaves(hvp_rr), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 1e-2)
    assert _sq(hvp) > 0  # a second derivative that is not identically zero
    # jax.checkpoint: the same gradient.
    g_ckpt = jax.jit(jax.grad(jax.checkpoint(f)))(x)
    for a, b in zip(jax.tree.leaves(g_ckpt), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # vmap over a batch of three parameter sets = each set on its own.
    xs = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, -a]), x)
    batched = jax.jit(jax.vmap(f))(xs)
    for i in range(3):
        np.testing.assert_allclose(float(batched[i]), float(jax.jit(f)(jax.tree.map(lambda a, i=i: a[i], xs))),
                                   rtol=1e-5, atol=1e-6)
    assert _uses_kernel(jax.grad(f), x) == expect_kernel
    assert _uses_kernel(lambda x: jax.jvp(jax.grad(f), (x,), (t,))[1], x) == expect_kernel


def _vdot_traced(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _sq(tree):
    return sum(jnp.sum(a * a) for a in jax.tree.leaves(tree))


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["reference", "fused"])
def test_every_transformation_through_multi_head_attention(dot_general, implementation):
    B, T, H, K, d = 2, 6, 4, 2, 8
    q, k, v = _normal(0, (B, T, H, d)), _normal(1, (B, T, K, d)), _normal(2, (B, T, K, d))
    w = _normal(3, (B, T, H, d))

    def f(qkv):
        out = attention.multi_head_attention(*qkv, causal=True, implementation=implementation,
                                             dot_general=dot_general)
        return jnp.sum(jnp.tanh(out) * w)

    _check_all(f, (q, k, v), expect_kernel=dot_general is not jax.lax.dot_general and implementation == "reference")


@pytest.mark.slow
def test_chunked_attention_takes_reverse_mode_and_vmap_but_not_forward_mode():
    q, k, v = _normal(0, (1, 8, 2, 4)), _normal(1, (1, 8, 2, 4)), _normal(2, (1, 8, 2, 4))
    f = lambda q: jnp.sum(attention.multi_head_attention(q, k, v, causal=True, implementation="chunked",
                                                         block_size=4) ** 2)
    ref = lambda q: jnp.sum(attention.multi_head_attention(q, k, v, causal=True) ** 2)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(q), jax.jit(jax.grad(ref))(q), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda q: _sq(jax.grad(f)(q))))(q),
                               jax.jit(jax.grad(lambda q: _sq(jax.grad(ref)(q))))(q), rtol=1e-3, atol=1e-4)
    qs = jnp.stack([q, 2 * q])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(qs), jax.jit(jax.vmap(ref))(qs), rtol=1e-5)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(f, (q,), (q,))


@pytest.mark.parametrize("name", ["rope", "xpos", "alibi", "t5", "kerple", "fire", "sinusoidal", "learned"])
def test_every_transformation_through_each_positional_encoding(name):
    """Each variant's hooks, with its parameters as the differentiated input (or q/k where it has none)."""
    pe = positional.get_positional_encoding(name)
    # Fields derived from the block size (learned.max_len, T5's max_distance, xPos's scale_base, FIRE's init_L) as a
    # run of block 8 resolves them.
    block8 = config_lib.resolve(config_lib.load("tiny", ["--config.data.block_size=8"]))
    cfg = block8.model.position[name].to_dict()
    n_embd, n_head, head_dim, T = 8, 2, 4, 6
    params = pe.init(jax.random.key(0), cfg, n_embd=n_embd, n_head=n_head, head_dim=head_dim)
    params = jax.tree.map(lambda a: a + 0.1 * _normal(a.size, a.shape), params)
    pos = jnp.arange(T, dtype=jnp.int32)
    q, k = _normal(1, (1, T, n_head, head_dim)), _normal(2, (1, T, n_head, head_dim))

    w_HxTxT = _normal(3, (n_head, T, T))

    def f(x):  # the variant's hooks where attention uses them: embedding, rotated q·kᵀ, logit bias
        p, q_, k_ = x
        if pe.rotate is not None:
            q_, k_ = pe.rotate(p, q_, k_, pos, pos, cfg)
        logits_HxTxT = jnp.einsum("bthd,bshd->hts", q_, k_)
        if pe.bias is not None:
            logits_HxTxT = logits_HxTxT + pe.bias(p, pos, pos, cfg, n_head=n_head)
        total = jnp.sum(jnp.tanh(logits_HxTxT) * w_HxTxT)
        if pe.embed is not None:
            total += jnp.sum(jnp.sin(pe.embed(p, pos, cfg, n_embd=n_embd)))
        return total

    _check_all(f, (params, q, k), expect_kernel=False)


def _tiny_model(dot_general, implementation="reference"):
    cfg = config_lib.load("tiny")
    cfg.model.vocab_size = 11
    cfg.model.attention.implementation = implementation
    return GPT(cfg.model, rngs=nnx.Rngs(params=0), dot_general=dot_general), cfg


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["reference", "fused"])
def test_every_transformation_through_the_gpt_loss(dot_general, implementation):
    model, cfg = _tiny_model(dot_general, implementation)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 11, (2, 9)), jnp.int32)

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    _check_all(loss, params, expect_kernel=dot_general is not jax.lax.dot_general)


def test_hessian_of_a_small_model_loss_is_symmetric_and_matches_hvps(dot_general):
    model, cfg = _tiny_model(dot_general)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, (1, 5)), jnp.int32)
    # The Hessian w.r.t. the first LayerNorm's scale [D]: every product of the model lies downstream of it.
    w = params["blocks"][0]["ln1"]["scale"]

    def loss(w):
        p = jax.tree.map(lambda a: a, params)
        p["blocks"][0]["ln1"]["scale"] = w
        logits = nnx.merge(graphdef, p)(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

    assert _uses_kernel(jax.hessian(loss), w) == (dot_general is not jax.lax.dot_general)
    hess = jax.jit(jax.hessian(loss))(w).reshape(w.size, w.size)
    np.testing.assert_allclose(hess, hess.T, atol=1e-5)
    t = _normal(4, w.shape)
    hvp = jax.jit(lambda w, t: jax.jvp(jax.grad(loss), (w,), (t,))[1])(w, t)
    np.testing.assert_allclose(hess @ t.reshape(-1), hvp.reshape(-1), rtol=1e-3, atol=1e-5)
