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
    """No table of CPU kinds: with one device the path is measured ("auto") on every CPU; several devices keep XLA's
    dot (no sharding rule); JAXFORMER_CPU_MATMUL overrides, and the why names what decided."""
    monkeypatch.delenv(platform.CPU_MATMUL_ENV, raising=False)
    assert platform.cpu_matmul_backend(None)[0] == platform.cpu_matmul_backend(1)[0] == "auto"
    path, why = platform.cpu_matmul_backend(2)
    assert path == "xla" and "2 CPU devices" in why  # the custom call has no sharding rule
    assert platform.cpu_matmul_backend(None, multi_device_flags=True)[0] == "xla"
    for mode in ("xla", "blas", "auto"):
        monkeypatch.setenv(platform.CPU_MATMUL_ENV, mode)
        path, why = platform.cpu_matmul_backend(1)
        assert path == mode and (mode == "auto" or why == f"JAXFORMER_CPU_MATMUL={mode}")
    monkeypatch.setenv(platform.CPU_MATMUL_ENV, "blas")
    assert platform.cpu_matmul_backend(4)[0] == "blas"  # the user's word, even where it cannot shard


def test_an_unknown_backend_name_says_in_one_line_what_is_used_instead(monkeypatch, caplog):
    monkeypatch.setenv(platform.CPU_MATMUL_ENV, "fast")
    with caplog.at_level("WARNING", logger="jaxformer"):
        assert platform.cpu_matmul_backend(1)[0] == "auto"  # measured, no error
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "JAXFORMER_CPU_MATMUL='fast'" in lines[0] and "using 'auto'" in lines[0]


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
    assert platform.openblas_coretype(zen4, "blas") == platform.openblas_coretype(zen4, "auto") == "Haswell"
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


# ------------------------------------------------------------------- the CPU path chosen by measurement (issue 38)

def _fake_timer(times_s: dict, calls: list | None = None):
    """make_timer for `kernels.choose`: each candidate's parts take the given seconds, round after round (lists
    of rounds cycle), with no clock involved; `calls` counts how often a timer was built (a measurement)."""
    def make():
        if calls is not None:
            calls.append(1)
        rounds = {c: 0 for c in times_s}

        def time_round(c):
            seq = times_s[c] if isinstance(times_s[c][0], list) else [times_s[c]]
            rounds[c] += 1
            return seq[(rounds[c] - 1) % len(seq)]
        return time_round
    return make


def test_the_chooser_picks_the_faster_of_two_fake_candidates_by_the_medians_of_parts():
    from jaxformer.kernels import choose

    # blas is faster on the second part, and one round of it hit a 100 s spike (another process): medians ignore it.
    t = {"xla": [1e-3, 4e-3], "blas": [[1e-3, 2e-3], [1e-3, 2e-3], [1e-3, 100.0]]}
    c = choose.measure(("xla", "blas"), _fake_timer(t)(), budget_s=0.0, min_rounds=6)
    assert (c.name, c.rounds, c.source) == ("blas", 6, "measured")
    assert c.medians_s == pytest.approx({"xla": 5e-3, "blas": 3e-3})
    assert "blas 3.000 ms vs xla 5.000 ms" in c.why
    t = {"xla": [1e-3, 4e-3], "blas": [3e-3, 3e-3]}  # xla x0.83 on the sum of the parts, listed second
    assert choose.measure(("blas", "xla"), _fake_timer(t)(), budget_s=0.0).name == "xla"
    # Within the margin, the first candidate (the default path) is kept, and the why says so.
    c = choose.measure(("xla", "blas"), _fake_timer({"xla": [1.0], "blas": [0.99]})(), budget_s=0.0, margin=0.03)
    assert c.name == "xla" and "within the 3% margin" in c.why
    with pytest.raises(ValueError, match="distinct"):
        choose.measure(("xla", "xla"), _fake_timer({"xla": [1.0]})())


