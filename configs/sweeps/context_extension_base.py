"""The models `sweeps.context_extension` extends: RoPE on tiny_shakespeare at block 64, 3 seeds.

nanoGPT's "baby" shakespeare-char CPU run (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 steps; val loss
1.87-1.93 over five seeds, experiments/nanogpt_shakespeare_char), with RoPE, evaluated at 1x-8x its training length.
Run by `sweeps.context_extension` into <its workdir>/base (or on its own:
`jaxformer sweep --config sweeps.context_extension_base`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "shakespeare_char_cpu"  # 4L/4H/128D, block 64, batch 12, 2000 steps
    c.overrides = (
        "--config.model.position.name=rope",
        "--config.train.eval_every=500",
        "--config.train.checkpoint_every=500",
        "--config.train.sample_chars=0",
    )
    c.axes = ml_collections.ConfigDict()
    c.axes.train = {"seed": (0, 1, 2)}
    c.eval_lengths = (1, 2, 4, 8)  # multiples of data.block_size: 64, 128, 256, 512
    c.eval_tokens = 16384  # predicted tokens per eval length (256 windows at 64, 32 at 512)
    c.eval_batch_tokens = 8192  # tokens per forward batch
    c.eval_split = "val"  # nanoGPT's validation text (the last 10%)
    return c
