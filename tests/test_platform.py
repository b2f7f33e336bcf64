"""jaxformer.platform: the machine settings `configure()` applies (each case in a fresh process: they are global)."""

import json
import os
import platform as py_platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(py_platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")

# Allocates, touches and frees a 64 MiB buffer 20 times; reports the minor page faults that took.
_PROBE = """
import json, resource, sys
import numpy as np
from jaxformer import platform
applied = platform.tune_malloc() if sys.argv[1] == "tune" else {}
np.ones(1 << 24, np.float32)  # first touch of the memory, in both cases
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(1 << 24, np.float32)
    del a
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode, **env):
    user_tuning = ("MALLOC_", "JAXFORMER_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(user_tuning)}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=full_env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tune_malloc_reuses_freed_buffers_instead_of_faulting_them_in_again():
    default, tuned = _probe("default"), _probe("tune")
    assert tuned["applied"] == {"M_MMAP_THRESHOLD": str(1 << 30), "M_TRIM_THRESHOLD": str((1 << 31) - 1)}
    # By default each new 64 MiB buffer is a fresh mapping: at least 32 faults (2 MiB huge pages), 16,384 with
    # 4 KiB pages, for each of the 20. Tuned, the freed block is reused (0 faults seen).
    assert default["faults"] >= 20 * 32
    assert tuned["faults"] < default["faults"] / 10


@glibc
@pytest.mark.parametrize("env", [{"JAXFORMER_MALLOC": "default"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}])
def test_tune_malloc_leaves_the_allocator_alone_when_asked_or_already_tuned(env):
    assert _probe("tune", **env)["applied"] == {}


@glibc
def test_tune_malloc_with_tune_or_unset_value_sets_it():
    assert _probe("tune", JAXFORMER_MALLOC="tune")["applied"] == _probe("tune")["applied"] != {}


@pytest.mark.parametrize("name,value,valid", [("JAXFORMER_MALLOC", "off", "'default'"),
                                              ("JAXFORMER_CPU_DEVICES", "zero", "'auto'")])
def test_a_bad_machine_setting_is_a_one_line_cli_error(name, value, valid, tmp_path):
    env = {**os.environ, name: value}
    out = subprocess.run([sys.executable, "-m", "jaxformer.cli", "config", "--config", "tiny"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and repr(value) in lines[0] and valid in lines[0], out.stderr



def test_an_unknown_matmul_backend_is_one_line_saying_what_is_used_instead(tmp_path):
    """Issue 23's bad input: the run goes on with the measured choice, and says so in one line (no traceback)."""
    env = {**os.environ, "JAXFORMER_CPU_MATMUL": "mkl"}
    out = subprocess.run([sys.executable, "-m", "jaxformer.cli", "config", "--config", "tiny"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "JAXFORMER_CPU_MATMUL='mkl'" in lines[0], out.stderr
    assert "using 'auto'" in lines[0], out.stderr  # measured at first use
    assert "Traceback" not in out.stderr

# configure() on a stand-in Zen 4: the kernel's products, and OpenBLAS's AVX2 kernels unless the user chose some.
_CONFIGURE_ZEN4 = """
import json, os
from jaxformer import matmul, platform
platform.cpu_info = lambda: {"vendor": "AuthenticAMD", "family": 25, "flags": {"avx2", "avx512f"}}
applied = platform.configure("cpu")
import jax.numpy as jnp
matmul.matmul(jnp.ones((2, 3)), jnp.ones((3, 2))).block_until_ready()
print(json.dumps({"applied": applied, "env": os.environ.get("OPENBLAS_CORETYPE"), "core": matmul.blas_core()}))
"""


@pytest.mark.parametrize("user", [None, "Sandybridge"])
def test_configure_asks_openblas_for_the_measured_kernels_unless_the_user_chose(user):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "JAXFORMER_CPU_MATMUL")}
    env["JAXFORMER_CPU_MATMUL"] = "blas"  # the core that runs is only recorded when the kernel runs
    if user:
        env["OPENBLAS_CORETYPE"] = user
    out = subprocess.run([sys.executable, "-c", _CONFIGURE_ZEN4], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["applied"]["cpu_matmul"] == "blas"
    assert got["applied"].get("OPENBLAS_CORETYPE") == (None if user else "Haswell")
    assert got["env"] == got["core"] == (user or "Haswell")


def test_the_cpu_model_ops_are_the_plain_functions():
    """What `platform.model_ops()` injects into a CPU model computes the plain forms' functions: erf GELU against
    float64 x·Φ(x), and `unit_axis_vmap` against `jax.vmap` over size-1 and larger axes (tuple outputs too)."""
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxformer import platform

    x = np.random.default_rng(0).normal(scale=3.0, size=(4096,)).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    # 1 + erf(x/√2) cancels for x << 0: there the erf form is good to ~1e-6 absolute, not relative (erfc's is).
    ours, plain = platform.erf_gelu(jnp.asarray(x)), jax.nn.gelu(jnp.asarray(x), approximate=False)
    np.testing.assert_allclose(np.asarray(ours), exact, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(plain), exact, rtol=2e-6, atol=1e-7)
    assert np.abs(np.asarray(ours) - exact).max() > 0  # a different rounding: injected only where measured faster

    f = lambda a, b, c: (a @ b + (0.0 if c is None else c.sum()), jnp.tanh(a).sum(-1))
    rng = np.random.default_rng(1)
    for n in (1, 3):
        a, b, c = rng.normal(size=(n, 2, 5)), rng.normal(size=(5, n, 4)), rng.normal(size=(7,))
        for args, axes in [((a, b, c), (0, 1, None)), ((a, b, None), (0, 1, None))]:
            ours = platform.unit_axis_vmap(f, axes, (1, 0))(*args)
            theirs = jax.vmap(f, axes, (1, 0))(*args)
            for o, t in zip(ours, theirs, strict=True):
                assert o.shape == t.shape
                np.testing.assert_allclose(np.asarray(o), np.asarray(t), rtol=1e-6)
    assert platform.model_ops()["vmap"] is platform.unit_axis_vmap  # these tests run on a CPU
