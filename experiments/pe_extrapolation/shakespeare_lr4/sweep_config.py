"""sweeps.positional with each variant's learning rate the best of 4 on seed 0 (written by
select_edge.py from shakespeare_lr_edge/lr_choice.json: the 3 rates of shakespeare_lr and the 2.4e-2 edge point).
A supplementary comparison beside the main one (shakespeare/, best of the 3 planned rates)."""

from jaxformer.configs.sweeps import positional

LR = {
    'alibi': 0.006,
    'fire': 0.024,
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
    return c
