"""Matrix products `op(a) · op(b)` (op = identity or transpose, any matching leading batch dimensions) on a CPU
through OpenBLAS, as a JAX primitive; the machine-tuning edge of the model's products.

The maths (`attention.py`) and the modules (`model.py`) never import this file: their products take a
`dot_general` with `lax.dot_general`'s signature, `lax.dot_general` by default. `default_dot_general()` is what
model construction injects (`loader.build_model`): `dot_general` below when `jaxformer.platform.configure()` chose
the BLAS backend (`set_cpu_backend("blas")`, the measured-faster setting of benchmarks/NOTES.md) and the kernel
loads, else `lax.dot_general` itself. The choice is made once, outside any traced function, so a failure to build
the kernel is one warning at construction and never an error inside `jit`.

`gemm_p` is a proper primitive, so every JAX transformation goes through it: abstract evaluation; a lowering to
the custom call of `kernels/cpu_gemm.cc` (OpenBLAS sgemm on blocks spread over XLA's thread pool) on a CPU and to
`dot_general` on any other platform; bilinear JVP and transpose rules (forward and reverse mode to any order: jvp,
linearize, jacfwd, hessian, grad of grad), whose products are products of the same kind with the transposes
chosen, never materialised; a batching rule (vmap adds a leading batch axis, which the kernel takes as is).
It has no sharding rule: several CPU devices keep XLA's dot (`platform.cpu_matmul_backend`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_TARGET = "jaxformer_gemm_f32"  # kernels/cpu_gemm.TARGET, without importing the kernel's build machinery here

CPU_BACKENDS = ("xla", "blas")
_cpu_backend = "xla"


def set_cpu_backend(name: str) -> None:
    """"blas" (float32 products through the CPU kernel where it loads) or "xla"; takes effect for later traces."""
    global _cpu_backend
    if name not in CPU_BACKENDS:
        raise ValueError(f"CPU matmul backend {name!r}: expected one of {CPU_BACKENDS}")
    _cpu_backend = name


def cpu_backend() -> str:
    """The backend chosen for CPU products (what `set_cpu_backend` was given)."""
    return _cpu_backend


def cpu_backend_in_use() -> str | None:
    """What CPU products actually run on: "blas" only when chosen and the kernel loaded, else "xla"; None when JAX's
    default device is not a CPU. For run records and benchmarks."""
    if jax.devices()[0].platform != "cpu":
        return None
    return "blas" if _kernel_target() is not None else "xla"


def blas_core() -> str | None:
    """OpenBLAS's core kernels ("Haswell", "SkylakeX", ...) when the CPU products run on the kernel, else None."""
    if cpu_backend_in_use() != "blas":
        return None
    from jaxformer.kernels import cpu_gemm

    return cpu_gemm.openblas_corename()


def _xla(a, b, ta: bool, tb: bool, preferred_element_type=None):
    n = a.ndim
    batch = tuple(range(n - 2))
    dims = (((n - 2 if ta else n - 1,), (n - 1 if tb else n - 2,)), (batch, batch))
    return lax.dot_general(a, b, dims, preferred_element_type=preferred_element_type)


def _kernel_target() -> str | None:
    if _cpu_backend != "blas":
        return None
    from jaxformer.kernels import cpu_gemm

    return cpu_gemm.load()


# ------------------------------------------------------------------------------------------- the gemm primitive

gemm_p = Primitive("jaxformer_gemm")  # C = op(A) · op(B), float32; params trans_a, trans_b (the kernel's attributes)


def _gemm(a, b, trans_a: bool, trans_b: bool):
    return gemm_p.bind(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b))


def _gemm_abstract_eval(a, b, *, trans_a, trans_b):
    M = a.shape[-1] if trans_a else a.shape[-2]
    N = b.shape[-2] if trans_b else b.shape[-1]
    return ShapedArray(a.shape[:-2] + (M, N), a.dtype)


@functools.cache
def _gemm_jitted(trans_a: bool, trans_b: bool):
    return jax.jit(functools.partial(_gemm, trans_a=trans_a, trans_b=trans_b))


def _gemm_lhs_transpose(g, a, b, *, trans_a, trans_b):
    # C = op(A) op(B): d op(A) = G op(B)^T, transposed back where op transposed A.
    return _gemm(b, g, trans_b, True) if trans_a else _gemm(g, b, False, not trans_b)


def _gemm_rhs_transpose(g, a, b, *, trans_a, trans_b):
    # d op(B) = op(A)^T G, transposed back where op transposed B.
    return _gemm(g, a, True, trans_a) if trans_b else _gemm(a, g, not trans_a, False)


def _gemm_batch(args, dims, *, trans_a, trans_b):
    """vmap: the mapped axis becomes the leading batch axis of both operands (the unmapped one broadcast)."""
    size = next(x.shape[d] for x, d in zip(args, dims, strict=True) if d is not None)
    a, b = (jnp.broadcast_to(x, (size,) + x.shape) if d is None else jnp.moveaxis(x, d, 0)
            for x, d in zip(args, dims, strict=True))
    return _gemm(a, b, trans_a, trans_b), 0


