"""jaxformer.matmul: op(a)·op(b) on both CPU backends (XLA's dot, the OpenBLAS custom call) against float64 NumPy,
its hand-written derivative, vmap, the fallbacks, and the model trained through either backend."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import matmul, platform
from jaxformer.kernels import cpu_gemm


@pytest.fixture(params=["xla", "blas"])
def backend(request):
    before = matmul.cpu_backend()
    matmul.set_cpu_backend(request.param)
    if request.param == "blas":
        assert cpu_gemm.load() == cpu_gemm.TARGET, cpu_gemm.reason()  # must build here: CI has g++ and the wheel
    yield request.param
    matmul.set_cpu_backend(before)


def _uses_kernel(fn, *args) -> bool:
    return cpu_gemm.TARGET in jax.jit(fn).lower(*args).as_text()


def _op(x, t):
    return np.swapaxes(x, -1, -2) if t else x


# (batch, M, K, N): one matrix; a batch of more matrices than threads; fewer; rows not a multiple of the blocks.
SHAPES = [((), 40, 24, 56), ((5,), 17, 8, 33), ((1,), 64, 32, 64), ((2, 3), 3, 5, 7), ((), 1, 9, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_matches_float64_and_the_backend_is_the_one_chosen(backend, shape, ta, tb):
    batch, M, K, N = shape
    r = np.random.default_rng(M * 100 + K)
    a = r.standard_normal(batch + ((K, M) if ta else (M, K))).astype(np.float32)
    b = r.standard_normal(batch + ((N, K) if tb else (K, N))).astype(np.float32)
    fn = lambda a, b: matmul.matmul(a, b, transpose_a=ta, transpose_b=tb)
    out = np.asarray(jax.jit(fn)(a, b))
    ref = _op(a.astype(np.float64), ta) @ _op(b.astype(np.float64), tb)
    assert out.shape == batch + (M, N)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.sqrt(K))
    assert _uses_kernel(fn, a, b) == (backend == "blas")
    assert matmul.cpu_backend_in_use() == backend


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_gradients_match_the_float64_formula(backend, ta, tb):
    r = np.random.default_rng(7)
    M, K, N = 12, 20, 9
    a = r.standard_normal((3,) + ((K, M) if ta else (M, K))).astype(np.float32)
    b = r.standard_normal((3,) + ((N, K) if tb else (K, N))).astype(np.float32)
    g = r.standard_normal((3, M, N)).astype(np.float32)  # cotangent: d/dC of sum(g * C)
    da, db = jax.jit(jax.grad(lambda a, b: jnp.sum(g * matmul.matmul(a, b, transpose_a=ta, transpose_b=tb)),
                              argnums=(0, 1)))(a, b)
    A, B, G = _op(a.astype(np.float64), ta), _op(b.astype(np.float64), tb), g.astype(np.float64)
    dA, dB = G @ np.swapaxes(B, -1, -2), np.swapaxes(A, -1, -2) @ G  # gradients w.r.t. op(a), op(b)
    np.testing.assert_allclose(np.asarray(da), _op(dA, ta), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(db), _op(dB, tb), rtol=1e-5, atol=1e-4)


def test_vmapped_single_head_products_equal_the_batched_einsum(backend):
    r = np.random.default_rng(3)
    q, k = (r.standard_normal((4, 3, 16, 8)).astype(np.float32) for _ in range(2))
    head = lambda q, k: matmul.matmul(q, k, transpose_b=True)
    out = jax.jit(jax.vmap(jax.vmap(head)))(q, k)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhtd,bhsd->bhts", q.astype(np.float64), k), rtol=1e-5,
                               atol=1e-5)
    assert _uses_kernel(jax.vmap(jax.vmap(head)), q, k) == (backend == "blas")


def test_rows_times_a_matrix_broadcast_batches_and_empty_contractions(backend):
    r = np.random.default_rng(5)
    x, w = r.standard_normal((2, 5, 6)).astype(np.float32), r.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(matmul.matmul(x, w)), x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    y = r.standard_normal((1, 6, 3)).astype(np.float32)  # batch axis broadcast against x's
    np.testing.assert_allclose(np.asarray(matmul.matmul(x, y)), x.astype(np.float64) @ y, rtol=1e-5, atol=1e-5)
    empty = matmul.matmul(np.ones((3, 0), np.float32), np.ones((0, 2), np.float32))
    np.testing.assert_array_equal(np.asarray(empty), np.zeros((3, 2)))
    assert matmul.matmul(np.ones((0, 6), np.float32), w).shape == (0, 4)


def test_other_dtypes_and_bad_shapes_take_xla_or_fail_clearly(backend):
    a = jnp.ones((8, 4), jnp.bfloat16)
    fn = lambda a: matmul.matmul(a, a, transpose_b=True, preferred_element_type=jnp.float32)
    assert fn(a).dtype == jnp.float32 and float(fn(a)[0, 0]) == 4.0
    assert not _uses_kernel(fn, a)
    with pytest.raises(ValueError, match="contracting sizes differ: 4 .* vs 5"):
        matmul.matmul(jnp.ones((3, 4)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="rank >= 2"):
        matmul.matmul(jnp.ones(3), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="'blas'"):
        matmul.set_cpu_backend("mkl")


def test_dot_general_adapter_routes_only_the_dense_case():
    x, w = jnp.ones((6, 4)), jnp.ones((4, 3))
    np.testing.assert_array_equal(matmul.dot_general(x, w, (((1,), (0,)), ((), ()))), 4 * np.ones((6, 3)))
    wt = jnp.ones((3, 4))  # contracting rhs axis 1: not the dense form, plain lax.dot_general
    np.testing.assert_array_equal(matmul.dot_general(x, wt, (((1,), (1,)), ((), ()))), 4 * np.ones((6, 3)))


def test_model_trains_the_same_through_either_backend(tiny_cfg):
    from jaxformer import train as train_lib

    results = {}
    before = matmul.cpu_backend()
    try:
        for name in ("xla", "blas"):
            matmul.set_cpu_backend(name)
            trainer = train_lib.Trainer(tiny_cfg)
            state = trainer.initial_state()
            step = trainer.train_step.lower(state, trainer.batch(0)).compile()
            assert (cpu_gemm.TARGET in step.as_text()) == (name == "blas")
            for s in range(3):
                state = step(state, trainer.batch(s))
            results[name] = jax.tree.map(np.asarray, state["params"])
    finally:
        matmul.set_cpu_backend(before)
    for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results["blas"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_backend_choice_follows_the_cpu_devices_and_the_environment(monkeypatch):
    monkeypatch.delenv(platform.CPU_MATMUL_ENV, raising=False)
    avx512 = {"avx2", "avx512f", "avx512bw"}
    zen3 = {"vendor": "AuthenticAMD", "family": 25, "flags": {"avx", "avx2", "fma"}}
    zen4 = {"vendor": "AuthenticAMD", "family": 25, "flags": avx512}
    zen5 = {"vendor": "AuthenticAMD", "family": 26, "flags": avx512}
    xeon = {"vendor": "GenuineIntel", "family": 6, "flags": avx512 | {"amx_tile"}}
    assert platform.cpu_matmul_backend(None, cpu=zen3) == platform.cpu_matmul_backend(1, cpu=zen3) == "blas"
    assert platform.cpu_matmul_backend(1, cpu=zen4) == "blas"  # measured faster there too
    assert platform.cpu_matmul_backend(1, cpu=zen5) == "xla"  # measured setting there: XLA's dot
    assert platform.cpu_matmul_backend(1, cpu=xeon) == "xla"
    assert platform.cpu_matmul_backend(1, cpu={}) == "xla"  # no /proc/cpuinfo, or not x86
    assert platform.cpu_matmul_backend(2, cpu=zen3) == "xla"  # the custom call has no sharding rule
    assert platform.cpu_matmul_backend(None, multi_device_flags=True, cpu=zen4) == "xla"
    monkeypatch.setenv(platform.CPU_MATMUL_ENV, "xla")
    assert platform.cpu_matmul_backend(1, cpu=zen3) == "xla"
    monkeypatch.setenv(platform.CPU_MATMUL_ENV, "blas")
    assert platform.cpu_matmul_backend(4, cpu=zen5) == "blas"



@pytest.mark.parametrize("cpu,expected", [({"vendor": "AuthenticAMD", "family": 25, "flags": {"avx2"}}, "blas"),
                                          ({"vendor": "AuthenticAMD", "family": 26, "flags": {"avx2", "avx512f"}},
                                           "xla")])
def test_an_unknown_backend_name_says_in_one_line_what_is_used_instead(monkeypatch, caplog, cpu, expected):
    monkeypatch.setenv(platform.CPU_MATMUL_ENV, "fast")
    with caplog.at_level("WARNING", logger="jaxformer"):
        assert platform.cpu_matmul_backend(1, cpu=cpu) == expected  # the measured choice, no error
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "JAXFORMER_CPU_MATMUL='fast'" in lines[0] and f"using {expected!r}" in lines[0]


def test_a_kernel_that_cannot_load_is_one_warning_at_construction_never_an_error_inside_jit(tmp_path):
    """JAXFORMER_CPU_MATMUL=blas where the kernel cannot build: the model is built on XLA's dot, one warning line
    says so, and jit/grad/jvp run."""
    code = ("import logging, jax, jax.numpy as jnp; logging.basicConfig(format='%(message)s');"
            "from jaxformer import platform, matmul, config;"
            "applied = platform.configure('cpu'); from jaxformer import loader;"
            "cfg = config.load('tiny'); cfg.model.vocab_size = 7; "
            "model = loader.build_model(cfg); x = jnp.zeros((1, 4), jnp.int32);"
            "print(applied['cpu_matmul'], matmul.default_dot_general() is matmul.rows_dot_general, "
            "float(jax.jit(lambda: model(x).sum())()), matmul.cpu_backend_in_use())")
    env = {**os.environ, "JAXFORMER_CPU_MATMUL": "blas", "CXX": str(tmp_path / "no-such-compiler"),
           "JAXFORMER_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if "cannot load" in line]
    assert len(warnings) == 1 and "using XLA's dot instead" in warnings[0] and "no-such-compiler" in warnings[0]
    chosen, is_xla, _, in_use = out.stdout.split()
    assert (chosen, is_xla, in_use) == ("blas", "True", "xla")


def test_cpu_info_reads_the_first_processor(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "flags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert platform.cpu_info() == {"vendor": "AuthenticAMD", "family": 25, "flags": {"fpu", "avx2", "avx512f"}}
    cpuinfo.unlink()
    assert platform.cpu_info() == {}


def test_openblas_core_kernels_are_chosen_only_where_measured():
    avx512 = {"avx2", "avx512f", "avx512bw"}
    zen4 = {"vendor": "AuthenticAMD", "family": 25, "flags": avx512}
    assert platform.openblas_coretype(zen4, "blas") == "Haswell"
    assert platform.openblas_coretype(zen4, "xla") is None  # nothing of ours runs on OpenBLAS then
    assert platform.openblas_coretype({"vendor": "AuthenticAMD", "family": 25, "flags": {"avx2"}}, "blas") is None
    assert platform.openblas_coretype({"vendor": "AuthenticAMD", "family": 26, "flags": avx512}, "blas") is None
    assert platform.openblas_coretype({"vendor": "GenuineIntel", "family": 6, "flags": avx512}, "blas") is None
    assert platform.openblas_coretype({}, "blas") is None


@pytest.mark.parametrize("coretype", ["Haswell", "Sandybridge"])
def test_the_recorded_openblas_core_is_the_one_that_runs(coretype):
    code = ("import jax.numpy as jnp; from jaxformer import matmul; matmul.set_cpu_backend('blas');"
            "matmul.matmul(jnp.ones((2, 3)), jnp.ones((3, 2))).block_until_ready(); print(matmul.blas_core());"
            "matmul.set_cpu_backend('xla'); print(matmul.blas_core())")
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == [coretype, "None"]


def test_kernel_build_is_cached_and_a_missing_compiler_is_reported(tmp_path, monkeypatch):
    library = cpu_gemm.build(tmp_path)
    assert library.exists() and cpu_gemm.build(tmp_path) == library  # second call: the cached file
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no temporary left behind
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises((FileNotFoundError, OSError, RuntimeError)):
        cpu_gemm.build(tmp_path / "other")


def test_a_process_without_the_kernel_falls_back_to_xla_and_says_why(tmp_path):
    code = ("import jax, jax.numpy as jnp; from jaxformer import matmul; from jaxformer.kernels import cpu_gemm;"
            "matmul.set_cpu_backend('blas'); print(float(matmul.matmul(jnp.ones((2, 3)), jnp.ones((3, 2)))[0, 0]));"
            "print(cpu_gemm.reason()); print(matmul.cpu_backend_in_use())")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "JAXFORMER_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    value, reason, in_use = out.stdout.strip().splitlines()[-3:]
    assert value == "3.0" and "no-such-compiler" in reason + out.stderr
    assert in_use == "xla"  # chosen "blas", but what runs (and what run records say) is XLA's dot


def test_off_cpu_the_kernel_is_never_built_or_loaded(tmp_path):
    """A GPU/TPU machine (here: the platform hint) needs no C++ compiler and no OpenBLAS: configure() chooses
    nothing, the model is built on XLA's dot (lax.dot_general; on rows where the devices are CPUs, as here), and the
    kernel's build is never attempted."""
    code = ("import jax; from jaxformer import platform, matmul; from jaxformer.kernels import cpu_gemm;"
            "applied = platform.configure('gpu'); chosen = matmul.default_dot_general();"
            "print(applied == {}, chosen in (jax.lax.dot_general, matmul.rows_dot_general), cpu_gemm._state == {})")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXFORMER_CPU_MATMUL": "blas",
           "CXX": str(tmp_path / "no-such-compiler"), "JAXFORMER_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
    assert list(tmp_path.iterdir()) == []  # nothing built


