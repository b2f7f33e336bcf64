"""nanoGPT's "baby" shakespeare-char run for a CPU (its README's CPU command).

nanoGPT: `python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0` -> val loss 1.88 (1.886 measured on a 2-core CPU).
"""

from jaxformer.configs import shakespeare_char


def get_config():
    c = shakespeare_char.get_config()
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 128
    c.model.dropout = 0.0
    c.data.block_size = 64
    c.data.batch_size = 12
    c.train.steps = 2000
    c.train.eval_iters = 20
    c.train.log_every = 10
    c.train.checkpoint_every = 500
    c.train.sample_chars = 500
    return c
