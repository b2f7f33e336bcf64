"""The smallest sweep, for the tests: 2 variants (learned, alibi) x 1 seed on associative recall, 20 steps, evaluated
at 1x and 2x the block size (learned is n/a at 2x: its table has block_size positions)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "tiny"  # configs/tiny.py
    c.overrides = ("--config.data.name=synthetic/associative_recall",  # one answer token per example
                   "--config.train.steps=20", "--config.train.eval_every=20", "--config.train.checkpoint_every=10",
                   "--config.train.log_every=5", "--config.train.sample_chars=0", "--config.train.progress=False")
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"name": ("learned", "alibi")}}
    c.axes.train = {"seed": (0,)}
    c.eval_lengths = (1, 2)  # multiples of data.block_size
    c.eval_tokens = 256  # predicted tokens per eval length
    c.eval_batch_tokens = 256  # tokens per forward batch
    c.eval_split = "val"
    c.eval_stride = 16  # sliding-window baseline: half the window (data.block_size 32)
    c.statistics = False  # one seed
    c.reference = "alibi"  # the variant paired differences are taken against (with statistics)
    return c
