"""FIRE with the paper's threshold init_L=512 on the comparison's setup (issue 22): the control for the fair default
init_L = L = 64 that the comparison uses. Seeds 0-4, FIRE's chosen learning rate (1.2e-2), everything else as
sweeps.positional; paired per seed with the comparison's FIRE runs by

    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/fire_init_L \\
        --with experiments/pe_extrapolation/shakespeare

    jaxformer sweep --config experiments/pe_extrapolation/fire_init_L/sweep_config.py \\
        --workdir experiments/pe_extrapolation/fire_init_L
"""

from jaxformer.configs.sweeps import positional


def get_config():
    c = positional.get_config()
    c.overrides = (*c.overrides, "--config.model.position.name=fire", "--config.optim.lr=0.012")
    c.overrides_by_variant = {}
    c.axes.model = {}
    c.variants = {"fire_init_L_512": ("--config.model.position.fire.init_L=512",)}
    c.reference = "fire_init_L_512"  # one variant: intervals of its means; the pairs come from paired.py --with
    return c
