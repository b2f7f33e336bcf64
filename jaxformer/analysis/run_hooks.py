"""The hooks every training run gets, in one list: `jaxformer train`, sweeps and `api.train` register
`for_run(cfg, workdir)` with `train.train(hooks=...)`, so a new research hook is added here once, not per caller.

The list: the attention diagnostics every `analysis.every` steps (`diagnostics.training_hooks`), then the end-of-run
samples.txt and plots/loss.png (`end_of_run.hooks`). The training loop knows none of them (docs/CONVENTIONS.md).
"""

from __future__ import annotations

import ml_collections

from jaxformer import train as train_lib
from jaxformer.analysis import diagnostics, end_of_run


def for_run(cfg: ml_collections.ConfigDict, workdir: str) -> list[train_lib.Hook]:
    """The hooks of a run of `cfg` in `workdir`: diagnostics at their steps, then samples and the loss plot."""
    return diagnostics.training_hooks(cfg) + end_of_run.hooks(workdir)
