"""sweeps.positional with each variant's learning rate chosen on seed 0 (written by select_lr.py
from shakespeare_lr/lr_choice.json: the lowest whole-validation-split loss at 1x of 3 learning rates)."""

from jaxformer.configs.sweeps import positional

LR = {
    'alibi': 0.006,
    'fire': 0.012,
    'kerple': 0.012,
    'learned': 0.012,
    'none': 0.012,
    'rope': 0.012,
    'sinusoidal': 0.006,
    't5': 0.012,
    'xpos': 0.012,
}


def get_config():
    c = positional.get_config()
    c.overrides_by_variant = {name: (f"--config.optim.lr={lr}",) for name, lr in LR.items()}
    c.selection_seeds = (0,)  # the learning rates were chosen on seed 0 (select_lr.py): not a comparison seed
    return c
