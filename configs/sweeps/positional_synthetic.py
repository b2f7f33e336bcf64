"""Positional encodings on a synthetic task, where their differences are sharpest: copying at 1x-8x the training length.

Every registered variant x 2 seeds learns to copy (`s1 .. sn | -> s1 .. sn`, data/synthetic.py) prompts of
n = 1..16 symbols (all that fit 32 tokens), and is evaluated on copies that fill 1x, 2x, 4x and 8x that length
(n = 16, 32, 64, 128): every answer token past position 32 is at a position, and a distance to its source, the model
never saw.
The same number of answer tokens at every length; the report adds exact-match accuracy (the whole copy right).

    jaxformer sweep --config sweeps.positional_synthetic
"""

import ml_collections

from jaxformer import positional


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "default"  # the embedded default (2 layers, 4 heads), no download
    c.overrides = (
        "--config.data.name=synthetic/copy",
        "--config.data.block_size=32",
        "--config.data.synthetic.min_items=1",  # copies of 1..16 symbols in training (not only the longest that fits)
        "--config.data.synthetic.max_items=0",  # 0 = as many as fit the block: 16
        "--config.model.n_embd=64",
        "--config.train.steps=1500",  # 500 steps leave every variant short of copying 16 symbols
        "--config.train.eval_every=500",
        "--config.train.checkpoint_every=500",
        "--config.train.sample_chars=0",
    )
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"name": tuple(positional.list_positional_encodings())}}  # all registered variants
    c.axes.train = {"seed": (0, 1)}
    c.eval_lengths = (1, 2, 4, 8)  # multiples of data.block_size
    c.eval_tokens = 8192  # answer tokens per eval length (512 copies of 16 at 1x, 64 copies of 128 at 8x)
    c.eval_batch_tokens = 8192  # tokens per forward batch
    c.eval_split = "val"
    c.eval_stride = 16  # the sliding-window baseline advances by half its window (data.block_size)
    return c
