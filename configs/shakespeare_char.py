"""nanoGPT's `config/train_shakespeare_char.py` (the GPU run: val loss 1.4697 after 5000 iterations on an A100).

A character-level GPT on tiny_shakespeare with a learned absolute position table, as nanoGPT has. The validation text
is nanoGPT's last 10% (TFDS validation + test).
"""

from jaxformer.configs import default


def get_config():
    c = default.get_config()
    c.model.n_layer = 6
    c.model.n_head = 6
    c.model.n_embd = 384
    c.model.dropout = 0.2
    c.model.bias = False
    c.model.position.name = "learned"

    c.data.name = "tiny_shakespeare"
    c.data.val_split = "validation+test"  # nanoGPT's val.bin is the last 10% of input.txt
    c.data.block_size = 256
    c.data.batch_size = 64

    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 100
    c.optim.decay_steps = 0  # = train.steps (nanoGPT: lr_decay_iters = max_iters)
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.99
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0

    c.train.steps = 5000
    c.train.eval_every = 250
    c.train.eval_iters = 200
    c.train.log_every = 10
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.sample_chars = 500
    return c
