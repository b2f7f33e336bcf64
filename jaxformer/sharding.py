"""Device mesh and shardings, on JAX's own machinery (`jax.sharding`, `jax.distributed`).

Axes: `data` (batch split, parameters replicated) and `fsdp` (batch split too, and every parameter and optimizer-state
array split along its largest dimension that the axis size divides; replicated where none does). The batch is split
over both axes together, so a mesh of `data x fsdp` devices sees `batch_size / (data * fsdp)` examples per device.
Single-device runs use a 1x1 mesh: the same code path, nothing to switch on.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(multihost: bool) -> None:
    """Calls `jax.distributed.initialize()` when asked, or when a cluster environment is detected."""
    detected = [name for name in _MULTIHOST_ENV if os.environ.get(name)]
    if not multihost and not detected:
        return
    if jax.distributed.is_initialized():
        return
    log.info("initialising jax.distributed (%s)", "requested" if multihost else f"detected {', '.join(detected)}")
    jax.distributed.initialize()


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int]:
    fsdp = mesh_cfg.fsdp
    data = n_devices // fsdp if mesh_cfg.data == -1 else mesh_cfg.data
    if data * fsdp != n_devices:
        raise ValueError(f"mesh.data={mesh_cfg.data}, mesh.fsdp={fsdp}; their product must equal the {n_devices} devices")
    return data, fsdp


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh, *, leading_axes: int = 0) -> NamedSharding:
    """Splits the batch axis (after `leading_axes` unsplit ones, e.g. gradient-accumulation steps)."""
    return NamedSharding(mesh, P(*([None] * leading_axes), BATCH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shards the largest dimension that `fsdp` divides; replicated when none does (or fsdp == 1)."""
    if fsdp == 1:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0 and shape[axis] >= fsdp:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh):
    """FSDP shardings for a pytree of arrays (or ShapeDtypeStructs): parameters and optimizer state alike."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), tree)


def replicated_names(tree, mesh: Mesh) -> list[str]:
    """Paths of the arrays that stay replicated under FSDP (nothing divides), for the log."""
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1:
        return []
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) for path, x in flat if x.ndim and param_spec(tuple(x.shape), fsdp) == P()]


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """A global jax.Array from the rows this process feeds (all of them on one host)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def process_slice(global_batch_size: int) -> slice:
    """The rows of the global batch that this process feeds."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)
