"""Machine-specific runtime settings, in one place. Call `configure()` before JAX starts its backend.

Everything here is a property of the machine, not of the model: XLA flags, and how a CPU's cores are presented
to JAX. Model and training code never branch on the platform; entry points (the CLI, benchmarks/) call
`configure()` once, first thing. On a GPU or TPU it does nothing.

Settings and their measured effect (benchmarks/NOTES.md has the runs; nanoGPT's baby shakespeare-char step, 4x128,
batch 12 x 64, jax/jaxlib 0.10.2; "Zen 3" = 2-core AMD EPYC Milan VM (AVX2), the machine kind of the issue brief,
"Zen 4" = 2-core EPYC Genoa VM (family 25 model 17, AVX-512), "Zen 5" = 2-core EPYC with AVX-512, family 26):

  Allocator (`tune_malloc`, on by default on a CPU with glibc; JAXFORMER_MALLOC=default turns it off).
      glibc returns large freed blocks to the OS (mmap threshold, heap trimming), so every step XLA:CPU's
      buffers come back as fresh pages and each first touch is a page fault: 2.05 M minor faults and 7 s of
      system time in a 150-step benchmark. Keeping freed memory in the process (M_MMAP_THRESHOLD 1 GiB,
      M_TRIM_THRESHOLD 2 GiB) leaves 0.14 M faults and 0.9 s: Zen 3, median step 83.8 -> 53.0 ms (x0.63).
      Cost: the process keeps its peak heap instead of giving it back between steps (peak RSS of the
      benchmark 675-719 MB vs 547-565 MB). PyTorch's CPU step does not gain from the same setting (through
      MALLOC_*_ environment variables: 62.6/62.4 ms with, 58.1/61.1 ms without).
  CPU devices (`cpu_devices`, env JAXFORMER_CPU_DEVICES; opt-in, default 1 = JAX's default).
      "auto" presents each usable core as one JAX CPU device (`jax_num_cpu_devices`), so the Trainer's mesh
      (mesh.data = -1) splits every batch across the cores: data parallelism inside one process. Measured on
      Zen 5 before the allocator setting existed: x0.70-0.87 median step time, x0.72-0.76 CPU time per step
      (with one device XLA:CPU split each of ~400 small ops over both cores and joined after it; two device
      programs meet once a step, at the gradient all-reduce). With the allocator setting it is slower than
      one device on both kinds: Zen 3 56.5-71.7 vs 50.1-58.1 ms, Zen 5 32.3-44.1 vs 24.5-25.3 ms (2026-12-02):
      the all-reduce and its rendezvous now cost more than the split saves.
      Opt-in because it changes `jax.device_count()`: data.batch_size (and eval batches) must divide by the
      number of cores, and every jitted function sees a mesh of that many devices.
      It pays only for steps of tens of milliseconds: configs/tiny.py (0.7 ms steps) ran x2 slower with it.
  Matrix products (`cpu_matmul_backend`, env JAXFORMER_CPU_MATMUL = "auto" | "blas" | "xla"; default "auto" with
      one CPU device: the path measured faster on this machine, `matmul.resolve_cpu_backend`; issue 38).
      "blas" routes every float32 product of the model (`jaxformer.matmul`: dense layers, the attention core's
      two products per head) to the custom call of `jaxformer/kernels/cpu_gemm.cc`: OpenBLAS's single-threaded
      sgemm on row blocks or head matrices spread over XLA's own thread pool. XLA:CPU's kernels split each small
      product over both cores with a fork/join that costs more than it saves: 48 heads of 64x32x64 ran at
      21-29 GFLOP/s through XLA vs ~70 in PyTorch (Zen 3, 2026-12-03). Step times (benchmarks/NOTES.md): Zen 3
      x0.80-0.93 with the kernel (2026-12-03), Zen 4 27.3-30.1 vs 31.0-32.3 ms (2026-12-04), Intel family 6 model
      167 33.0-34.6 vs 35.3-39.9 ms (issue 38's table). Which one wins depends on the CPU, its core count and the
      library versions, so there is no table of kinds: "auto" times the model's own step products (forward and
      backward) through both at first use and keeps the faster (XLA's unless the kernel wins by > 3%), cached per
      CPU model, cores, versions and shapes beside the compiled kernel (`kernels/choose.py`); the run manifest's
      `cpu_matmul_choice` says which and why. The kernel is built on first use with the system C++ compiler
      (cached); without a compiler or the scipy-openblas32 wheel it warns once and uses XLA's dot. Several CPU
      devices keep "xla": the custom call has no sharding rule.
      OpenBLAS core kernels (`openblas_coretype`; OPENBLAS_CORETYPE if the user set it): on Zen 4 OpenBLAS picks
      its SkylakeX (AVX-512) kernels; with its Haswell (AVX2) ones the step ran 27.20-28.84 vs 28.27-31.15 ms,
      faster in 6 of 6 alternated rounds (x0.96 on the medians, p10 26.9-27.3 vs 27.8-28.2; 2026-12-04; Zen 4
      runs AVX-512 on 256-bit units). Cooperlake's and Zen's kernels were in between (two rounds each).
  Model ops (`model_ops`, injected by `loader.build_model`; CPU only): the tuned forms of what the maths writes
      plainly -- exact GELU through erf (`erf_gelu`; jax.nn.gelu's erfc form x1.15 slower on Zen 5) and the
      attention's head mapping without size-1 axes (`unit_axis_vmap`; the plain vmap x1.43 slower with
      multi-query attention). Products on flattened rows come with the matmul (`matmul.default_dot_general`).
  XLA flags: none by default -- no candidate measured better than XLA's defaults (Zen 5; on Zen 3 oneDNN dots
      and YNNPACK dot-only fusion were also within the noise once the allocator was set):
      --xla_cpu_use_xnnpack=false          x1.04 CPU, x1.20 median (Eigen matmuls instead of XNNPACK/YNNPACK)
      --xla_cpu_multi_thread_eigen=false   x1.00 (with 2 CPU devices x0.92 median, within the noise)
      --xla_cpu_enable_fast_math=true      x0.99-1.01
      --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY   x0.96 CPU, median in noise
      --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED           x1.37 median (worse)
      --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME                           x1.42 median (worse)
      --xla_cpu_prefer_vector_width=512    x0.99 CPU, x1.11 median
      --xla_cpu_use_thunk_runtime          deprecated (the thunk runtime is the only one)
    `CPU_XLA_FLAGS` below is where a flag that does help goes, with its measurement.
  Threads: XLA:CPU in jax 0.10 sizes its pools from the cores it may run on (taskset/cgroups); there is no
      intra-op thread-count knob to set. Pinned to one core: x1.16-1.30 median (both cores do help).

An XLA_FLAGS entry or JAX setting already given by the user always wins over what `configure()` would set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import math
import os

from jaxformer import matmul

log = logging.getLogger(__name__)

CPU_DEVICES_ENV = "JAXFORMER_CPU_DEVICES"
MALLOC_ENV = "JAXFORMER_MALLOC"
CPU_MATMUL_ENV = "JAXFORMER_CPU_MATMUL"
# glibc mallopt parameters (malloc.h) and the values configure() sets on a CPU (see the module docstring).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, 1 << 30),
                   "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, (1 << 31) - 1)}
_MALLOC_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
# Added to XLA_FLAGS on a CPU when not already there: none measured better than XLA's defaults (see above).
CPU_XLA_FLAGS: tuple[str, ...] = ()
_ACCELERATORS = ("cuda", "gpu", "rocm", "tpu", "metal")
_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def erf_gelu(x):
    """Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)) (Hendrycks & Gimpel, 2016): `jax.nn.gelu(x, approximate=False)`
    written with erf instead of erfc. XLA:CPU expands erfc into two polynomial branches, an exp and selects
    (forward and backward), erf into one polynomial: the baby step with jax.nn.gelu ran x1.15 slower in 9 of 12
    interleaved rounds (p10 x1.24) on Zen 5, and it was a fifth of the step before (benchmarks/NOTES.md). The two
    agree to ~1e-6 absolute (1 + erf cancels for x << 0, where erfc keeps relative accuracy), not bit for bit:
    runs written on a CPU before issue 23 used this form; `model_ops` injects it."""
    import jax

    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def unit_axis_vmap(f, in_axes=0, out_axes=0):
    """`jax.vmap(f, in_axes, out_axes)`, except over an axis of size 1: then f itself on the inputs with that axis
    dropped, and the axis put back on the outputs. Injected as the attention's head mapping on a CPU
    (`multi_head_attention(vmap=)`), so no array it computes has a size-1 batch, kv-head or group axis (G = 1
    without grouped-query attention, K = 1 with multi-query, B = 1): XLA:CPU ran the softmax-backward reduction
    over a [B, K, 1, T, S] array ~6x slower than over [B, K, T, S] (2026-12-02), and the baby step with
    n_kv_head=1 (multi-query) under the plain vmap x1.43 slower in 7 of 10 interleaved rounds (2026-12-06,
    benchmarks/NOTES.md). `in_axes` is a tuple with one entry per argument, as the attention passes it."""
    import jax
    import jax.numpy as jnp

    def mapped(*args):
        sizes = {x.shape[axis] for x, axis in zip(args, in_axes, strict=True) if axis is not None and x is not None}
        if sizes != {1}:
            return jax.vmap(f, in_axes, out_axes)(*args)
        args = [x if axis is None or x is None else jnp.squeeze(x, axis)
                for x, axis in zip(args, in_axes, strict=True)]
        return jax.tree.map(jnp.expand_dims, f(*args), out_axes)

    return mapped


def model_ops() -> dict:
    """The tuned forms a model is built with on this machine (`model.GPT(**model_ops())`, from
    `loader.build_model`): on a CPU, exact GELU through erf (`erf_gelu`) and the head mapping without size-1 axes
    (`unit_axis_vmap`); none elsewhere (`jax.nn.gelu` and `jax.vmap`, unmeasured there)."""
    import jax

    if jax.devices()[0].platform != "cpu":
        return {}
    return {"activations": {"gelu": erf_gelu}, "vmap": unit_axis_vmap}


def usable_cores() -> int:
    """Cores this process may run on (affinity/cgroup-restricted where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_platform(platform_hint: str | None = None) -> str:
    """"cpu" or the accelerator JAX will pick: the hint, else JAX_PLATFORMS, else an installed plugin."""
    name = platform_hint or os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    name = name.split(",")[0].strip().lower()
    if name:
        return "cpu" if name == "cpu" else name
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions() if d.metadata["Name"]}
    if any(n.startswith(prefix) for n in installed for prefix in _ACCELERATOR_DISTRIBUTIONS):
        return "accelerator"
    return "cpu"


