"""Which positional encoding, and how does it behave past the training length? (issue 6; experiments/pe_extrapolation)

Every registered variant x 2 seeds, a small character-level GPT on tiny_shakespeare trained at block 64, each model
evaluated on the validation text at 1x, 2x, 4x and 8x the training length with the same number of predicted tokens
at every length. Sized for about 15 minutes for all 18 points on a quiet 2-core CPU (59 min on one shared with other
jobs; results in experiments/pe_extrapolation):

    jaxformer sweep --config sweeps.positional --config.data.manual_dir=/path/to/tinyshakespeare

The learned table keeps `data.block_size` positions (its default), so it is n/a beyond 1x: that is the point.
"""

import ml_collections

from jaxformer import positional


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "shakespeare_char_cpu"  # nanoGPT's baby shakespeare-char CPU run (4L/4H/128D, block 64, batch 12)
    c.overrides = (  # applied to the base for every point: smaller and shorter, to fit 18 runs on a CPU
        "--config.model.n_layer=2",
        "--config.data.block_size=64",
        "--config.data.batch_size=16",
        "--config.train.steps=800",
        "--config.optim.lr=2e-3",
        "--config.optim.min_lr=2e-4",
        "--config.optim.warmup_steps=50",
        "--config.train.eval_every=400",
        "--config.train.eval_iters=20",
        "--config.train.log_every=50",
        "--config.train.checkpoint_every=400",
        "--config.train.sample_chars=0",
    )
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"name": tuple(positional.list_positional_encodings())}}  # all registered variants
    c.axes.train = {"seed": (0, 1)}
    c.eval_lengths = (1, 2, 4, 8)  # multiples of data.block_size
    c.eval_tokens = 16384  # predicted tokens per eval length (= 256 windows at 1x, 32 at 8x)
    c.eval_batch_tokens = 8192  # tokens per forward batch (bounds memory at the longest length)
    c.eval_split = "val"  # nanoGPT's validation text (the last 10%)
    return c
