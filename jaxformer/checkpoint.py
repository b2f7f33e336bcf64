"""Checkpoints with orbax: `checkpoints/latest/` (every N steps, keep-last-k) and `checkpoints/best/` (lowest val loss).

orbax writes each step into a temporary directory and renames it when complete, so a process killed at any moment
leaves the previous complete checkpoint loadable. A checkpoint holds the whole train state pytree (params, optimizer
state, step, RNG key data, non-finite counters); the data sampler needs only the step, since batch s is a pure
function of (seed, s). Restoring takes an abstract target with shardings, so a state saved on one mesh restores onto
another.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, workdir: str, *, keep: int):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        # With several processes, each manager synchronises them through barriers named after the step; two
        # managers saving the same step at once must name theirs apart, or the processes cross barriers.
        apart = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 multiprocessing_options=apart("latest")))
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min",
                                                 create=True, multiprocessing_options=apart("best")))

    def save(self, step: int, state, *, val_loss: float | None = None) -> None:
        """Every process must call this (with the same arguments): each writes its devices' shards."""
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
        if val_loss is not None and step not in self.best.all_steps():
            self.best.save(step, args=ocp.args.StandardSave(state), metrics={"val_loss": float(val_loss)}, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state, *, which: str = "latest", step: int | None = None):
        """Restores onto `abstract_state` (ShapeDtypeStructs with shardings; None = as saved, on the default
        device); returns (step, state)."""
        manager = self.latest if which == "latest" else self.best
        if step is None:
            step = manager.latest_step() if which == "latest" else manager.best_step()
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint under {manager.directory}")
        args = ocp.args.StandardRestore() if abstract_state is None else ocp.args.StandardRestore(abstract_state)
        return step, manager.restore(step, args=args)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract_like(state, shardings=None):
    """ShapeDtypeStructs (with shardings) for a state pytree, the restore target."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
