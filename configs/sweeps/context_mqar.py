"""Effective context on multi-query associative recall (issue 33, 2a): every positional encoding, and randomized RoPE,
ALiBi and sinusoidal positions (Ruoss et al. 2023), trained at L = 32 and queried at 1x-8x that length.

synthetic/mqar (Arora et al. 2023, Zoology's MQAR; data/retrieval.py): 4 key-value pairs with distinct keys, every key
asked once at the end; in training 1..16 filler tokens sit between the pairs before the filler (a fraction drawn
uniformly) and the rest. Evaluated at 32, 64, 128 and 256 tokens with depth 0, 0.25, 0.5, 0.75, 1 = the fraction of
the pairs placed before the filler: at a length past 32, exactly those queries need a value from more than 32 tokens
back (the report's "beyond L" token accuracy), the others stay within the window. 32 probes per (length, depth):
free-running greedy decoding (the queries given, the values predicted), teacher-forced, a sliding window of 32, and
the majority / repeat-previous baselines (effective_context.py, context.md).

    jaxformer sweep --config configs/sweeps/context_mqar.py --workdir experiments/effective_context/mqar

Statistics declared before the runs: one family (every encoding against RoPE and against its own sliding window),
Holm within it (the report also gives BH).
"""

import ml_collections

from jaxformer import positional

RANDOMIZED = 512  # randomize_max_len of the randomized variants (>= the longest eval row, 256)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "default"  # 2 layers, 4 heads
    c.overrides = (
        "--config.data.name=synthetic/mqar",
        "--config.data.synthetic.pairs=4",  # 4 key-value pairs (distinct keys), 17 tokens + filler
        "--config.data.synthetic.num_symbols=16",  # keys from a..p, values the digits
        "--config.data.synthetic.min_items=1",  # filler of 1..16 tokens: every total length up to 32
        "--config.data.synthetic.max_items=0",
        "--config.data.block_size=32",
        "--config.data.batch_size=32",
        "--config.model.n_embd=64",  # 2L/4H/64D
        "--config.train.steps=1500",
        "--config.optim.lr=3e-3",
        "--config.optim.min_lr=1e-4",
        "--config.train.eval_every=500",
        "--config.train.checkpoint_every=500",
        "--config.train.log_every=100",
        "--config.train.sample_chars=0",
    )
    c.variants = ml_collections.ConfigDict({
        **{name: (f"--config.model.position.name={name}",) for name in positional.list_positional_encodings()},
        **{f"{name}_randomized": (f"--config.model.position.name={name}",
                                  f"--config.model.position.randomize_max_len={RANDOMIZED}")
           for name in ("rope", "alibi", "sinusoidal")},
    })
    c.axes = ml_collections.ConfigDict()
    c.axes.train = {"seed": (0, 1, 2, 3, 4)}  # 3-4 added before they ran (README: "Seeds 3 and 4")
    c.eval_lengths = (1, 2, 4, 8)  # 32, 64, 128, 256 tokens
    c.eval_tokens = 640  # answer tokens per length for the loss table (results.md)
    c.eval_batch_tokens = 16384
    c.eval_split = "val"
    c.eval_stride = 16
    c.eval_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    c.eval_depth_examples = 32
    c.statistics = True
    c.reference = "rope"
    c.correction = "holm"
    # every encoding against RoPE (and against its own sliding window): one family of comparisons
    c.families = {"encodings": tuple(v for v in c.variants if v != "rope")}
    return c