def _cpu_device_count(cpu_devices) -> int | None:
    value = os.environ.get(CPU_DEVICES_ENV) if cpu_devices is None else cpu_devices
    if value is None or value == "":
        return None
    if str(value).lower() == "auto":
        return usable_cores()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"cpu_devices={value!r} ({CPU_DEVICES_ENV}); "
                         "give a positive integer or 'auto' (one device per core)")
    return n


def tune_malloc() -> dict[str, str]:
    """Keeps freed heap memory in the process (glibc): XLA:CPU's per-step buffers are then reused, not re-faulted.

    JAXFORMER_MALLOC: "tune" (or unset) sets it, "default" leaves glibc's settings (anything else: ValueError). It is
    also left alone when the user already tunes the allocator (MALLOC_*_ env, GLIBC_TUNABLES, LD_PRELOAD) or the C
    library is not glibc. Returns what it set.
    """
    mode = os.environ.get(MALLOC_ENV, "tune").lower() or "tune"
    if mode not in ("tune", "default"):
        raise ValueError(f"{MALLOC_ENV}={os.environ[MALLOC_ENV]!r}; give 'tune' (keep freed memory in the process, "
                         "the default) or 'default' (glibc's own settings)")
    if mode == "default" or any(k in os.environ for k in _MALLOC_USER_ENV):
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return {}
    applied = {}
    for name, (param, value) in MALLOC_SETTINGS.items():
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            applied[name] = str(value)
    return applied


