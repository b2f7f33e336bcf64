"""Per-head attention diagnostics: five numbers that say what a head does.

Each takes causal attention weights `w_...xTxT` (rows are query positions i, columns key positions j, every
row sums to one, `w[i, j] = 0` for j > i) and reduces the last two axes. Query row 0 is left out of every
average: it can only attend to itself, so it says nothing about the head. With `Q = {1, ..., T-1}`:

- **entropy** (nats): `mean_{i in Q} -sum_j w_ij log w_ij`. 0 for a head that puts all its weight on one key;
  `log(i + 1)` at row i for a head spread uniformly over the causal prefix (the most a row can have).
- **mean_distance** (positions): `mean_{i in Q} sum_j w_ij |i - j|`. 0 for attention to the token itself, 1
  for a previous-token head; long-range heads have large values (Vig & Belinkov 2019; ViT's "attention
  distance").
- **sink** (attention-sink mass): `mean_{i in Q} w_i0`, the weight on the first token. Near 1 for heads that
  park their attention on position 0 when they have nothing to do (Xiao et al. 2023, "attention sinks").
- **previous_token**: `mean_{i in Q} w_{i,i-1}`. 1 for a perfect previous-token head.
- **induction**: measured on a sequence made of a random block of `n` tokens followed by the same block again
  (T = 2n): `mean_{i=n}^{2n-1} w_{i, i-n+1}`, the weight a token of the second copy puts on the token that
  *followed* its earlier occurrence. 1 for a perfect induction head (Olsson et al. 2022, "In-context learning
  and induction heads"; TransformerLens' `diagonal(offset=1-n)`).

The first four are measured on real text (the `--text` of `jaxformer attention`, or a fixed validation batch
during training); induction needs the repeated random sequence (`repeated_random_tokens`). With a batch axis
the per-example values are averaged.

`training_metrics(model, dataset, cfg)` is what the training hook (`training_hooks`) logs every
`train.attention_diagnostics_every` steps: flat scalar keys `attn/L{layer}H{head}/{metric}` for metrics.jsonl,
from one jit-compiled forward over a fixed validation batch and one over repeated random sequences (compiled once
per run, cached across calls).
"""

from __future__ import annotations

import csv
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

METRICS = ("entropy", "mean_distance", "sink", "previous_token", "induction")
TEXT_METRICS = METRICS[:4]  # the ones measured on text; induction needs a repeated random sequence


def _check(w_xTxT):
    w_xTxT = jnp.asarray(w_xTxT, jnp.float32)
    if w_xTxT.ndim < 2 or w_xTxT.shape[-1] != w_xTxT.shape[-2] or w_xTxT.shape[-1] < 2:
        raise ValueError(f"attention weights of shape {w_xTxT.shape}; expected [..., T, T] with T >= 2")
    return w_xTxT


def entropy(w_xTxT):
    """Mean row entropy in nats over query positions 1..T-1 (`0 log 0 = 0`: masked keys count for nothing)."""
    w = _check(w_xTxT)[..., 1:, :]
    row_entropy = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
    return jnp.mean(row_entropy, axis=-1)


def mean_distance(w_xTxT):
    """Mean over query positions 1..T-1 of the attention-weighted distance `sum_j w_ij |i - j|`."""
    w = _check(w_xTxT)
    T = w.shape[-1]
    distance_TxT = jnp.abs(jnp.arange(T)[:, None] - jnp.arange(T)[None, :]).astype(jnp.float32)
    return jnp.mean(jnp.sum(w * distance_TxT, axis=-1)[..., 1:], axis=-1)


def sink_mass(w_xTxT):
    """Mean weight on the first token over query positions 1..T-1."""
    return jnp.mean(_check(w_xTxT)[..., 1:, 0], axis=-1)


def previous_token_score(w_xTxT):
    """Mean weight on the previous token, `w[i, i-1]`, over query positions 1..T-1."""
    return jnp.mean(jnp.diagonal(_check(w_xTxT), offset=-1, axis1=-2, axis2=-1), axis=-1)


def induction_score(w_xTxT, *, period: int):
    """Mean of `w[i, i - period + 1]` over the second copy (i = period .. 2 period - 1) of a repeat."""
    w = _check(w_xTxT)
    if w.shape[-1] != 2 * period or period < 2:
        raise ValueError(f"induction_score: weights of length {w.shape[-1]} for period {period}; "
                         "expected a sequence of two copies of a block of >= 2 tokens (T = 2 * period)")
    # Diagonal offset 1 - period: entries (i, i - period + 1); keep those of the second copy (i >= period).
    stripe = jnp.diagonal(w, offset=1 - period, axis1=-2, axis2=-1)  # i = period-1 .. 2 period-1
    return jnp.mean(stripe[..., 1:], axis=-1)


def text_diagnostics(w_xTxT) -> dict:
    """The four text metrics, each reduced over the last two axes of `w`."""
    return {"entropy": entropy(w_xTxT), "mean_distance": mean_distance(w_xTxT), "sink": sink_mass(w_xTxT),
            "previous_token": previous_token_score(w_xTxT)}


