"""Length extrapolation: evaluate a trained model at multiples of its training length (the reports: jaxformer/sweeps/).

Every eval length predicts the same number of tokens, so a loss at 8x averages as many predictions as the loss at 1x:
for text, eval_tokens / T non-overlapping windows of length T over the validation split (the same stretch of text at
every length); for synthetic tasks, enough freshly generated examples of length T that their answer tokens add up to
eval_tokens. Positions run 0..T-1 in every window.
Besides the mean loss, the mean loss at each token position (over windows) shows where a variant breaks: a model
that only fails past its training length has a flat curve up to the block size and a rise after it.

A run's numbers go to `<run>/extrapolation.json`; the reports read only those files and the run's own
`metrics.jsonl` / `timing.jsonl`, so `jaxformer report SWEEP_DIR` needs nothing but the run directories.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

import jax
import numpy as np
from flax import nnx

from jaxformer import losses as losses_lib
from jaxformer import positional
from jaxformer import run as run_lib

RESULT_FILE = "extrapolation.json"


# ---------------------------------------------------------------------------------------------------- evaluation

def compile_losses(graphdef):
    """`fn(params, inputs_BxT, targets_BxT, positions_BxT=None) -> (losses_BxT, correct_BxT)`, jit-compiled (once
    per input shape): `train.token_losses`, the forward+loss that training and evaluation use; `positions_BxT`
    gives each row its own positions (None = 0..T-1)."""
    from jaxformer import train as train_lib

    return jax.jit(lambda params, inputs_BxT, targets_BxT, positions_BxT=None: train_lib.token_losses(
        params, graphdef, inputs_BxT, targets_BxT, positions_T=positions_BxT))


def random_eval_positions(rows: int, length: int, max_len: int, seed) -> np.ndarray:
    """A sorted sample of `length` distinct positions from [0, max_len) for each of `rows` rows (int32 `[rows,
    length]`), a function of `seed` (an int or a tuple of ints): the randomized positions of Ruoss et al. 2023 at
    evaluation, where the authors' code draws them as in training."""
    if not 1 <= length <= max_len:
        raise ValueError(f"model.position.randomize_max_len={max_len} must be >= the evaluated length {length}")
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(max_len, length, replace=False)) for _ in range(rows)]).astype(np.int32)