def cpu_info() -> dict:
    """The first processor's `vendor_id`, `cpu family` (int) and `flags` (set) from /proc/cpuinfo; {} where there
    is none (not Linux)."""
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "vendor_id":
                    info["vendor"] = value
                elif key == "cpu family" and value.isdigit():
                    info["family"] = int(value)
                elif key == "flags":
                    info["flags"] = set(value.split())
                elif not key and info:  # the blank line after the first processor
                    break
    except OSError:
        pass
    return info


def openblas_coretype(cpu: dict, matmul_backend: str) -> str | None:
    """The OpenBLAS core kernels to ask for (OPENBLAS_CORETYPE) where the measured choice differs from OpenBLAS's
    own: "Haswell" (AVX2) on AMD family 25 with AVX-512 (Zen 4), where OpenBLAS picks SkylakeX (AVX-512) and the
    step ran x0.96 with Haswell's; None elsewhere, and when the products cannot run on the kernel ("xla"). With
    "auto" it is set too, before the kernel loads: the measurement then times the kernel as it would run."""
    flags = cpu.get("flags", set())
    zen4 = cpu.get("vendor") == "AuthenticAMD" and cpu.get("family") == 25 and "avx512f" in flags
    return "Haswell" if matmul_backend in ("blas", "auto") and zen4 else None


