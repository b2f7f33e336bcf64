"""A model's loss, paired with it by `model.loss`: what the model is shown and which tokens it must predict.

A language model's loss is always the weighted mean cross-entropy of `train.token_losses` over
`(inputs, targets, weights)`; an objective is the pure function that turns a data batch into those three:

| model.loss  | the model sees                           | it predicts                          | reference          |
|-------------|------------------------------------------|--------------------------------------|--------------------|
| `causal_lm` | tokens t_0..t_{T-1} (causal mask)        | t_{i+1} at every position (as given) | Radford et al. 2018 |
| `masked_lm` | the block with 15% of positions replaced | the original token at those only     | Devlin et al. 2019 |

Masked LM (BERT §3.1, "Task #1"): each position is selected with probability `rate` (0.15); a selected token is
replaced by [MASK] with probability `p_mask` (0.8), by a uniformly random token with `p_random` (0.1), and kept
otherwise; the loss is the cross-entropy at the selected positions only. The draws are a function of the key the
training step folds from (train.seed, step, micro-batch), so a resumed run masks exactly as an uninterrupted one.

The training loop, evaluation and sweeps ask `for_model(cfg.model)` for the objective and call its `prepare`; they
do not know which one they run (DESIGN: "a model is a (module, loss) pair", nanodo's `get_model_and_loss`). What
else differs between the pairs (what an accuracy means, whether the model continues a text, the ids the model has
beyond the data's) is the pair's `Family`, asked with `family(cfg.model)`: a new family adds a pair, not branches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

Batch = dict  # {"inputs": int32 [.., T], "targets": int32 [.., T], "weights": float32 [.., T]}

LOSSES = ("causal_lm", "masked_lm")


@dataclasses.dataclass(frozen=True)
class Family:
    """What a (model, loss) pair is, apart from its loss: the facts the CLI, evaluation and sampling ask of it.

    `model`: the module family (a causal GPT decoder, or a bidirectional encoder); `accuracy`: the name an
    evaluation's accuracy is reported under (`exact_match`: a task's whole answers; `masked_accuracy`: the share of
    masked tokens predicted right), `accuracy_label` how it is printed, `token_accuracy`: whether it is counted
    over the loss's weighted tokens (else over a task's examples); `generates`: whether the model continues a text
    (next-token sampling and scoring); `appends_mask_id`: whether a [MASK] id is added beyond the data's ids."""

    loss: str
    model: str
    accuracy: str
    accuracy_label: str
    token_accuracy: bool
    generates: bool
    appends_mask_id: bool = False

    def appended_ids(self, model_cfg) -> int:
        """Ids the model has beyond its data's vocabulary (1 for a new [MASK] id: model.mlm.mask_token_id=-1)."""
        return int(self.appends_mask_id and model_cfg.mlm.mask_token_id < 0)


FAMILIES = {
    "causal_lm": Family("causal_lm", "gpt_decoder", accuracy="exact_match", accuracy_label="exact match",
                        token_accuracy=False, generates=True),
    "masked_lm": Family("masked_lm", "encoder", accuracy="masked_accuracy", accuracy_label="masked-token accuracy",
                        token_accuracy=True, generates=False, appends_mask_id=True),
}


def family(model_cfg) -> Family:
    """The pair a `model` config section names (`model.loss`, causal_lm when absent: configs from before it)."""
    name = model_cfg.get("loss", "causal_lm")
    if name not in FAMILIES:
        raise ValueError(f"model.loss={name!r}; choose one of: {', '.join(LOSSES)}")
    return FAMILIES[name]


@dataclasses.dataclass(frozen=True)
class Objective:
    """`prepare(batch, key) -> batch`: the (inputs, targets, weights) the cross-entropy is taken over.
    `needs_key`: whether `prepare` draws random numbers (the loop then folds a key for it); `causal`: the
    attention the model must have for it."""

    name: str
    prepare: Callable[[Batch, jax.Array | None], Batch]
    needs_key: bool
    causal: bool

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]


