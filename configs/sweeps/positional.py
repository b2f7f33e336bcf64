"""Which positional encoding, and how does it behave past the training length? (issues 6 and 22)

Every registered variant x 5 seeds, a small character-level GPT (2 layers, 4 heads, width 64) on tiny_shakespeare
trained at block 64 with each variant's fair defaults (positional.py; docs/positional.md), each at its own learning
rate (the best of 3 on seed 0: sweeps.positional_lr, then `overrides_by_variant`). Every model is evaluated on the
whole validation split at 1x, 2x, 4x and 8x the training length, with the full context and with a sliding window of
the training length over the same tokens; the report gives 95% t intervals over seeds and paired differences
against RoPE. The experiment's own command, with the learning rates it chose, is in
experiments/pe_extrapolation/README.md:

    jaxformer sweep --config sweeps.positional --config.data.manual_dir=/path/to/tinyshakespeare

The learned table keeps `data.block_size` positions (its default), so its full-context loss is n/a beyond 1x: its
sliding-window row is the fair alternative.
"""

import ml_collections

from jaxformer import positional

VARIANTS = tuple(positional.list_positional_encodings())

# Shared by this sweep and sweeps.positional_lr (the learning-rate selection), so their runs are the same runs.
OVERRIDES = (  # applied to the base for every point: small enough for 63 runs on a 2-core CPU
    "--config.model.n_layer=2",
    "--config.model.n_embd=64",  # head width 16; ~0.11M parameters
    "--config.data.block_size=64",
    "--config.data.batch_size=16",
    "--config.data.val_split=validation+test",  # nanoGPT's last 10% (111,540 characters)
    "--config.train.steps=5000",  # see the README for how flat the val loss is by then
    "--config.optim.lr=3e-3",  # replaced per variant by overrides_by_variant
    "--config.optim.min_lr=1e-4",  # below every learning rate tried
    "--config.optim.warmup_steps=100",
    "--config.train.eval_every=250",
    "--config.train.eval_iters=20",
    "--config.train.log_every=50",
    "--config.train.checkpoint_every=1000",
    "--config.train.sample_chars=0",
    "--config.train.progress=False",
)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "shakespeare_char_cpu"  # nanoGPT's baby shakespeare-char CPU run (4L/4H/128D, block 64, batch 12)
    c.overrides = OVERRIDES
    c.overrides_by_variant = {name: () for name in VARIANTS}  # per-variant overrides, e.g. its learning rate
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"name": VARIANTS}}  # all registered variants
    c.axes.train = {"seed": (0, 1, 2, 3, 4)}
    c.eval_lengths = (1, 2, 4, 8)  # multiples of data.block_size
    c.eval_tokens = 0  # 0 = the whole validation split, the same tokens at every length
    c.eval_batch_tokens = 8192  # tokens per forward batch (bounds memory at the longest length)
    c.eval_split = "val"
    c.eval_stride = 32  # the sliding-window baseline advances by half its window (data.block_size)
    c.statistics = True  # t intervals over seeds, paired differences against the reference
    c.reference = "rope"
    return c
