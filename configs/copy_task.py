"""Positional encodings side by side in about half a minute each: copying n = 1..16 symbols at block 32.

    jaxformer train --config copy_task --config.model.position.name=alibi

The config of every run in experiments/pe_extrapolation/copy (`sweeps.positional_synthetic` is this config x every
variant x 2 seeds, with fewer evaluations; sinusoidal, T5, xPos and FIRE ran with the defaults of before issue 22,
see the README), so that folder's numbers are what each variant should give:
`jaxformer runs experiments/pe_extrapolation/copy` lists them. At the training length the variants separate cleanly
(val loss 0.03 for RoPE to 2.7, chance, for sinusoidal); `jaxformer sweep --config sweeps.positional_synthetic`
adds the evaluation at 2x-8x the length.
"""

from jaxformer.configs import default


def get_config():
    c = default.get_config()
    c.data.name = "synthetic/copy"
    c.data.block_size = 32
    c.data.synthetic.min_items = 1  # copies of 1..16 symbols: a model cannot just repeat the token 17 back
    c.data.synthetic.max_items = 0  # 0 = as many as fit the block: 16
    c.model.n_embd = 64
    c.train.steps = 1500  # 500 steps leave every variant short of copying 16 symbols
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