def _as_given(batch: Batch, key=None) -> Batch:
    """Causal LM: the data's (inputs, next-token targets, weights) as they are."""
    del key
    return batch


CAUSAL_LM = Objective("causal_lm", _as_given, needs_key=False, causal=True)


def mask_tokens(key, tokens_BxT, *, mask_token_id: int, random_vocab_size: int, rate: float = 0.15,
                p_mask: float = 0.8, p_random: float = 0.1):
    """BERT's corruption (Devlin et al. 2019, §3.1 and Appendix A.1): (inputs_BxT, selected_BxT).

    selected ~ Bernoulli(rate) per position; of the selected, [MASK] with probability p_mask, a token drawn
    uniformly from [0, random_vocab_size) with p_random, unchanged with 1 - p_mask - p_random. Any leading shape.
    """
    k_select, k_how, k_token = jax.random.split(key, 3)
    selected = jax.random.bernoulli(k_select, rate, tokens_BxT.shape)
    how = jax.random.uniform(k_how, tokens_BxT.shape)
    random_tokens = jax.random.randint(k_token, tokens_BxT.shape, 0, random_vocab_size, tokens_BxT.dtype)
    replaced = jnp.where(how < p_mask, jnp.asarray(mask_token_id, tokens_BxT.dtype),
                         jnp.where(how < p_mask + p_random, random_tokens, tokens_BxT))
    return jnp.where(selected, replaced, tokens_BxT), selected


def _masked(batch: Batch, key, *, mask_token_id, random_vocab_size, rate, p_mask, p_random) -> Batch:
    """Masked LM over the data's input block: every position may be selected; targets are the clean tokens."""
    tokens = batch["inputs"]
    inputs, selected = mask_tokens(key, tokens, mask_token_id=mask_token_id, random_vocab_size=random_vocab_size,
                                   rate=rate, p_mask=p_mask, p_random=p_random)
    return {**batch, "inputs": inputs, "targets": tokens, "weights": selected.astype(jnp.float32)}


def masked_lm(*, mask_token_id: int, random_vocab_size: int, rate: float = 0.15, p_mask: float = 0.8,
              p_random: float = 0.1) -> Objective:
    prepare = functools.partial(_masked, mask_token_id=mask_token_id, random_vocab_size=random_vocab_size,
                                rate=rate, p_mask=p_mask, p_random=p_random)
    return Objective("masked_lm", prepare, needs_key=True, causal=False)


def for_model(model_cfg) -> Objective:
    """The objective paired with a resolved `model` config section (`model.loss`, `model.mlm.*`)."""
    name = model_cfg.get("loss", "causal_lm")
    if name == "causal_lm":
        return CAUSAL_LM
    if name == "masked_lm":
        m, V = model_cfg.mlm, model_cfg.vocab_size
        if V <= 0:
            raise ValueError("model.vocab_size=0 is derived from the data; resolve the config first "
                             "(jaxformer.config.resolve with vocab_size=)")
        mask_id = mask_token_id(model_cfg)
        random_vocab = m.random_vocab_size or (V - 1 if m.mask_token_id < 0 else V)
        return masked_lm(mask_token_id=mask_id, random_vocab_size=random_vocab, rate=m.rate, p_mask=m.p_mask,
                         p_random=m.p_random)
    raise ValueError(f"model.loss={name!r}; choose one of: {', '.join(LOSSES)}")


def mask_token_id(model_cfg) -> int:
    """The [MASK] id of a resolved encoder config: model.mlm.mask_token_id, or the appended last id when -1."""
    m = model_cfg.mlm
    return m.mask_token_id if m.mask_token_id >= 0 else model_cfg.vocab_size - 1


def eval_key(seed: int, index: int, *, split: str) -> jax.Array:
    """The fixed key of evaluation batch `index` of a split: the same masked positions at every evaluation."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), 0x4D4C4D)  # "MLM": apart from the training stream
    return jax.random.fold_in(jax.random.fold_in(base, sum(split.encode())), index)
