"""A tiny BERT (configs/bert_tiny.py) under every positional encoding that has a bidirectional form, 3 seeds:
masked-LM loss and accuracy on the validation text (`jaxformer sweep --config sweeps.bert_positional`). NoPE and xPos
have no encoder form (config.validate says why) and are left out; T5 runs with its bidirectional buckets.
"""

import ml_collections

VARIANTS = ("learned", "sinusoidal", "rope", "alibi", "t5", "kerple", "fire")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "bert_tiny"
    c.overrides = ("--config.train.steps=1000", "--config.train.progress=False", "--config.train.eval_every=500")
    c.overrides_by_variant = {name: () for name in VARIANTS}
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"name": VARIANTS}}
    c.axes.train = {"seed": (0, 1, 2)}
    c.eval_lengths = (1,)
    c.eval_tokens = 0
    c.eval_batch_tokens = 8192
    c.eval_split = "val"
    c.statistics = True
    c.reference = "learned"
    return c
