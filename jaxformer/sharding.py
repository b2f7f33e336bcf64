"""Device mesh, shardings and multi-host helpers, on JAX's own machinery (`jax.sharding`, `jax.distributed`).

Axes of the mesh (config section `mesh`; one size may be -1 = the devices left over):

  data    splits the batch; parameters replicated.
  fsdp    splits the batch too, and every parameter and optimizer-state array along its largest dimension
          that the axis size divides (replicated where none does); the step all-gathers the weights and the
          gradients are reduced back onto the shards (Rajbhandari et al., 2020, ZeRO; Zhao et al., 2023).
  tensor  splits matrices Megatron-style (Shoeybi et al., 2019): column-parallel kernels (qkv, fc) on their
          output dimension, row-parallel ones (attention out, mlp proj) on their input dimension, the token
          table on the vocabulary. The batch is not split over it.

A mesh of `data x fsdp x tensor` devices sees `batch_size / (data * fsdp)` examples per device. One device is
a 1x1x1 mesh: the same code path, nothing to switch on. Everything is a sharding annotation on jitted
functions; XLA's partitioner inserts the collectives, so every mesh computes the function one device does.

Several processes (hosts): `maybe_initialize_distributed` calls `jax.distributed.initialize()`; every process
builds the same global batch (batches are pure functions of (seed, step)) and `shard_batch` copies to each
process's devices only the rows they hold.
"""

from __future__ import annotations

import hashlib
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Kernels whose input dimension the tensor axis splits (their partial outputs are summed); every other matrix
# is split on its output (last) dimension, the token table on its vocabulary (first) dimension.
ROW_PARALLEL = ("out", "proj")

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------- processes

def detected_launcher() -> str | None:
    """The launcher that started this job as several processes, or None.

    Only multi-process launches count: a one-task Slurm step or a single `mpirun -n 1` needs no coordinator,
    and calling `jax.distributed.initialize()` there would only wait for peers that never come.
    """
    env = os.environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS") and count("JAX_NUM_PROCESSES") > 1:
        return "JAX_COORDINATOR_ADDRESS"
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(name in env for name in slurm) and count("SLURM_NTASKS") > 1:
        return "Slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "TPU pod"
    return None


def maybe_initialize_distributed(multihost: bool) -> bool:
    """Calls `jax.distributed.initialize()` when asked (`mesh.multihost`, `--multihost`) or when a
    multi-process launch is detected; returns whether this is a multi-process run. Must run before anything
    touches a device.

    The arguments come from JAX's own cluster detection (Slurm, Open MPI, Cloud TPU, Kubernetes); a launch by
    hand sets JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process.
    """
    if jax.distributed.is_initialized():
        return True
    launcher = detected_launcher()
    if not multihost and launcher is None:
        return False
    kwargs = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            kwargs[key] = int(os.environ[name])
    log.info("initialising jax.distributed (%s)", f"detected {launcher}" if launcher else "requested")
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # JAX found no cluster to take the coordinator, count and id from
        reason = str(e).rstrip(".")
        raise ValueError(f"mesh.multihost=true, but {reason}: launch through Slurm, Open MPI or a TPU pod, "
                         "or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; on one "
                         "process, --config.mesh.multihost=false") from e
    log.info("process %d of %d; %d local of %d devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    if not is_main_process():  # the run logs once; other processes still show warnings and errors
        logging.getLogger("jaxformer").setLevel(logging.WARNING)
    return True


def is_main_process() -> bool:
    """Process 0 writes the run directory's files (config, metrics, plots); checkpoints need every process."""
    return jax.process_index() == 0


def assert_same_on_all_processes(value: str, what: str) -> None:
    """Raises on every process unless all of them hold the same `value` (e.g. the run directory)."""
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint8).astype(np.int32)
    multihost_utils.assert_equal(digest, f"{what} differs between processes; give them all the same one")


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: call it at one step everywhere)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def broadcast_from_main(value: bool) -> bool:
    """Process 0's `value` on every process (also a barrier)."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))


def to_host(tree):
    """Whole NumPy copies of (possibly sharded) global arrays on every process (a collective, multi-host)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


# ------------------------------------------------------------------------------------------------------- mesh

def mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
    """{"data": ..., "fsdp": ..., "tensor": ...}: the configured sizes, a -1 replaced by the devices left."""
    sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in AXES}
    given = ", ".join(f"mesh.{axis}={size}" for axis, size in sizes.items())
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"{given}; sizes must be positive, with at most one -1 (= the devices left over)")
    known = int(np.prod([size for size in sizes.values() if size != -1]))
    if free:
        if n_devices % known:
            raise ValueError(f"{given}; the {n_devices} devices do not split into a multiple of {known}")
        sizes[free[0]] = n_devices // known
    if int(np.prod(list(sizes.values()))) != n_devices:
        raise ValueError(f"{given}; their product must equal the {n_devices} devices (or set one to -1)")
    return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The `data x fsdp x tensor` mesh over the devices of all processes, in the hardware's own order."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: shardings are annotations and XLA propagates them (not the sharding-in-types Explicit mode).
    return jax.make_mesh(tuple(shape.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def describe(mesh: Mesh) -> str:
    """e.g. "mesh data=2 x fsdp=4 x tensor=1 over 8 devices in 1 process(es)"."""
    axes = " x ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
    return f"mesh {axes} over {mesh.devices.size} devices in {jax.process_count()} process(es)"


def batch_sharding(mesh: Mesh, *, leading_axes: int = 0) -> NamedSharding:
    """Splits the batch axis over data x fsdp (after `leading_axes` unsplit ones, e.g. accumulation)."""
    return NamedSharding(mesh, P(*([None] * leading_axes), BATCH_AXES))


def shard_batch(batch: dict, sharding: NamedSharding) -> dict:
    """A global batch (the same NumPy arrays on every process) as global `jax.Array`s.

    Each process copies to its own devices only the slices they hold: `jax.make_array_from_callback` asks for
    exactly those, whatever the mesh's device order, so no process needs to know which rows are its own.
    """
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------- parameters

def tensor_dim(path: str, shape: tuple[int, ...]) -> int | None:
    """The dimension the `tensor` axis splits for the array at `path` (a jax keystr), or None (vectors)."""
    if len(shape) < 2:
        return None
    if path.endswith("['embedding']"):
        return 0
    if any(f"['{name}']['kernel']" in path for name in ROW_PARALLEL):
        return 0
    return len(shape) - 1


def param_spec(shape: tuple[int, ...], *, fsdp: int = 1, tensor: int = 1,
               tensor_axis: int | None = None) -> P:
    """`tensor` on `tensor_axis` when it divides it; then `fsdp` on the largest other dimension it divides.

    An axis that divides nothing leaves the array replicated over it (a 32-vector on fsdp=64, a 65-row table).
    """
    spec = [None] * len(shape)
    if tensor > 1 and tensor_axis is not None and shape[tensor_axis] % tensor == 0:
        spec[tensor_axis] = "tensor"
    if fsdp > 1:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if spec[axis] is None and shape[axis] >= fsdp and shape[axis] % fsdp == 0:
                spec[axis] = "fsdp"
                break
    return P(*spec)


def _specs(tree, mesh: Mesh):
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]

    def spec(path, x):
        shape = tuple(x.shape)
        axis = tensor_dim(jax.tree_util.keystr(path), shape)
        return param_spec(shape, fsdp=fsdp, tensor=tensor, tensor_axis=axis)

    return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(tree, mesh: Mesh):
    """Shardings for a pytree of arrays (or ShapeDtypeStructs): parameters and optimizer state alike.

    An optimizer-state array (Adam's mu, nu) has its parameter's path as a suffix and its shape, so it is
    split the same way and the update stays elementwise, with no resharding.
    """
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), _specs(tree, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def compute_shardings(tree, mesh: Mesh):
    """Where a step computes with each parameter: gathered over `fsdp` (still split over `tensor`).

    Constraining the parameters to this inside the step is the FSDP recipe: XLA all-gathers the weights for
    the forward and backward, and the gradients go back to the stored (sharded) layout. Left to itself, the
    partitioner may instead split activations along a weight's fsdp dimension and reshard them around every
    reshape (it warns "Involuntary full rematerialization").
    """
    gathered = lambda spec: P(*[None if name == "fsdp" else name for name in spec])
    return jax.tree.map(lambda spec: NamedSharding(mesh, gathered(spec)), _specs(tree, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def replicated_names(tree, mesh: Mesh, axis: str = "fsdp") -> list[str]:
    """Paths of the arrays (not scalars) that `axis` leaves replicated, dividing none of their dimensions."""
    if mesh.shape[axis] == 1:
        return []
    specs = jax.tree.leaves(_specs(tree, mesh), is_leaf=lambda x: isinstance(x, P))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) for (path, x), spec in zip(flat, specs, strict=True)
            if x.ndim and axis not in spec]