def test_rows_dot_general_is_lax_dot_general_on_flattened_rows():
    """What a CPU model is built with on XLA's dot: the same products (forward and gradients, to float32 rounding) as
    lax.dot_general and as float64, a rows-times-matrix product taken on [N, D] rows, anything else passed through."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
    cases = [(x, jnp.asarray(rng.normal(size=(8, 6)), jnp.float32), (((2,), (0,)), ((), ()))),   # x·W
             (x, jnp.asarray(rng.normal(size=(6, 8)), jnp.float32), (((2,), (1,)), ((), ()))),   # x·Wᵀ
             (x, jnp.asarray(rng.normal(size=(3, 8, 4)), jnp.float32), (((2,), (1,)), ((0,), (0,))))]  # batched
    for lhs, rhs, dims in cases:
        f = lambda a, b, dot, dims=dims: (dot(a, b, dims) ** 2).sum()
        ours = jax.value_and_grad(f, argnums=(0, 1))(lhs, rhs, matmul.rows_dot_general)
        theirs = jax.value_and_grad(f, argnums=(0, 1))(lhs, rhs, jax.lax.dot_general)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        expected = np.einsum("btd,fd->btf" if dims[0][1] == (1,) and rhs.ndim == 2 else
                             "btd,df->btf" if rhs.ndim == 2 else "btd,bdf->btf",
                             np.asarray(lhs, np.float64), np.asarray(rhs, np.float64))
        np.testing.assert_allclose(np.asarray(matmul.rows_dot_general(lhs, rhs, dims)), expected, rtol=1e-5,
                                   atol=1e-5)