def repeated_random_tokens(*, batch: int, period: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """`[batch, 2 period]` int32: a random block repeated twice; tokens distinct within a block when the vocab
    allows (a token that recurs inside the block would give the induction target two candidates)."""
    rng = np.random.default_rng(seed)
    block = np.stack([rng.choice(vocab_size, period, replace=period > vocab_size) for _ in range(batch)])
    return np.concatenate([block, block], axis=1).astype(np.int32)


# ---------------------------------------------------------------------------------------------- for training


def induction_period(block_size: int) -> int:
    """The block length of the repeated sequence for a model trained on `block_size` tokens (T = 2 n fits)."""
    return max(2, min(block_size // 2, 128))


@functools.partial(jax.jit, static_argnums=0)
def _diagnostics_LxH(graphdef, state, text_BxT, repeated_BxT) -> dict:
    """`{metric: [L, H]}` averaged over the batch."""
    model = nnx.merge(graphdef, state)
    _, w_LxBxHxTxT = model.attention_weights(text_BxT)
    out = {name: jnp.mean(value, axis=1) for name, value in text_diagnostics(w_LxBxHxTxT).items()}
    _, w_LxBxHxTxT = model.attention_weights(repeated_BxT)
    out["induction"] = jnp.mean(induction_score(w_LxBxHxTxT, period=repeated_BxT.shape[1] // 2), axis=1)
    return out


def diagnostics_for_model(model, text_BxT, *, period: int, model_cfg: ml_collections.ConfigDict,
                          seed: int = 0) -> dict:
    """`{metric: [L, H] np.float32}` for a model (any attention implementation: recomputed through the
    reference).

    Text metrics on `text_BxT`; induction on `repeated_random_tokens(batch=4, period=period)`.
    """
    from jaxformer.analysis import capture

    _, state = nnx.split(model)
    repeated_BxT = repeated_random_tokens(batch=4, period=period, vocab_size=model_cfg.vocab_size, seed=seed)
    out = _diagnostics_LxH(capture.reference_graphdef(model_cfg), state, jnp.asarray(text_BxT, jnp.int32),
                           jnp.asarray(repeated_BxT))
    return {name: np.asarray(value, np.float32) for name, value in jax.device_get(out).items()}


def fixed_text_batch(dataset, cfg: ml_collections.ConfigDict, *, batch_size: int = 4) -> np.ndarray:
    """The first `batch_size` rows of the first validation batch (the same at every call: eval batches are
    fixed)."""
    batch = dataset.eval_batches("val", batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                 num_batches=1, seed=cfg.train.seed)[0]
    return np.asarray(batch["inputs"][:batch_size], np.int32)


def flatten(table: dict, *, layers=None, heads=None, prefix: str = "attn") -> dict[str, float]:
    """`{metric: [L, H]}` -> `{"attn/L0H1/entropy": value, ...}`; `layers`/`heads` name the rows/columns."""
    first = next(iter(table.values()))
    layers = list(range(first.shape[0])) if layers is None else list(layers)
    heads = list(range(first.shape[1])) if heads is None else list(heads)
    return {f"{prefix}/L{l}H{h}/{name}": float(table[name][a, b])
            for a, l in enumerate(layers) for b, h in enumerate(heads) for name in METRICS if name in table}


def training_metrics(model, dataset, cfg: ml_collections.ConfigDict) -> dict[str, float]:
    """Flat scalar diagnostics of every layer and head for metrics.jsonl (`attn/L{l}H{h}/{metric}`)."""
    text_BxT = fixed_text_batch(dataset, cfg)
    table = diagnostics_for_model(model, text_BxT, period=induction_period(cfg.data.block_size),
                                  model_cfg=cfg.model, seed=cfg.train.seed)
    return flatten(table)


def training_hooks(cfg: ml_collections.ConfigDict) -> list:
    """The training loop's hook that logs `training_metrics` every `train.attention_diagnostics_every` steps (none
    when 0); the CLI and sweeps register it with `train.train(hooks=...)`."""
    from jaxformer import train as train_lib

    every = cfg.train.attention_diagnostics_every
    if not every:
        return []
    return [train_lib.Hook(every, lambda trainer, params, step: training_metrics(
        nnx.merge(trainer.graphdef, params), trainer.dataset, trainer.cfg))]


# ------------------------------------------------------------------------------------------------------ files


def write_csv(path: str, table: dict, *, layers, heads) -> None:
    """One row per (layer, head): `layer, head, entropy, mean_distance, sink, previous_token, induction`."""
    names = [name for name in METRICS if name in table]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *names])
        for a, l in enumerate(layers):
            for b, h in enumerate(heads):
                writer.writerow([l, h, *(f"{float(table[name][a, b]):.6g}" for name in names)])


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k in ("layer", "head") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def history(metrics: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """From metrics.jsonl records: `{"attn/L0H1/entropy": [(step, value), ...], ...}`."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in metrics:
        for key, value in record.items():
            if key.startswith("attn/"):
                series.setdefault(key, []).append((record["step"], value))
    return series
