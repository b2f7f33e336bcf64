"""Matrix products `op(a) · op(b)` (op = identity or transpose, any matching leading batch dimensions) for the
dense layers and the attention core, with one kernel choice made per machine.

Everywhere the product is `lax.dot_general`. On a CPU where `jaxformer.platform.configure()` selected the BLAS
backend (`set_cpu_backend("blas")`, measured faster on the 2-core machines of benchmarks/NOTES.md), a float32
product is the custom call of `kernels/cpu_gemm.cc` (OpenBLAS sgemm on blocks spread over XLA's thread pool)
behind `lax.platform_dependent`, so the same traced function still compiles to `dot_general` on a GPU or TPU. Its
derivative is written out (`custom_vjp`): the input and weight gradients are products of the same kind with
transposes chosen, never materialised.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


def _blas(a, b, ta: bool, tb: bool, target: str):
    M = a.shape[-1] if ta else a.shape[-2]
    N = b.shape[-2] if tb else b.shape[-1]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(a.shape[:-2] + (M, N), jnp.float32),
                            vmap_method="broadcast_all")
    return call(a, b, trans_a=ta, trans_b=tb)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mm(a, b, ta: bool, tb: bool, target: str):
    return lax.platform_dependent(a, b, cpu=lambda a, b: _blas(a, b, ta, tb, target),
                                  default=lambda a, b: _xla(a, b, ta, tb))


def _mm_fwd(a, b, ta, tb, target):
    return _mm(a, b, ta, tb, target), (a, b)


def _mm_bwd(ta, tb, target, residuals, g):
    # C = op(A) op(B): d op(A) = G op(B)^T and d op(B) = op(A)^T G, each transposed back where op transposed.
    a, b = residuals
    da = _mm(b, g, tb, True, target) if ta else _mm(g, b, False, not tb, target)
    db = _mm(g, a, True, ta, target) if tb else _mm(a, g, not ta, False, target)
    return da, db


_mm.defvjp(_mm_fwd, _mm_bwd)


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
    target = _kernel_target() if fits else None
    if target is None:
        return _xla(a, b, transpose_a, transpose_b, preferred_element_type)
    return _mm(a, b, transpose_a, transpose_b, target)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """`lax.dot_general`, through `matmul` for the dense-layer case (last axis of `lhs` with the first of a
    matrix `rhs`); for `flax.nnx.Linear(dot_general=...)`."""
    (lc, rc), (lb, rb) = dimension_numbers
    dense = (not lb and not rb and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and rhs.ndim == 2
             and precision is None and out_sharding is None)
    if dense:
        return matmul(lhs, rhs, preferred_element_type=preferred_element_type)
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kw)
