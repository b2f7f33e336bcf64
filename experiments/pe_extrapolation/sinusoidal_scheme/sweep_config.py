"""Sinusoidal's amplitude schemes at the comparison's model size (issue 22): the table matched to the token
embeddings (scale 0.0283, embeddings as they are) against Vaswani et al.'s sqrt(D) embeddings with the unit table,
and the two other combinations; seeds 0 and 1, 2,000 steps at 3e-3, scored on the whole validation split at 1x.

    jaxformer sweep --config experiments/pe_extrapolation/sinusoidal_scheme/sweep_config.py \\
        --workdir experiments/pe_extrapolation/sinusoidal_scheme
"""

from jaxformer.configs.sweeps import positional


def get_config():
    c = positional.get_config()
    # scheme=matched: no factor of the variant's own on the embeddings, so embed_multiplier alone sets it (these runs
    # were made before the sqrt_d scheme became sinusoidal's default; their configs read scheme=matched)
    c.overrides = (*c.overrides, "--config.train.steps=2000", "--config.model.position.name=sinusoidal",
                   "--config.model.position.sinusoidal.scheme=matched")
    c.overrides_by_variant = {}
    c.axes.model = {"embed_multiplier": (1.0, 0.0),  # 0 = sqrt(n_embd) = 8
                    "position": {"sinusoidal": {"scale": (0.0, 1.0)}}}  # 0 = matched (0.0283), 1 = unit table
    c.axes.train = {"seed": (0, 1)}
    c.eval_lengths = (1,)
    c.statistics = False
    return c