def window_losses(losses_fn, params, inputs_NxT, targets_NxT, *, batch_tokens: int, positions_NxT=None):
    """Per-token losses and correctness `[N, T]` (NumPy), in batches of at most `batch_tokens` tokens; with
    `positions_NxT`, each row at its own positions.

    The last batch is padded to the batch size with repeats (dropped afterwards) so each length compiles once.
    """
    N, T = inputs_NxT.shape
    B = max(1, min(N, batch_tokens // T))
    pad = (-N) % B
    if pad:
        inputs_NxT = np.concatenate([inputs_NxT, np.repeat(inputs_NxT[:1], pad, axis=0)])
        targets_NxT = np.concatenate([targets_NxT, np.repeat(targets_NxT[:1], pad, axis=0)])
        if positions_NxT is not None:
            positions_NxT = np.concatenate([positions_NxT, np.repeat(positions_NxT[:1], pad, axis=0)])
    losses, correct = [], []
    for i in range(0, N + pad, B):
        rows = slice(i, i + B)
        l_BxT, c_BxT = (losses_fn(params, inputs_NxT[rows], targets_NxT[rows]) if positions_NxT is None else
                        losses_fn(params, inputs_NxT[rows], targets_NxT[rows], positions_NxT[rows]))
        losses.append(np.asarray(l_BxT, np.float64))
        correct.append(np.asarray(c_BxT))
    return np.concatenate(losses)[:N], np.concatenate(correct)[:N]


def sliding_plan(length: int, *, window: int, stride: int, prefix: int = 0) -> list[tuple[int, int, int]]:
    """How a sliding window of `window` tokens covers a row of `length`: [(start, first scored, end), ...].

    Every sub-window holds the row's first `prefix` columns (a BOS token) and then `window - prefix` consecutive
    columns [start, start + window - prefix); the first sub-window scores all its columns, each later one only the
    columns no earlier one scored, so every column is predicted once, from at most `window` tokens of context.
    Starts advance by `stride` (the last one is moved back to end at the row's end). A row no longer than the window
    is one sub-window: the full-context prediction.
    """
    if not 1 <= stride <= window:
        raise ValueError(f"sliding-window stride={stride}; must be in [1, window={window}]")
    if length <= window:
        return [(prefix, 0, length)]
    body = window - prefix
    plan, start, scored = [(prefix, 0, window)], prefix, window
    while scored < length:
        start = min(start + stride, length - body)
        plan.append((start, scored, start + body))
        scored = start + body
    return plan


def sliding_window_losses(losses_fn, params, inputs_NxT, targets_NxT, *, window: int, stride: int, prefix: int = 0,
                          batch_tokens: int):
    """Per-token losses and correctness `[N, T]` when each token sees only the last `window` tokens of its row
    (`sliding_plan`): the sliding-window baseline of a full-context evaluation at length T, on the same tokens."""
    N, T = inputs_NxT.shape
    plan = sliding_plan(T, window=window, stride=stride, prefix=prefix)
    if len(plan) == 1:
        return window_losses(losses_fn, params, inputs_NxT, targets_NxT, batch_tokens=batch_tokens)
    body = window - prefix
    columns_KxW = np.stack([np.concatenate([np.arange(prefix), start + np.arange(body)]) for start, _, _ in plan])
    K = len(plan)
    sub_inputs, sub_targets = (x[:, columns_KxW].reshape(N * K, window) for x in (inputs_NxT, targets_NxT))
    sub_losses, sub_correct = window_losses(losses_fn, params, sub_inputs, sub_targets, batch_tokens=batch_tokens)
    sub_losses, sub_correct = sub_losses.reshape(N, K, window), sub_correct.reshape(N, K, window)
    losses_NxT, correct_NxT = np.zeros((N, T)), np.zeros((N, T), bool)
    for k, (start, first, end) in enumerate(plan):
        cols = np.arange(first, end)
        where = np.where(cols < prefix, cols, cols - start + prefix)  # column -> its place in the sub-window
        losses_NxT[:, cols], correct_NxT[:, cols] = sub_losses[:, k, where], sub_correct[:, k, where]
    return losses_NxT, correct_NxT


def window_counts(dataset, split: str, lengths: list[int], eval_tokens: int) -> dict[int, int]:
    """Windows per length, so that every length predicts the same number of tokens (0 = the length cannot run).

    Text: W_T = budget / T non-overlapping windows, budget = min(eval_tokens, what the split holds at the longest
    length), rounded down to a multiple of the longest length, so every length predicts the same stretch of text;
    eval_tokens = 0 takes the whole split. Synthetic tasks (no split text): enough generated examples that their
    answer tokens add up to about eval_tokens (0: data.synthetic.eval_examples examples).
    """
    text = dataset.split_tokens(split)
    if text is not None:
        usable = [T for T in lengths if (len(text) - 1) // T >= 1]
        if not usable:
            return {T: 0 for T in lengths}
        longest = max(usable)
        budget = (min(eval_tokens, len(text) - 1) if eval_tokens else len(text) - 1) // longest * longest
        return {T: budget // T if T in usable else 0 for T in lengths}
    if not eval_tokens:
        return {T: getattr(dataset, "eval_examples", 256) for T in lengths}
    counts = {}
    for T in lengths:
        try:
            probe = dataset.windows(split, length=T, max_windows=8)
        except ValueError:  # no example of the task fits T tokens
            counts[T] = 0
            continue
        answers_per_example = max(float(np.sum(probe["weights"])) / len(probe["weights"]), 1e-9)
        counts[T] = max(1, math.ceil(eval_tokens / answers_per_example))
    return counts


def _scores(losses_NxT, correct_NxT, weights_NxT) -> dict:
    """Mean loss, token accuracy and exact match over the weighted (predicted) tokens."""
    total = max(weights_NxT.sum(), 1e-12)
    has_answer_N = weights_NxT.sum(1) > 0
    exact_N = np.all(correct_NxT | (weights_NxT == 0), axis=1) & has_answer_N
    return {"loss": float((losses_NxT * weights_NxT).sum() / total),
            "token_accuracy": float((correct_NxT * weights_NxT).sum() / total),
            "exact_match": float(exact_N.sum() / max(has_answer_N.sum(), 1))}


def evaluate_lengths(graphdef, params, dataset, lengths: list[dict], *, eval_tokens: int, batch_tokens: int,
                     split: str = "val", window: int | None = None, stride: int | None = None,
                     prefix: int = 0, objective=None) -> list[dict]:
    """One record per eval length: mean loss, per-position loss, windows, predicted tokens (or the n/a reason).

    `lengths` are `{"multiplier", "length", "na"}` records (see sweep.eval_lengths_for); window_counts sizes them.
    With `window` (the training length), each record also gets `sliding`: the same tokens predicted by a sliding
    window of `window` tokens advancing by `stride` (default window // 2; `prefix` leading columns, a BOS, stay in
    every window) -- the baseline a full-context loss must beat to count as extrapolation. It is computed where the
    full context is n/a only because of a position table (learned), when the window fits that table.
    """
    counts = window_counts(dataset, split, [x["length"] for x in lengths], eval_tokens)
    losses_fn = compile_losses(graphdef)
    stride = stride or (window // 2 if window else None)
    out = []
    for x in lengths:
        x, T = dict(x), x["length"]
        if counts[T] == 0:
            x["na"] = x["na"] or f"n/a (no {split} window of {T} tokens)"
        sliding_only = x["na"] is not None and x.get("sliding_ok", False) and counts[T] > 0 and window is not None
        x.pop("sliding_ok", None)
        out.append(x)
        if x["na"] is not None and not sliding_only:
            continue
        w = dataset.windows(split, length=T, max_windows=counts[T])
        if objective is not None and objective.needs_key:  # an encoder's masked LM: fixed masks per (split, length)
            w = jax.device_get(objective.prepare(dict(w), losses_lib.eval_key(0, T, split=split)))
        inputs_NxT, targets_NxT = np.asarray(w["inputs"], np.int32), np.asarray(w["targets"], np.int32)
        weights_NxT = np.asarray(w["weights"], np.float64)
        x.update({"windows": int(len(inputs_NxT)), "predicted_tokens": int(weights_NxT.sum())})
        if not sliding_only:
            losses_NxT, correct_NxT = window_losses(losses_fn, params, inputs_NxT, targets_NxT,
                                                    batch_tokens=batch_tokens)
            per_position_T = (losses_NxT * weights_NxT).sum(0) / np.maximum(weights_NxT.sum(0), 1e-12)
            x.update({**_scores(losses_NxT, correct_NxT, weights_NxT),
                      "position_loss": [round(float(v), 5) if s > 0 else None
                                        for v, s in zip(per_position_T, weights_NxT.sum(0), strict=True)]})
        if window is not None:
            if T <= window and not sliding_only:  # one window holds the whole row: the full-context numbers
                scores = {k: x[k] for k in ("loss", "token_accuracy", "exact_match")}
            else:
                scores = _scores(*sliding_window_losses(losses_fn, params, inputs_NxT, targets_NxT, window=window,
                                                        stride=stride, prefix=prefix, batch_tokens=batch_tokens),
                                 weights_NxT)
            x["sliding"] = {"window": window, "stride": stride, **scores}
    return out


def train_max_items(dataset, block_size: int) -> int | None:
    """The largest task size n a synthetic task's training rows hold (data.synthetic.max_items, else what fits)."""
    task = getattr(dataset, "task", None)
    if task is None:
        return None
    from jaxformer.data.synthetic import items_that_fit

    prefix = 1 if getattr(dataset, "bos_id", None) is not None else 0  # data.bos: the row's first token
    return dataset.max_items or items_that_fit(task, block_size - prefix)


def check_sizes(sizes) -> tuple[int, int]:
    """(min, max) of an eval size range given as (min, max); a one-line error when it is not one."""
    sizes = tuple(int(n) for n in sizes)
    if len(sizes) != 2 or sizes[0] < 1 or sizes[0] > sizes[1]:
        raise ValueError(f"eval sizes {sizes}; give (min, max) task sizes with 1 <= min <= max")
    return sizes


def evaluate_sizes(graphdef, params, dataset, sizes: tuple[int, int], *, train_max: int, examples: int,
                   batch_tokens: int, split: str = "val", losses_fn=None, max_length: int | None = None,
                   random_positions: int = 0, seed: int = 0) -> list[dict]:
    """The literature's protocol (Delétang et al. 2023; Ruoss et al. 2023; Kazemnejad et al. 2023): at every task size
    n in [min, max], `examples` fresh examples of exactly n items; exact match (every answer token right) and
    per-token accuracy over their answers, and the loss. `ood` marks n > train_max (the longest size trained on).

    Every size is evaluated in rows of one length (the longest size's), padded after the answer where a causal model
    cannot see it, so the model compiles once; positions run 0..T-1, or with `random_positions` = R > 0 each row
    gets its own sorted sample from [0, R) (`random_eval_positions`, seeded by (`seed`, n)), as Ruoss et al.'s code
    evaluates its randomized models. Sizes whose examples exceed `max_length` (a learned table) are n/a.
    """
    lo, hi = check_sizes(sizes)
    task = dataset.task
    lo = max(lo, task.min_items)
    prefix = 1 if getattr(dataset, "bos_id", None) is not None else 0  # data.bos: rows start with BOS
    longest = max((task.length(n) - 1 + prefix for n in range(lo, hi + 1)
                   if max_length is None or task.length(n) - 1 + prefix <= max_length), default=0)
    losses_fn = losses_fn or compile_losses(graphdef)
    out = []
    for n in range(lo, hi + 1):
        record = {"items": n, "ood": n > train_max, "length": task.length(n) - 1 + prefix, "na": None}
        out.append(record)
        if record["length"] > longest:
            record["na"] = f"n/a ({record['length']} tokens exceed the {max_length}-position table)"
            continue
        rows = dataset.sized(split, items=n, count=examples, length=longest)
        weights_NxT = np.asarray(rows["weights"], np.float64)
        inputs_NxT = np.asarray(rows["inputs"], np.int32)
        positions_NxT = (random_eval_positions(inputs_NxT.shape[0], inputs_NxT.shape[1], random_positions, (seed, n))
                         if random_positions else None)
        losses_NxT, correct_NxT = window_losses(losses_fn, params, inputs_NxT, np.asarray(rows["targets"], np.int32),
                                                batch_tokens=batch_tokens, positions_NxT=positions_NxT)
        exact_N = np.all(correct_NxT | (weights_NxT == 0), axis=1)
        record.update({"examples": examples, "exact_match": float(exact_N.mean()),
                       "token_accuracy": float((correct_NxT * weights_NxT).sum() / weights_NxT.sum()),
                       "loss": float((losses_NxT * weights_NxT).sum() / weights_NxT.sum())})
    return out


def size_baselines(dataset, sizes: tuple[int, int], *, train_max: int, examples: int, split: str = "val") -> dict:
    """The trivial baselines of the per-size protocol on the evaluation's own examples (`dataset.sized`, a function
    of the size only): {"majority" | "repeat": {"in_distribution" | "ood": {exact_match, token_accuracy}}}
    (data.synthetic.trivial_correct), means over the sizes as `size_summary` takes them."""
    from jaxformer.data.synthetic import trivial_correct

    task = getattr(dataset, "inner", dataset)  # a BOS row changes no answer: the baselines of the task itself
    lo, hi = check_sizes(sizes)
    records = {"majority": [], "repeat": []}
    for n in range(max(lo, task.task.min_items), hi + 1):
        rows = task.sized(split, items=n, count=examples, length=task.length(n) - 1)
        weights = np.asarray(rows["weights"]) > 0
        for name, correct in trivial_correct(rows).items():
            records[name].append({"items": n, "ood": n > train_max, "na": None,
                                  "exact_match": float(np.all(correct | ~weights, axis=1).mean()),
                                  "token_accuracy": float(correct[weights].mean())})
    return {name: size_summary(r) for name, r in records.items()}


def size_summary(records: list[dict]) -> dict:
    """Means over the in-distribution sizes and over the out-of-distribution ones (those that ran)."""
    out = {}
    for part, ood in (("in_distribution", False), ("ood", True)):
        ran = [r for r in records if r["ood"] == ood and r["na"] is None]
        out[part] = ({key: float(np.mean([r[key] for r in ran])) for key in ("exact_match", "token_accuracy")}
                     | {"sizes": [ran[0]["items"], ran[-1]["items"]]} if ran else None)
    return out


def evaluate_run(run_dir: str, graphdef, params, dataset, cfg, *, step: int, point: str, variant: str, index: int,
                 values: list, lengths: list[dict], eval_tokens: int, batch_tokens: int, split: str,
                 stopped: str | None = None, train_time: tuple[float, float] | None = None,
                 sizes: tuple = (), size_examples: int = 64, zero_shot: dict | None = None,
                 stride: int | None = None, random_positions: bool = False) -> dict:
    """Evaluates one trained run at every length and writes `<run_dir>/extrapolation.json`.

    `random_positions`: a run trained on randomized positions is also evaluated per size with randomized ones
    (`sizes_random_positions`; the report's "<variant> (random eval positions)" row).

    `train_time`: (wall, CPU) seconds of the training call, for the report (None when it was not trained here).
    `zero_shot`: the same lengths evaluated on the parameters the run started from (`train --init-from`).
    """
    from jaxformer.model import count_params

    start, cpu_start = time.perf_counter(), time.process_time()
    model = nnx.merge(graphdef, params)
    if stopped:  # diverged: the parameters are the last good ones, but the run did not reach its steps
        records = [{**x, "na": x["na"] or f"diverged ({stopped})"} for x in lengths]
    else:
        records = evaluate_lengths(graphdef, params, dataset, lengths, eval_tokens=eval_tokens,
                                   batch_tokens=batch_tokens, split=split, window=cfg.data.block_size,
                                   stride=stride, prefix=1 if cfg.data.get("bos", False) else 0,
                                   objective=losses_lib.for_model(cfg.model))
    result = {
        "point": point, "variant": variant, "index": index, "axes": [[f, v] for f, v in values],
        "position": cfg.model.position.name, "seed": cfg.train.seed, "data": cfg.data.name, "split": split,
        "block_size": cfg.data.block_size, "steps": cfg.train.steps, "step": step,
        "model": {k: cfg.model[k] for k in ("n_layer", "n_head", "n_embd")},
        "batch_size": cfg.data.batch_size, "has_accuracy": bool(getattr(dataset, "has_accuracy", False)),
        "n_params": count_params(model), "n_params_non_embedding": count_params(model, non_embedding=True),
        "stopped": stopped, "lengths": records,
        "randomize_max_len": cfg.model.position.get("randomize_max_len", 0),
        "randomize_per": cfg.model.position.get("randomize_per", "sequence"),
        **({"zero_shot": zero_shot} if zero_shot else {}),
        "seconds": {"train": train_time and train_time[0], "eval": time.perf_counter() - start},
        "cpu_seconds": {"train": train_time and train_time[1], "eval": time.process_time() - cpu_start},
    }
    if sizes and getattr(dataset, "task", None) is not None:
        train_max = train_max_items(dataset, cfg.data.block_size)
        table = positional.max_length(cfg.model.position)

        def per_size(**positions) -> dict:  # the protocol's record, at 0..T-1 or (`positions`) randomized ones
            records = [] if stopped else evaluate_sizes(
                graphdef, params, dataset, sizes, train_max=train_max, examples=size_examples,
                batch_tokens=batch_tokens, split=split, max_length=table, **positions)
            return {"train_max_items": train_max, "examples": size_examples, "records": records,
                    **({"max_len": positions["random_positions"]} if positions else {}), **size_summary(records)}

        result["sizes"] = per_size()
        randomized = cfg.model.position.get("randomize_max_len", 0)
        if random_positions and randomized:
            result["sizes_random_positions"] = per_size(random_positions=randomized, seed=cfg.train.seed)
    result["seconds"]["eval"] = time.perf_counter() - start
    result["cpu_seconds"]["eval"] = time.process_time() - cpu_start
    write_result(os.path.join(run_dir, RESULT_FILE), result)
    return result


def write_result(path: str, result: dict) -> None:
    """Indented JSON with each list of numbers on one line (the per-position losses), written atomically."""
    text = json.dumps(result, indent=1, sort_keys=True)
    text = re.sub(r"\[\s+([-+0-9.eE,\snul]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    run_lib.atomic_write(path, text + "\n")
