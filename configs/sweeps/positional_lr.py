"""The learning-rate selection of sweeps.positional: every variant at 3 learning rates, seed 0, scored at 1x.

Each variant's best (lowest whole-validation-split loss at the training length) is its learning rate in the main
sweep; these seed-0 runs are then that sweep's seed-0 runs (experiments/pe_extrapolation/select_lr.py copies them).

    jaxformer sweep --config sweeps.positional_lr --config.data.manual_dir=/path/to/tinyshakespeare
"""

import ml_collections
from jaxformer.configs.sweeps import positional


def get_config() -> ml_collections.ConfigDict:
    c = positional.get_config()
    # Factors of 2 from the pilot's 3e-3 upward: a first grid (1.5e-3, 3e-3, 6e-3) had ALiBi best at its top
    # (1.798, 1.763, 1.725 at 1x), so the grid moved up one step before the other variants ran.
    c.axes.optim = {"lr": (3e-3, 6e-3, 1.2e-2)}
    c.axes.train = {"seed": (0,)}
    c.eval_lengths = (1,)  # the selection looks at the training length only
    c.statistics = False  # one seed
    c.overrides_by_variant = {}
    return c
