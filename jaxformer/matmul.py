"""Matrix products `op(a) · op(b)` (op = identity or transpose, any matching leading batch dimensions) on a CPU
through OpenBLAS, as a JAX primitive; the machine-tuning edge of the model's products.

The maths (`attention.py`) and the modules (`model.py`) never import this file: their products take a
`dot_general` with `lax.dot_general`'s signature, `lax.dot_general` by default. `default_dot_general()` is what
model construction injects (`loader.build_model`): `dot_general` below when the CPU path is "blas" and the kernel
loads, else XLA's dot (`rows_dot_general` on a CPU). The path is what `jaxformer.platform.configure()` set
(`set_cpu_backend`): "xla" or "blas" when JAXFORMER_CPU_MATMUL names one, else "auto": chosen by measurement on
first use (`resolve_cpu_backend`): the model's own products (forward and backward of one training step, traced,
not run) are timed through XLA's dot and through the kernel in alternated rounds for ~0.5 s, and the faster path
is used, XLA's unless the kernel is faster by more than 3%; the choice is cached beside the compiled kernel per CPU
model, core count, library versions, XLA_FLAGS, OPENBLAS_CORETYPE and product shapes (`kernels/choose.py`), so a
machine measures once and a CPU nobody has seen gets its faster path with no code change. The choice is made once
per process, outside any traced function, so a failure to build the kernel is one warning and never an error
inside `jit`; `cpu_backend_choice()` says which path runs and why (run manifests record it).

`gemm_p` is a proper primitive, so every JAX transformation goes through it: abstract evaluation; a lowering to
the custom call of `kernels/cpu_gemm.cc` (OpenBLAS sgemm on blocks spread over XLA's thread pool) on a CPU and to
`dot_general` on any other platform; bilinear JVP and transpose rules (forward and reverse mode to any order: jvp,
linearize, jacfwd, hessian, grad of grad), whose products are products of the same kind with the transposes
chosen, never materialised; a batching rule (vmap adds a leading batch axis, which the kernel takes as is).
It has no sharding rule: several CPU devices keep XLA's dot (`platform.cpu_matmul_backend`).
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

log = logging.getLogger(__name__)

_TARGET = "jaxformer_gemm_f32"  # kernels/cpu_gemm.TARGET, without importing the kernel's build machinery here

CPU_BACKENDS = ("xla", "blas")
CPU_MODES = CPU_BACKENDS + ("auto",)
_cpu_backend = "xla"  # what set_cpu_backend was given
_why = "jaxformer.matmul's default (platform.configure() not called)"
_measured = None  # the "auto" choice of this process (a kernels.choose.Choice), once made


def set_cpu_backend(name: str, why: str | None = None) -> None:
    """"blas" (float32 products through the CPU kernel where it loads), "xla", or "auto" (the faster of the two,
    measured on first use: `resolve_cpu_backend`); `why` is recorded with it. Takes effect for later traces."""
    global _cpu_backend, _why
    if name not in CPU_MODES:
        raise ValueError(f"CPU matmul backend {name!r}: expected one of {CPU_MODES}")
    _cpu_backend, _why = name, why or f"set_cpu_backend({name!r})"


def cpu_backend() -> str:
    """The backend chosen for CPU products (what `set_cpu_backend` was given: "xla", "blas" or "auto")."""
    return _cpu_backend


def cpu_backend_in_use() -> str | None:
    """What CPU products actually run on: "blas" only when chosen (or measured faster) and the kernel loaded, else
    "xla"; None when JAX's default device is not a CPU. For run records and benchmarks."""
    if jax.devices()[0].platform != "cpu":
        return None
    return "blas" if _kernel_target() is not None else "xla"


def cpu_backend_choice() -> dict | None:
    """Which path the CPU products run on and why, for run manifests: {"path", "why"} and, when it was measured,
    the medians, rounds and cache file (`kernels.choose.Choice.record`); None off a CPU."""
    path = cpu_backend_in_use()
    if path is None:
        return None
    if _cpu_backend == "auto" and _measured is not None:
        return {**_measured.record(), "path": path}
    why = _why
    if _cpu_backend == "blas" and path == "xla":
        from jaxformer.kernels import cpu_gemm

        why += f"; the kernel cannot load ({cpu_gemm.reason()}), so XLA's dot"
    return {"path": path, "why": why}


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
    path = resolve_cpu_backend() if _cpu_backend == "auto" else _cpu_backend
    if path != "blas":
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