def test_the_choice_is_cached_per_key_and_measured_again_when_the_key_changes(tmp_path):
    from jaxformer.kernels import choose

    calls = []
    key = {"cpu": {"model": "167"}, "jaxlib": "0.10.2", "products": "step: a"}
    first = choose.choose(("xla", "blas"), _fake_timer({"xla": [2.0], "blas": [1.0]}, calls), key=key,
                          cache_dir=tmp_path, name="cpu-matmul", budget_s=0.0)
    assert (first.name, first.source, len(calls)) == ("blas", "measured", 1)
    # A later process with the same key: the cached choice, not a measurement (even where the timer would now
    # say otherwise).
    again = choose.choose(("xla", "blas"), _fake_timer({"xla": [1.0], "blas": [2.0]}, calls), key=key,
                          cache_dir=tmp_path, name="cpu-matmul", budget_s=0.0)
    assert (again.name, again.source, again.file, len(calls)) == ("blas", "cache", first.file, 1)
    assert "cached" in again.why and again.medians_s == first.medians_s
    # Another CPU model or library version is another key: measured again, into another file; the first is kept.
    for changed in ({**key, "cpu": {"model": "17"}}, {**key, "jaxlib": "0.10.3"}, {**key, "products": "step: b"}):
        other = choose.choose(("xla", "blas"), _fake_timer({"xla": [1.0], "blas": [2.0]}, calls), key=changed,
                              cache_dir=tmp_path, name="cpu-matmul", budget_s=0.0)
        assert (other.name, other.source) == ("xla", "measured") and other.file != first.file
    assert len(calls) == 4 and len(list(tmp_path.glob("cpu-matmul-*.json"))) == 4
    assert choose.read_cached(first.file, key).name == "blas"
    # A file whose recorded key is not this key (a hand-edited or colliding file) is never trusted.
    assert choose.read_cached(first.file, {**key, "jaxlib": "other"}) is None


def test_an_unwritable_cache_is_one_warning_and_the_measured_choice(tmp_path, caplog):
    from jaxformer.kernels import choose

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level("WARNING"):
        c = choose.choose(("xla", "blas"), _fake_timer({"xla": [2.0], "blas": [1.0]}), key={"k": 1},
                          cache_dir=blocker / "sub", budget_s=0.0)
    assert c.name == "blas" and c.file is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "could not cache" in caplog.records[0].message


@pytest.fixture
def tiny_model_cfg(tiny_cfg):
    from jaxformer import config as config_lib

    return config_lib.resolve(tiny_cfg, vocab_size=11)


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """matmul in "auto" mode, nothing measured yet in this process, the cache in tmp_path."""
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(matmul, "_cpu_backend", "auto")
    monkeypatch.setattr(matmul, "_measured", None)
    assert cpu_gemm.load() == cpu_gemm.TARGET, cpu_gemm.reason()
    return tmp_path


@pytest.mark.parametrize("faster", ["xla", "blas"])
def test_auto_builds_the_model_on_the_path_measured_faster_and_the_manifest_says_why(auto, monkeypatch, faster,
                                                                                   tiny_model_cfg):
    from jaxformer import loader
    from jaxformer import run as run_lib

    seen = []

    def fake_timer(products):  # stands in for the clock: `faster` takes half the time on every product
        seen.append(products)
        return lambda path: [1e-3 if path == faster else 2e-3 for _ in products]

    monkeypatch.setattr(matmul, "product_timer", fake_timer)
    model = loader.build_model(tiny_model_cfg)
    assert model.blocks[0].mlp.fc.dot_general is (matmul.dot_general if faster == "blas" else matmul.rows_dot_general)
    assert matmul.cpu_backend_in_use() == faster and matmul.cpu_backend() == "auto"
    # It timed the model's own step: every dense product forward and backward, at its batch shape.
    rows, D = tiny_model_cfg.data.batch_size * tiny_model_cfg.data.block_size, tiny_model_cfg.model.n_embd
    (products,) = seen
    assert products[((rows, D), (D, 4 * D), False, False)] == tiny_model_cfg.model.n_layer  # mlp.fc forward
    assert products[((rows, D), (rows, 4 * D), True, False)] == tiny_model_cfg.model.n_layer  # its weight gradient
    record = run_lib.manifest(tiny_model_cfg, data_hash="x")["cpu_matmul_choice"]
    assert record["path"] == faster and record["source"] == "measured" and record["why"].startswith("measured")
    assert record["median_ms"][faster] < record["median_ms"]["blas" if faster == "xla" else "xla"]
    # A second build in this process reuses the choice (one per process: runs in it all take the same path).
    loader.build_model(tiny_model_cfg)
    assert len(seen) == 1


