"""Runs sharded training jobs in a fresh process for tests/test_sharding.py; prints one line: RESULT <json>.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py meshes SPEC_JSON
    python tests/sharding_worker.py resume SPEC_JSON
    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python tests/sharding_worker.py ...

It is a separate process because the CPU device count (XLA_FLAGS) and `jax.distributed` must be set before JAX
starts. The jobs use configs/tiny.py with the overrides the test gives, through the real `Trainer` / `train`.
"""

from __future__ import annotations

import json
import os
import sys


def tiny(overrides: dict):
    from jaxformer import config as config_lib

    cfg = config_lib.load("tiny")
    cfg.train.progress = False
    for dotted, value in overrides.items():
        *sections, field = dotted.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        if dotted == "mesh.tensor" and "tensor" not in node:  # configs that predate the tensor axis
            with node.unlocked():
                node[field] = value
        else:
            node[field] = value
    return cfg


def run_steps(overrides: dict, steps: int, stop_after: int | None = None) -> dict:
    """The first `stop_after` (default: all) of `steps` optimizer steps through `Trainer`; the per-step
    losses and how the parameters are laid out."""
    import jax
    import numpy as np

    from jaxformer import sharding as sharding_lib
    from jaxformer import train as train_lib

    run = steps if stop_after is None else stop_after
    cfg = tiny({**overrides, "train.steps": steps, "train.log_every": run})
    trainer = train_lib.Trainer(cfg)
    state = trainer.initial_state()
    for step in range(run):
        state = trainer.train_step(state, trainer.batch(step))
    recent = jax.device_get(state["recent"])  # replicated: readable on every process
    order = np.argsort(recent["step"])
    params = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    adam = next(x for x in jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
                if hasattr(x, "mu"))
    adam_mu = jax.tree.leaves(adam.mu)
    return {
        "mesh": dict(trainer.mesh.shape),
        "process_count": jax.process_count(),
        "losses": [float(x) for x in recent["loss"][order]],
        "replicated": trainer.replicated_params,
        "params": {jax.tree_util.keystr(path): {
            "spec": str(x.sharding.spec), "shape": list(x.shape), "dtype": str(x.dtype),
            "shard_shape": list(x.addressable_shards[0].data.shape), "devices": len(x.sharding.device_set)}
            for path, x in params},
        "mu_specs_match": all(m.sharding.spec == p.sharding.spec
                              for (_, p), m in zip(params, adam_mu, strict=True)),
        "batch_spec": str(trainer.batch(0)["inputs"].sharding.spec),
        "describe": sharding_lib.describe(trainer.mesh),
    }


def meshes(spec: dict) -> dict:
    return {name: run_steps(overrides, spec["steps"], spec.get("stop_after"))
            for name, overrides in spec["jobs"].items()}


def resume(spec: dict) -> dict:
    """`train` on one mesh up to a checkpoint, then resumed from it on another mesh for a few steps."""
    import jax
    import numpy as np

    from jaxformer import run as run_lib
    from jaxformer import train as train_lib

    workdir = spec["workdir"]
    common = {"train.steps": spec["steps"], "train.log_every": 1, "train.checkpoint_every": spec["save_at"],
              "train.eval_every": spec.get("eval_every", spec["steps"]), "train.sample_chars": 0}
    first = train_lib.train(tiny({**common, **spec["save_on"]}), workdir, stop_after=spec["save_at"])
    saved = jax.device_get(first["params"]) if jax.process_count() == 1 else None
    second = train_lib.train(tiny({**common, **spec["resume_on"]}), workdir, resume=True,
                             stop_after=spec["save_at"] + spec["more"])
    out = {"metrics": run_lib.read_metrics(workdir) if jax.process_index() == 0 else None,
           "resumed_specs": sorted({str(x.sharding.spec) for x in jax.tree.leaves(second["params"])}),
           "mesh": dict(second["trainer"].mesh.shape),
           "checkpoints": sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))),
           "best": sorted(os.listdir(os.path.join(workdir, "checkpoints", "best")))}
    if saved is not None:
        # What was restored is the saved state bit for bit: recover it from the resumed run's checkpoint.
        _, _, restored, step = train_lib.restore_params(workdir, step=spec["save_at"])
        out["restored_step"] = step
        out["restored_equal"] = all(np.array_equal(a, np.asarray(b)) for a, b in
                                    zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True))
    return out


def main(argv: list[str]) -> int:
    import logging

    mode, spec = argv[0], json.loads(argv[1])
    logging.basicConfig(level=logging.WARNING)
    from jaxformer import sharding as sharding_lib

    sharding_lib.maybe_initialize_distributed(multihost=False)  # from JAX_* environment variables, if any
    result = {"meshes": meshes, "resume": resume}[mode](spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