def cpu_matmul_backend(cpu_devices: int | None = None, *, multi_device_flags: bool = False) -> tuple[str, str]:
    """(path, why) for `jaxformer.matmul` on this CPU: JAXFORMER_CPU_MATMUL if set ("blas", "xla" or "auto"; any
    other value: one warning naming what is used instead); else "auto" -- the faster of XLA's dot and the BLAS
    kernel, measured on the model's own products at first use (`matmul.resolve_cpu_backend`) -- with one CPU
    device and the `cpu` extra (scipy-openblas32) installed, and "xla" otherwise: several devices need the sharding
    rule the primitive lacks. Whether the kernel then builds and loads is found at model construction
    (`matmul.default_dot_general`), which falls back to XLA's dot with one warning."""
    mode = os.environ.get(CPU_MATMUL_ENV, "").lower()
    if (cpu_devices or 1) > 1 or multi_device_flags:
        measured = ("xla", f"{cpu_devices or 'several'} CPU devices: the BLAS kernel has no sharding rule")
    elif importlib.util.find_spec("scipy_openblas32") is None:
        measured = ("xla", "scipy-openblas32 is not installed (pip install 'jaxformer[cpu]'), so XLA's dot")
    else:
        measured = ("auto", "the faster path, measured at first use")
    if mode and mode not in matmul.CPU_MODES:
        log.warning("%s=%r is not one of 'auto' (measure both), 'blas' (the OpenBLAS matmul kernel), 'xla' (XLA's "
                    "dot); using %r: %s", CPU_MATMUL_ENV, os.environ[CPU_MATMUL_ENV], measured[0], measured[1])
        return measured
    if mode and mode != "auto":
        return mode, f"{CPU_MATMUL_ENV}={mode}"
    return measured


def configure(platform_hint: str | None = None, *, cpu_devices: int | str | None = None) -> dict[str, str]:
    """Applies this machine's settings before JAX initialises its backend; returns what it set (for logs).

    platform_hint: "cpu", "gpu", "tpu", ... when the caller knows; otherwise JAX_PLATFORMS or the installed
      plugins decide. Anything but a CPU: nothing is set.
    cpu_devices: JAX CPU devices to present: an integer, "auto" (one per usable core), or None to read
      JAXFORMER_CPU_DEVICES (unset: JAX's default of one device). See the module docstring for when it pays.
    Called after the backend is up, it changes nothing and logs a warning (too late to take effect).
    """
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        log.warning("jaxformer.platform.configure() called after JAX initialised its backend; nothing set")
        return {}
    platform = resolve_platform(platform_hint)
    if platform != "cpu":
        return {}
    applied = tune_malloc()
    flags = os.environ.get("XLA_FLAGS", "").split()
    given = {f.split("=", 1)[0] for f in flags}
    added = [f for f in CPU_XLA_FLAGS if f.split("=", 1)[0] not in given]
    if added:
        os.environ["XLA_FLAGS"] = " ".join(flags + added)
        applied["XLA_FLAGS"] = " ".join(added)
    n = _cpu_device_count(cpu_devices)
    user_set = "--xla_force_host_platform_device_count" in given or "JAX_NUM_CPU_DEVICES" in os.environ
    if n is not None and not user_set:
        jax.config.update("jax_num_cpu_devices", n)
        applied["jax_num_cpu_devices"] = str(n)
    cpu = cpu_info()
    matmul_backend, why = cpu_matmul_backend(n, multi_device_flags=user_set)
    matmul.set_cpu_backend(matmul_backend, why)
    applied["cpu_matmul"] = matmul_backend
    coretype = openblas_coretype(cpu, matmul_backend)
    if coretype and "OPENBLAS_CORETYPE" not in os.environ:  # read when the kernel loads OpenBLAS, at first use
        os.environ["OPENBLAS_CORETYPE"] = coretype
        applied["OPENBLAS_CORETYPE"] = coretype
    if applied:
        log.debug("platform settings: %s", ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied
