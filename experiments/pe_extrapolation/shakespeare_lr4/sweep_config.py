"""The variants whose best learning rate moved to the grid's edge, at it (written by
select_edge.py from shakespeare_lr_edge/lr_choice.json: the best of the 3 rates of shakespeare_lr and the 2.4e-2 edge
point, on seed 0). sweeps.positional narrowed to them, 5 seeds, the same point names as the main comparison
(shakespeare/); the other variants' best rate is the main comparison's, so "every variant at its best of 4 rates" is

    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/shakespeare_lr4 \\
        --with experiments/pe_extrapolation/shakespeare --replace
"""

from jaxformer.configs.sweeps import positional

LR = {
    'fire': 0.024,
}


def get_config():
    c = positional.get_config()
    c.axes.model = {"position": {"name": tuple(LR)}}
    c.overrides_by_variant = {name: (f"--config.optim.lr={lr}",) for name, lr in LR.items()}
    c.reference = next(iter(LR))  # rope is not re-run here: its pairs come from paired.py --with
    c.selection_seeds = (0,)  # the learning rates were chosen on seed 0 (select_lr.py): not a comparison seed
    return c
