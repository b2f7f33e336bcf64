"""What a finished run leaves beside its checkpoints: `samples.txt` (text sampled from the model, or its answers to
validation prompts for a synthetic task) and `plots/loss.png` (the loss curves), as end-of-run `train.Hook`s.

The training loop knows neither: `jaxformer train` and sweeps register `hooks(workdir)` with `train.train(hooks=...)`
beside the attention diagnostics (`analysis.diagnostics.training_hooks`); `train.train` called with no hooks
writes neither file.
"""

from __future__ import annotations

import os

from flax import nnx

from jaxformer import plots
from jaxformer import run as run_lib
from jaxformer import sample as sample_lib
from jaxformer import train as train_lib


def write_samples(workdir: str, trainer, params) -> None:
    """samples.txt: `train.sample_chars` tokens sampled from the trained model (nothing when 0)."""
    cfg = trainer.cfg
    if cfg.train.sample_chars <= 0:
        return
    model = nnx.merge(trainer.graphdef, params)
    text = sample_lib.sample_for_run(model, trainer.dataset, cfg, num_tokens=cfg.train.sample_chars)
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
        f.write(text)


def write_loss_plot(workdir: str, trainer) -> None:
    """plots/loss.png: the run's loss curves from its metrics.jsonl."""
    cfg = trainer.cfg
    plots.loss_curve(run_lib.read_metrics(workdir), os.path.join(workdir, "plots", "loss.png"),
                     title=f"{cfg.data.name} / {cfg.model.position.name}")


def hooks(workdir: str) -> list[train_lib.Hook]:
    """The end-of-run hooks of a run in `workdir`: its samples, then its loss plot (once, after a run that reached
    `train.steps`, with its final checkpoint saved)."""
    return [train_lib.Hook(0, lambda trainer, params, step: write_samples(workdir, trainer, params), at_end=True),
            train_lib.Hook(0, lambda trainer, params, step: write_loss_plot(workdir, trainer), at_end=True)]
