"""The default shrunk to run in seconds: what the tests and a first laptop try use (same code path as real runs)."""

from jaxformer.configs import default


def get_config():
    c = default.get_config()
    c.model.n_layer = 1
    c.model.n_head = 2
    c.model.n_embd = 32
    c.data.block_size = 32
    c.data.batch_size = 8
    c.data.synthetic.min_items = 0  # every copy as long as fits (n = 16), as the tests were written for
    c.train.steps = 30
    c.train.log_every = 5
    c.train.eval_every = 15
    c.train.eval_iters = 2
    c.train.checkpoint_every = 15
    c.train.sample_chars = 40
    c.optim.warmup_steps = 5
    return c