def default_dot_general(*, trace_step=None):
    """The `dot_general` to build a model with: `dot_general` above when the CPU path is "blas" (set, or measured
    faster: `resolve_cpu_backend(trace_step=)`, the model's own products) and the kernel loads;
    `rows_dot_general` on a CPU otherwise; `lax.dot_general` on a GPU or TPU. Loading (and measuring) is done here,
    outside any trace: where the kernel fails to load, one warning says why and that XLA's dot is used instead."""
    if _cpu_backend == "auto":
        resolve_cpu_backend(trace_step=trace_step)
    if _kernel_target() is not None:
        return dot_general
    return rows_dot_general if jax.devices()[0].platform == "cpu" else lax.dot_general


# ------------------------------------------------------------------------- the CPU path chosen by measurement

# The products of nanoGPT's baby step (configs/shakespeare_char_cpu.py: 4 layers x 4 heads x 128, batch 12 x 64),
# forward and backward as `step_products` finds them: timed when the model's own step is not known (a model
# built without a training shape, `loader.abstract_model`). (a shape, b shape, trans_a, trans_b) -> count.
REFERENCE_PRODUCTS = {
    ((768, 128), (128, 384), False, False): 4, ((768, 128), (128, 128), False, False): 4,
    ((768, 128), (128, 512), False, False): 4, ((768, 512), (512, 128), False, False): 4,
    ((768, 512), (768, 128), True, False): 4, ((768, 128), (512, 128), False, True): 4,
    ((768, 128), (768, 512), True, False): 4, ((768, 512), (128, 512), False, True): 4,
    ((768, 128), (768, 128), True, False): 4, ((768, 128), (128, 128), False, True): 4,
    ((768, 128), (768, 384), True, False): 4, ((768, 384), (128, 384), False, True): 4,
    ((12, 4, 64, 32), (12, 4, 64, 32), False, True): 8, ((12, 4, 64, 64), (12, 4, 64, 32), False, False): 8,
    ((12, 4, 64, 64), (12, 4, 64, 32), True, False): 8}
TIMED_FLOPS_MAX = 4e8  # a larger product is timed on a slice of its largest axis and its time scaled up
CHOICE_BUDGET_S = 0.5  # wall time of the alternated rounds (compilation not counted): 5+ rounds on a shared 2-core VM


