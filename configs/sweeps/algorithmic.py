"""Algorithmic length generalization (issue 24, 5b): every positional encoding, and randomized RoPE, ALiBi and
sinusoidal positions (Ruoss et al. 2023), on four of the literature's tasks, with their protocol.

Each model trains on task sizes n = 1..16 and is evaluated at every n = 1..48 (exact match and token accuracy per
size, the mean over the OOD sizes 17..48; `eval_sizes`). Tasks: reverse_string, duplicate_string and bucket_sort
(Delétang et al. 2023 as Ruoss et al. 2023 use them) and addition in Kazemnejad et al. 2023's decoder-only format
(data/algorithmic.py). Randomized positions draw from [0, 256), which covers the longest eval row (duplicate_string
at n = 48: 145 tokens); the plain learned table has 64 rows, so its sizes past 64 tokens are n/a.
12 variants x 4 tasks x 3 seeds = 144 runs; sizing in experiments/algorithmic_length_generalization/README.md:

    jaxformer sweep --config sweeps.algorithmic

The papers' precondition is a model at >= 99% exact match on the training sizes: the report's `reached` column.
"""

import ml_collections

from jaxformer import positional

RANDOMIZED = 256  # model.position.randomize_max_len of the randomized variants (>= the longest eval row, 145)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "default"  # 2 layers, 4 heads
    c.overrides = (
        "--config.model.n_embd=64",  # 2L/4H/64D: 144 runs in about two hours of a quiet 2-core CPU
        "--config.data.block_size=64",  # holds every task at n = 16 (addition: 51 tokens)
        "--config.data.synthetic.min_items=1",  # train on every size 1..16, as the papers do
        "--config.data.synthetic.max_items=16",
        "--config.data.batch_size=32",
        "--config.train.steps=1000",
        "--config.optim.lr=1e-3",
        "--config.optim.min_lr=1e-4",
        "--config.train.eval_every=500",
        "--config.train.checkpoint_every=500",
        "--config.train.log_every=50",
        "--config.train.sample_chars=0",
    )
    c.variants = ml_collections.ConfigDict({
        **{name: (f"--config.model.position.name={name}",) for name in positional.list_positional_encodings()},
        **{f"{name}_randomized": (f"--config.model.position.name={name}",
                                  f"--config.model.position.randomize_max_len={RANDOMIZED}")
           for name in ("rope", "alibi", "sinusoidal")},
    })
    c.axes = ml_collections.ConfigDict()
    c.axes.data = {"name": ("synthetic/reverse_string", "synthetic/duplicate_string", "synthetic/bucket_sort",
                            "synthetic/addition")}
    c.axes.train = {"seed": (0, 1, 2)}
    c.eval_lengths = (1,)  # the loss at the training length; the protocol's numbers are eval_sizes'
    c.eval_tokens = 4096
    c.eval_batch_tokens = 8192
    c.eval_split = "val"
    c.eval_sizes = (1, 48)  # every task size: 1..16 in distribution, 17..48 out of it
    c.eval_size_examples = 64  # examples per size
    return c
