"""The learning-rate grid's edge (issue 22): the 2.4e-2 point, seed 0, scored at 1x, for the seven variants whose
best selection rate was the top of the grid (1.2e-2). The same runs as sweeps.positional_lr (same base, overrides
and evaluation) at one more factor of 2; ALiBi and sinusoidal, best at 6e-3 inside the grid, are not re-run.

    jaxformer sweep --config experiments/pe_extrapolation/shakespeare_lr_edge/sweep_config.py \\
        --workdir experiments/pe_extrapolation/shakespeare_lr_edge
"""

from jaxformer.configs.sweeps import positional_lr

EDGE = ("fire", "kerple", "learned", "none", "rope", "t5", "xpos")  # best at 1.2e-2 in shakespeare_lr/lr_choice.json


def get_config():
    c = positional_lr.get_config()
    c.axes.model = {"position": {"name": EDGE}}
    c.axes.optim = {"lr": (2.4e-2,)}
    return c