def step_products(jaxpr) -> dict[tuple, int]:
    """Every `gemm_p` product in a (closed) jaxpr and the jaxprs inside it (jit, scan, remat, custom rules):
    (a shape, b shape, trans_a, trans_b) -> how many times it occurs."""
    found: dict[tuple, int] = {}

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive is gemm_p:
                a, b = (v.aval for v in eqn.invars)
                k = (tuple(a.shape), tuple(b.shape), eqn.params["trans_a"], eqn.params["trans_b"])
                found[k] = found.get(k, 0) + 1
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else (p,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(getattr(jaxpr, "jaxpr", jaxpr))
    return found


def _timed_shape(a_shape, b_shape, ta, tb):
    """The product's shapes with the largest of (batch, M, K, N) halved until it has at most TIMED_FLOPS_MAX
    FLOPs, and the factor its time is scaled by."""
    batch = int(np.prod(a_shape[:-2], dtype=np.int64))
    M, K = (a_shape[-1], a_shape[-2]) if ta else (a_shape[-2], a_shape[-1])
    N = b_shape[-2] if tb else b_shape[-1]
    dims = [batch, M, K, N]
    full = 2.0 * np.prod(dims, dtype=np.float64)
    while 2.0 * np.prod(dims, dtype=np.float64) > TIMED_FLOPS_MAX and max(dims) > 1:
        i = int(np.argmax(dims))
        dims[i] = (dims[i] + 1) // 2
    batch, M, K, N = dims
    lead = (batch,) if a_shape[:-2] else ()
    a = lead + ((K, M) if ta else (M, K))
    b = lead + ((N, K) if tb else (K, N))
    return a, b, full / (2.0 * np.prod(dims, dtype=np.float64))


def product_timer(products: dict[tuple, int]):
    """`time_round(path)` for `kernels.choose`: one round runs each distinct product once on `path` ("xla" or
    "blas"), to block_until_ready, and returns each one's seconds scaled to the step's count of it. Inputs are
    random float32, built and compiled here (not timed)."""
    rng = np.random.default_rng(0)
    prepared = []
    with jax.ensure_compile_time_eval():  # run, not staged, even when the model is built inside a trace
        for (sa, sb, ta, tb), count in sorted(products.items()):
            sa, sb, scale = _timed_shape(sa, sb, ta, tb)
            a, b = (jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in (sa, sb))
            fns = {"xla": jax.jit(functools.partial(_xla, ta=ta, tb=tb)), "blas": _gemm_jitted(ta, tb)}
            for f in fns.values():
                f(a, b).block_until_ready()  # compiled and first run outside the timing
            prepared.append((a, b, fns, scale * count))

    def time_round(path: str) -> list[float]:
        parts = []
        with jax.ensure_compile_time_eval():
            for a, b, fns, weight in prepared:
                f = fns[path]
                t0 = time.perf_counter()
                f(a, b).block_until_ready()
                parts.append((time.perf_counter() - t0) * weight)
        return parts

    return time_round


def _choice_key(products_key: str) -> dict:
    """What makes the two paths' times differ between machines and installs (`kernels.choose` caches by it)."""
    import importlib.metadata
    import os

    import jaxlib

    from jaxformer.kernels import choose, cpu_gemm

    return {"cpu": choose.cpu_model(), "cores": choose.usable_cores(), "jaxlib": jaxlib.__version__,
            "scipy_openblas32": importlib.metadata.version("scipy-openblas32"), "kernel": cpu_gemm.build().name,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
            "products": products_key}


def _products_key(products: dict[tuple, int]) -> str:
    return ";".join(f"{sa}x{sb}{'T' if ta else 'N'}{'T' if tb else 'N'}*{n}" for (sa, sb, ta, tb), n in
                    sorted(products.items()))


def _measure_choice(trace_step):
    from jaxformer.kernels import choose, cpu_gemm

    if jax.devices()[0].platform != "cpu":
        return choose.Choice("xla", "not a CPU: XLA's dot", {}, 0, "platform")
    if cpu_gemm.load() is None:
        return choose.Choice("xla", f"the BLAS kernel cannot load ({cpu_gemm.reason()}): XLA's dot", {}, 0, "fallback")
    products = REFERENCE_PRODUCTS
    if trace_step is not None:
        global _cpu_backend
        saved, _cpu_backend = _cpu_backend, "blas"  # traced (~0.3 s, nothing run) with the kernel's primitive
        try:
            products = step_products(trace_step(dot_general)) or REFERENCE_PRODUCTS
        finally:
            _cpu_backend = saved
    return choose.choose(CPU_BACKENDS, lambda: product_timer(products), key=_choice_key(_products_key(products)),
                         cache_dir=cpu_gemm.cache_dir() / "kernels", name="cpu-matmul", budget_s=CHOICE_BUDGET_S)


def resolve_cpu_backend(*, trace_step=None) -> str:
    """The path ("xla" or "blas") CPU products take. Set ("xla", "blas"): that one. "auto": measured once per
    process (`kernels.choose`: cached per machine and shapes, else ~0.5 s of alternated rounds), on the products
    of `trace_step(dot_general)` -- a jaxpr of one training step built with the given `dot_general` (traced, not
    run; the products' shapes and counts are part of the cache key) -- or, without one, on `REFERENCE_PRODUCTS`.
    A measurement that fails is one warning, and XLA's dot."""
    global _measured
    if _cpu_backend != "auto":
        return _cpu_backend
    if _measured is None:
        from jaxformer.kernels import choose

        try:
            _measured = _measure_choice(trace_step)
        except Exception as e:  # noqa: BLE001 -- any failure means: XLA's dot, and say why once
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            log.warning("CPU matmul 'auto': measuring the paths failed, using XLA's dot: %s", why)
            _measured = choose.Choice("xla", f"measuring failed ({why}): XLA's dot", {}, 0, "fallback")
        # debug, not info: every command would print it (the manifest and benchmarks/train_step.py record it)
        log.debug("CPU matmul: %s (%s)", _measured.name, _measured.why)
    return _measured.name
