"""Sharding: mesh shapes, parameter layouts, and sharded training that computes what one device computes.

The multi-device tests run tests/sharding_worker.py in subprocesses, because the CPU device count
(XLA_FLAGS=--xla_force_host_platform_device_count=8) and `jax.distributed` must be set before JAX starts.
The one-device baseline runs in a subprocess beside them, on the CPU too (whatever this machine has).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxformer import sharding as sharding_lib

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_worker.py")
STEPS = 20
RTOL = 1e-5  # sharded vs one device: the same function, reductions in another order
MESHES = {"data8": {"mesh.data": 8}, "data2_fsdp4": {"mesh.data": 2, "mesh.fsdp": 4},
          "fsdp8": {"mesh.data": 1, "mesh.fsdp": 8}}


# -------------------------------------------------------------------------------------------- subprocesses

def launch(mode: str, spec: dict, *, devices: int, env: dict | None = None) -> subprocess.Popen:
    """The worker on `devices` CPU devices; output goes to files (a full pipe would stall a process that its
    peer waits for in a collective)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    full_env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                    TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, WORKER, mode, json.dumps(spec)], env=full_env, text=True,
                            stdout=out, stderr=err)
    proc.files = (out, err)
    return proc


def result(proc: subprocess.Popen, timeout: float = 600) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, err = proc.files
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    out.close(), err.close()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"sharding_worker failed ({proc.returncode}):\n{stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(mode: str, spec: dict, *, devices_each: int = 2) -> list[dict]:
    """The worker as two `jax.distributed` processes on localhost (coordinator 127.0.0.1, gloo)."""
    port = free_port()
    procs = [launch(mode, spec, devices=devices_each,
                    env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                         "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    try:
        return [result(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def launched():
    """The one-device reference and the 8-device meshes, side by side."""
    procs = {"one": launch("meshes", {"steps": STEPS, "jobs": {"one": {}}}, devices=1),
             "eight": launch("meshes", {"steps": STEPS, "jobs": MESHES}, devices=8)}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:  # not needed by the tests selected
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def one_device(launched):
    """Losses of STEPS steps of configs/tiny.py on one device, the reference for every mesh."""
    return result(launched["one"])["one"]


@pytest.fixture(scope="module")
def eight_devices(launched):
    return result(launched["eight"])


def assert_losses_match(losses, reference, rtol=RTOL):
    np.testing.assert_allclose(losses, reference[:len(losses)], rtol=rtol, atol=0)


# ----------------------------------------------------------------------------------------------- unit tests

def mesh_cfg(**sizes):
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "multihost": False, **sizes})


def test_mesh_shape_fills_the_one_free_axis():
    assert sharding_lib.mesh_shape(mesh_cfg(fsdp=4), 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sharding_lib.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == {"data": 2, "fsdp": 2,
                                                                                 "tensor": 2}
    assert sharding_lib.mesh_shape(mesh_cfg(), 1) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="mesh.data=2, mesh.fsdp=2.*product must equal the 8 devices"):
        sharding_lib.mesh_shape(mesh_cfg(data=2, fsdp=2), 8)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding_lib.mesh_shape(mesh_cfg(fsdp=-1), 8)
    with pytest.raises(ValueError, match="do not split"):
        sharding_lib.mesh_shape(mesh_cfg(fsdp=3), 8)


def test_make_mesh_names_every_axis():
    mesh = sharding_lib.make_mesh(mesh_cfg())
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.size == jax.device_count()
    assert "over 1 devices" in sharding_lib.describe(sharding_lib.make_mesh(mesh_cfg(), jax.devices()[:1]))


def test_param_spec_takes_the_largest_divisible_dimension():
    spec = sharding_lib.param_spec
    assert spec((32, 96), fsdp=8) == P(None, "fsdp")
    assert spec((96, 32), fsdp=8) == P("fsdp", None)
    assert spec((36, 64), fsdp=8) == P(None, "fsdp")
    assert spec((28, 36), fsdp=8) == P(None, None)  # nothing divides: replicated
    assert spec((4,), fsdp=8) == P(None)  # smaller than the axis
    assert spec((), fsdp=8) == P()
    assert spec((32, 96), fsdp=1) == P(None, None)
    # tensor first, on its Megatron dimension; fsdp on the largest other one
    assert spec((32, 96), fsdp=4, tensor=2, tensor_axis=1) == P("fsdp", "tensor")
    assert spec((96, 32), fsdp=4, tensor=2, tensor_axis=0) == P("tensor", "fsdp")
    assert spec((33, 96), fsdp=4, tensor=2, tensor_axis=0) == P(None, "fsdp")  # tensor does not divide 33


def test_tensor_dims_are_megatrons():
    dim = sharding_lib.tensor_dim
    assert dim("['blocks'][0]['attn']['params']['qkv']['kernel']", (32, 96)) == 1  # column-parallel
    assert dim("['blocks'][0]['attn']['params']['out']['kernel']", (32, 32)) == 0  # row-parallel
    assert dim("['blocks'][0]['mlp']['fc']['kernel']", (32, 128)) == 1
    assert dim("['blocks'][0]['mlp']['proj']['kernel']", (128, 32)) == 0
    assert dim("['wte']['embedding']", (65, 32)) == 0  # vocabulary-parallel
    assert dim("[1][0].mu['blocks'][0]['mlp']['proj']['kernel']", (128, 32)) == 0  # Adam state like its param
    assert dim("['ln_f']['scale']", (32,)) is None


def test_tree_shardings_replicated_names_and_compute_layout():
    mesh = AbstractMesh((1, 8, 1), sharding_lib.AXES)
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
    params = {"table": sds(28, 36), "kernel": sds(36, 64), "scale": sds(36,), "count": sds()}
    tree = {"params": params, "opt": {"mu": params}}
    shardings = sharding_lib.tree_shardings(tree, mesh)
    assert shardings["params"]["kernel"].spec == P(None, "fsdp")
    assert shardings["opt"]["mu"]["kernel"].spec == shardings["params"]["kernel"].spec
    assert shardings["params"]["table"].spec == P(None, None)
    assert sharding_lib.replicated_names(params, mesh) == ["['scale']", "['table']"]  # not the scalar
    assert sharding_lib.compute_shardings(params, mesh)["kernel"].spec == P(None, None)
    assert sharding_lib.replicated_names(params, AbstractMesh((8, 1, 1), sharding_lib.AXES)) == []


def test_shard_batch_places_the_global_batch():
    mesh = sharding_lib.make_mesh(mesh_cfg())
    tokens = np.arange(2 * 8 * 4, dtype=np.int32).reshape(2, 8, 4)  # [accumulation, batch, time]
    out = sharding_lib.shard_batch({"inputs": tokens}, sharding_lib.batch_sharding(mesh, leading_axes=1))
    assert out["inputs"].sharding.spec == P(None, ("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(out["inputs"]), tokens)


def test_multihost_detection_needs_several_processes(monkeypatch):
    launchers = ("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "SLURM_", "OMPI_", "TPU_WORKER", "MEGASCALE")
    for name in list(os.environ):
        if name.startswith(launchers):
            monkeypatch.delenv(name)
    assert sharding_lib.detected_launcher() is None
    assert sharding_lib.maybe_initialize_distributed(False) is False  # nothing to do: no jax.distributed call
    slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert sharding_lib.detected_launcher() is None  # a one-task step is a single process
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert sharding_lib.detected_launcher() == "Slurm"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert sharding_lib.detected_launcher() == "JAX_COORDINATOR_ADDRESS"


def test_single_process_helpers_are_identities():
    assert sharding_lib.is_main_process()
    assert sharding_lib.any_process(True) and not sharding_lib.any_process(False)
    assert sharding_lib.broadcast_from_main(True) is True
    sharding_lib.assert_same_on_all_processes("/runs/a", "--workdir")
    np.testing.assert_array_equal(sharding_lib.to_host({"x": jax.numpy.ones(3)})["x"], np.ones(3))


# ------------------------------------------------------------------------------------ sharded training, CPU

@pytest.mark.parametrize("name", MESHES)
def test_sharded_training_matches_one_device(name, one_device, eight_devices):
    """20 steps on an 8-device mesh give the one-device losses, and the layout is what the mesh says."""
    run = eight_devices[name]
    assert run["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1, **{k[5:]: v for k, v in MESHES[name].items()}}
    assert_losses_match(run["losses"], one_device["losses"])
    assert len(run["losses"]) == STEPS and run["losses"][-1] < run["losses"][0]
    assert run["batch_spec"] == "P(('data', 'fsdp'),)"
    sizes = " x ".join(f"{axis}={size}" for axis, size in run["mesh"].items())
    assert run["describe"] == f"mesh {sizes} over 8 devices in 1 process(es)"
    fsdp = run["mesh"]["fsdp"]
    for path, p in run["params"].items():
        assert p["devices"] == 8, path
        assert p["dtype"] == "float32"
        if fsdp == 1:
            assert p["shard_shape"] == p["shape"], path  # data parallel: every device holds it whole
        else:  # every tiny-config array has a dimension of 32 or more, so fsdp splits each one
            assert "'fsdp'" in p["spec"], path
            assert np.prod(p["shard_shape"]) * fsdp == np.prod(p["shape"]), path
    assert run["mu_specs_match"]  # Adam's moments are laid out like their parameters
    assert run["replicated"] == []


@pytest.mark.slow
def test_tensor_axis_and_bfloat16_match_one_device(one_device):
    """data=2 x fsdp=2 x tensor=2 computes the same losses; bfloat16 compute keeps float32 master params."""
    runs = result(launch("meshes", {"steps": STEPS, "jobs": {
        "tensor": {"mesh.data": -1, "mesh.fsdp": 2, "mesh.tensor": 2},
        "bf16": {"mesh.data": 1, "mesh.fsdp": 8, "model.dtype": "bfloat16"}}}, devices=8))
    assert runs["tensor"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert_losses_match(runs["tensor"]["losses"], one_device["losses"])
    specs = {path.split("]")[-3] + "]": p["spec"] for path, p in runs["tensor"]["params"].items()}
    assert specs["['qkv']"] == "P('fsdp', 'tensor')" and specs["['out']"] == "P('tensor', 'fsdp')"
    bf16 = runs["bf16"]
    assert {p["dtype"] for p in bf16["params"].values()} == {"float32"}
    # bfloat16 matmuls: close to the float32 run (it trains the same way), but not equal to it.
    np.testing.assert_allclose(bf16["losses"], one_device["losses"], rtol=2e-2)
    assert bf16["losses"] != one_device["losses"]


@pytest.mark.slow
def test_checkpoint_from_data_parallel_resumes_on_fsdp(one_device, tmp_path):
    """`train` checkpoints at step 10 on (data=8) and resumes on (fsdp=8): same state, same next steps."""
    spec = {"workdir": str(tmp_path / "run"), "steps": STEPS, "save_at": 10, "more": 2,
            "save_on": {"mesh.data": 8}, "resume_on": {"mesh.data": 1, "mesh.fsdp": 8}}
    out = result(launch("resume", spec, devices=8))
    assert out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert out["restored_step"] == 10 and out["restored_equal"]
    assert all("'fsdp'" in spec for spec in out["resumed_specs"])
    losses = [m["loss"] for m in out["metrics"] if "loss" in m]
    assert [m["step"] for m in out["metrics"] if "loss" in m] == list(range(1, 13))
    assert_losses_match(losses, one_device["losses"])


@pytest.mark.slow
def test_two_processes_match_one_process(one_device):
    """Two jax.distributed processes (2 CPU devices each) on one fsdp=4 mesh: the one-device losses."""
    jobs = {"fsdp4": {"mesh.data": 1, "mesh.fsdp": 4}}
    runs = two_processes("meshes", {"steps": STEPS, "stop_after": 5, "jobs": jobs})
    for run in runs:
        run = run["fsdp4"]
        assert run["process_count"] == 2 and run["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        assert_losses_match(run["losses"], one_device["losses"])
        qkv = run["params"]["['blocks'][0]['attn']['params']['qkv']['kernel']"]
        assert qkv["devices"] == 4 and qkv["shard_shape"] == [32, 24]  # split across both processes
    assert runs[0]["fsdp4"]["losses"] == runs[1]["fsdp4"]["losses"]


@pytest.mark.slow
def test_two_processes_checkpoint_and_resume_on_another_mesh(one_device, tmp_path):
    """`train` in two processes: checkpoint at step 4 on (data=4), resume on (fsdp=4); files written once.

    Step 4 is also an evaluation, so the latest and the best checkpoint are saved at once, by every process.
    """
    spec = {"workdir": str(tmp_path / "run"), "steps": STEPS, "save_at": 4, "eval_every": 4, "more": 2,
            "save_on": {"mesh.data": 4}, "resume_on": {"mesh.data": 1, "mesh.fsdp": 4}}
    main, other = two_processes("resume", spec)
    assert other["metrics"] is None and main["checkpoints"] == ["4"] and main["best"] == ["4"]
    assert [m["step"] for m in main["metrics"] if "loss" in m] == list(range(1, 7))
    assert_losses_match([m["loss"] for m in main["metrics"] if "loss" in m], one_device["losses"])
    assert main["resumed_specs"] == other["resumed_specs"]
    assert all("'fsdp'" in spec for spec in main["resumed_specs"])


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    """benchmarks/gpu.py --smoke: bfloat16 training steps and the fused-vs-reference check run (CPU, XLA)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, script, "--smoke", "--implementations", "reference,fused", "--json",
                          str(tmp_path / "gpu.json")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["implementation"], r["dtype"]) for r in report["throughput"]] == [
        ("reference", "bfloat16"), ("fused", "bfloat16"), ("reference", "float32")]
    assert all(r["ok"] for r in report["check"]) and all(r["tokens_per_s"] > 0 for r in report["throughput"])