def test_auto_reads_the_cache_and_a_set_path_is_never_measured(auto, monkeypatch, tiny_model_cfg):
    from jaxformer import loader

    monkeypatch.setattr(matmul, "product_timer", lambda products: lambda path: [2e-3 if path == "xla" else 1e-3])
    loader.build_model(tiny_model_cfg)
    assert matmul.cpu_backend_choice()["source"] == "measured"
    monkeypatch.setattr(matmul, "_measured", None)  # a new process, same machine and config
    monkeypatch.setattr(matmul, "product_timer", lambda products: pytest.fail("measured again despite the cache"))
    loader.build_model(tiny_model_cfg)
    assert matmul.cpu_backend_choice()["source"] == "cache" and matmul.cpu_backend_in_use() == "blas"
    for path in ("xla", "blas"):  # JAXFORMER_CPU_MATMUL (through configure) sets the path: no measurement
        monkeypatch.setattr(matmul, "_measured", None)
        matmul.set_cpu_backend(path, f"JAXFORMER_CPU_MATMUL={path}")
        loader.build_model(tiny_model_cfg)
        assert matmul.cpu_backend_choice() == {"path": path, "why": f"JAXFORMER_CPU_MATMUL={path}"}


def test_the_cache_key_changes_with_what_changes_the_timings(auto, monkeypatch):
    key = matmul._choice_key("step: x")
    assert key["cpu"] and key["cores"] >= 1 and key["jaxlib"] and key["scipy_openblas32"]
    assert key["kernel"].startswith("cpu_gemm-")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert matmul._choice_key("step: x") != key
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false")
    assert matmul._choice_key("step: x") != key
    monkeypatch.delenv("XLA_FLAGS")
    assert matmul._choice_key("step: x") == key and matmul._choice_key("step: y") != key


def test_the_real_product_timer_runs_both_paths_on_the_given_shapes(auto):
    products = {((2, 16, 8), (2, 8, 12), False, False): 3, ((40, 8), (40, 6), True, False): 1}
    time_round = matmul.product_timer(products)
    for path in ("xla", "blas"):
        parts = time_round(path)
        assert len(parts) == 2 and all(t > 0 for t in parts)
    # A product too large to time whole is timed on a slice, its time scaled by the FLOPs left out.
    a, b, scale = matmul._timed_shape((8, 4096, 1024), (8, 1024, 4096), False, False)
    timed = 2.0 * a[0] * a[1] * a[2] * b[2]
    assert timed <= matmul.TIMED_FLOPS_MAX and scale * timed == pytest.approx(2.0 * 8 * 4096 * 1024 * 4096)
    assert matmul._timed_shape((16, 8), (4, 16), True, True) == ((16, 8), (4, 16), 1.0)  # small: as it is


def test_auto_built_inside_a_trace_still_measures_outside_it(auto, tiny_model_cfg):
    """`nnx.eval_shape(build_model)` (memory estimates, importers) may be the first build: the products still run."""
    from flax import nnx

    from jaxformer import loader

    nnx.eval_shape(lambda: loader.build_model(tiny_model_cfg))
    choice = matmul.cpu_backend_choice()
    assert choice["source"] == "measured" and choice["rounds"] >= 5
    assert all(v > 0 for v in choice["median_ms"].values())


def test_an_existing_run_keeps_the_product_path_its_manifest_records(tmp_path, monkeypatch):
    """With the path measured ("auto"), a resumed or evaluated run takes the path it was trained with on the CPU
    kind that recorded it (two measurements can land on either side of the margin; the paths round differently);
    another CPU kind, a path set by the environment, or a run without the record measures as usual."""
    from jaxformer import fingerprint, loader
    from jaxformer import run as run_lib

    saved = (matmul._cpu_backend, matmul._why)
    try:
        for recorded, cpu, mode, want in (("blas", fingerprint.cpu(), "auto", "blas"),
                                          ("xla", fingerprint.cpu(), "auto", "xla"),
                                          ("blas", {**fingerprint.cpu(), "model": "another"}, "auto", None),
                                          ("blas", fingerprint.cpu(), "xla", None),
                                          (None, fingerprint.cpu(), "auto", None)):
            matmul.set_cpu_backend(mode)
            run_lib.write_json(str(tmp_path / "manifest.json"),
                               {"cpu": cpu, "cpu_matmul_choice": {"path": recorded} if recorded else None})
            assert loader.follow_run_matmul(str(tmp_path)) == want, (recorded, mode)
            assert matmul.cpu_backend() == (want or mode)
    finally:
        matmul.set_cpu_backend(*saved)