gemm_p.def_impl(lambda a, b, *, trans_a, trans_b: _gemm_jitted(trans_a, trans_b)(a, b))
gemm_p.def_abstract_eval(_gemm_abstract_eval)
ad.defbilinear(gemm_p, _gemm_lhs_transpose, _gemm_rhs_transpose)
batching.primitive_batchers[gemm_p] = _gemm_batch
mlir.register_lowering(gemm_p, mlir.lower_fun(lambda a, b, *, trans_a, trans_b: _xla(a, b, trans_a, trans_b),
                                               multiple_results=False))
# The custom call's target is registered by `cpu_gemm.load()`; the primitive is bound only after it succeeded.
mlir.register_lowering(gemm_p, jax.ffi.ffi_lowering(_TARGET), platform="cpu")


def matmul(a, b, *, transpose_a: bool = False, transpose_b: bool = False, preferred_element_type=None):
    """`op(a) @ op(b)` over the last two axes; leading axes are batch axes (broadcast), or `b` is one matrix.

    `preferred_element_type` as in `lax.dot_general` (e.g. float32 accumulation of bfloat16 inputs).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands of rank >= 2, got shapes {a.shape} and {b.shape}")
    if b.ndim == 2 and a.ndim > 2 and not transpose_a:  # rows times one matrix: a 2-D product, reshapes are free
        y = matmul(a.reshape(-1, a.shape[-1]), b, transpose_b=transpose_b,
                   preferred_element_type=preferred_element_type)
        return y.reshape(*a.shape[:-1], y.shape[-1])
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = jnp.broadcast_to(a, batch + a.shape[-2:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    ka, kb = a.shape[-2 if transpose_a else -1], b.shape[-1 if transpose_b else -2]
    if ka != kb:
        raise ValueError(f"matmul contracting sizes differ: {ka} (a {a.shape}, transpose_a={transpose_a}) vs "
                         f"{kb} (b {b.shape}, transpose_b={transpose_b})")
    f32 = np.dtype(np.float32)
    fits = a.dtype == f32 and b.dtype == f32 and preferred_element_type in (None, f32, jnp.float32)
    if not fits or _kernel_target() is None:
        return _xla(a, b, transpose_a, transpose_b, preferred_element_type)
    return _gemm(a, b, transpose_a, transpose_b)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """`lax.dot_general` with its matrix products on the BLAS kernel: rows times a matrix (a dense layer), and
    one matrix times another with either operand transposed (an attention head's q·kᵀ and weights·v; under
    `vmap` the primitive batches). Anything else, and any product the kernel does not take (not float32, an
    explicit precision or output sharding), is `lax.dot_general` itself. What `default_dot_general()` returns
    when the BLAS backend is in use; for `flax.nnx.Linear(dot_general=...)` and the maths' `dot_general=`."""
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc = tuple(lc), tuple(rc)
    plain = not lb and not rb and precision is None and out_sharding is None and rhs.ndim == 2 and len(lc) == 1
    if plain and lhs.ndim >= 2 and lc == (lhs.ndim - 1,) and rc in ((0,), (1,)):
        return matmul(lhs, rhs, transpose_b=rc == (1,), preferred_element_type=preferred_element_type)
    if plain and lhs.ndim == 2 and lc == (0,) and rc in ((0,), (1,)):
        return matmul(lhs, rhs, transpose_a=True, transpose_b=rc == (1,),
                      preferred_element_type=preferred_element_type)
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kw)


def rows_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """`lax.dot_general`, with rows times one matrix (a dense layer: `[..., D]·[D, F]` or `·[F, D]ᵀ`) taken on the
    rows flattened to `[N, D]`. Same function, same bits; on XLA:CPU the weight gradient then contracts one axis
    of a 2-D array instead of two, which XLA canonicalises with transposed copies of the `[B, T, F]` cotangents
    (36 more copies/transposes in the baby step; benchmarks/NOTES.md, 2026-12-06, issue 23). The reshapes are
    free. What `default_dot_general()` gives on a CPU with XLA's dot: the maths writes the plain product."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and not lb and not rb
            and out_sharding is None):
        y = lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), tuple(rc)), ((), ())),
                            precision=precision, preferred_element_type=preferred_element_type)
        return y.reshape(*lhs.shape[:-1], y.shape[-1])
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kw)


def default_dot_general():
    """The `dot_general` to build a model with: `dot_general` above when the CPU backend chosen is "blas" (by
    `platform.configure()` or `set_cpu_backend`) and the kernel loads; `rows_dot_general` on a CPU otherwise;
    `lax.dot_general` on a GPU or TPU. Loading is tried here, outside any trace: where it fails, one warning says
    why and that XLA's dot is used instead."""
    if _kernel_target() is not None:
        return dot_general
    return rows_dot_general if jax.devices()[0].platform == "cpu" else lax.dot_general
