"""Length extrapolation: evaluate a trained model at multiples of its training length, and the sweep reports.

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

import glob
import json
import math
import os
import re
import statistics
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


# ------------------------------------------------------------------------------------------------ reading results

def median_ms_per_step(run_dir: str) -> float | None:
    """Median ms/step over timing.jsonl, leaving out the first interval (it holds the compilation)."""
    path = os.path.join(run_dir, "timing.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        values = [float(json.loads(line)["ms_per_step"]) for line in f if line.strip()]
    values = values[1:] if len(values) > 1 else values
    return statistics.median(values) if values else None


def final_val_loss(run_dir: str) -> float | None:
    vals = [m["val_loss"] for m in run_lib.read_metrics(run_dir) if "val_loss" in m]
    return vals[-1] if vals else None


def load_results(sweep_dir: str) -> tuple[list[dict], list[str]]:
    """(results of the evaluated runs in sweep order, names of the run directories not evaluated yet)."""
    results, unfinished = [], []
    for run_dir in sorted(glob.glob(os.path.join(sweep_dir, "runs", "*"))):
        path = os.path.join(run_dir, RESULT_FILE)
        if not os.path.exists(path):
            unfinished.append(os.path.basename(run_dir))
            continue
        r = run_lib.read_json(path)
        r["val_loss"] = final_val_loss(run_dir)
        r["ms_per_step"] = median_ms_per_step(run_dir)
        results.append(r)
        if r.get("zero_shot"):  # the starting parameters under the run's config: a variant of its own in the report
            results.append({**r, "variant": f"{r['variant']} zero-shot", "point": f"{r['point']} zero-shot",
                            "lengths": r["zero_shot"]["lengths"], "val_loss": None, "ms_per_step": None,
                            "sizes": None, "steps": 0})
        if r.get("sizes_random_positions"):  # evaluated at randomized positions too: a row of its own
            results.append({**r, "variant": f"{r['variant']} (random eval positions)",
                            "point": f"{r['point']} (random eval positions)", "sizes": r["sizes_random_positions"],
                            "lengths": [{**x, "na": "n/a (evaluated per task size only)", "sliding": None}
                                        for x in r["lengths"]]})
    results.sort(key=lambda r: ("zero-shot" not in r["variant"], r["index"], r["point"]))
    return results, unfinished


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(results: list[dict]) -> list[dict]:
    """One record per variant (all points that differ only in the seed), in sweep order, mean and spread over seeds."""
    variants: dict[str, list[dict]] = {}
    for r in results:
        variants.setdefault(r["variant"], []).append(r)
    out = []
    for name, runs in variants.items():
        lengths = []
        for i, x in enumerate(runs[0]["lengths"]):
            per_seed = [r["lengths"][i] for r in runs if i < len(r["lengths"])]
            ok = [y for y in per_seed if y.get("na") is None]
            sliding = [y["sliding"] for y in per_seed if y.get("sliding")]
            record = {"multiplier": x["multiplier"], "length": x["length"], "seeds": len(ok),
                      "na": None if ok else per_seed[0]["na"],
                      "loss": _mean_std([y["loss"] for y in ok]), "losses": [y["loss"] for y in ok],
                      "sliding_loss": _mean_std([y["loss"] for y in sliding]),
                      "sliding_losses": [y["loss"] for y in sliding],
                      "sliding_seeds": [r["seed"] for r in runs if i < len(r["lengths"]) and
                                        r["lengths"][i].get("sliding")],
                      "loss_seeds": [r["seed"] for r in runs if i < len(r["lengths"]) and
                                     r["lengths"][i].get("na") is None],
                      "stride": sliding[0]["stride"] if sliding else None,
                      "exact_match": _mean_std([y.get("exact_match") for y in ok]),
                      "token_accuracy": _mean_std([y.get("token_accuracy") for y in ok]),
                      "predicted_tokens": (ok or [y for y in per_seed if y.get("sliding")] or [{}])[0].get(
                          "predicted_tokens")}
            lengths.append(record)
        ms = [r["ms_per_step"] for r in runs if r["ms_per_step"] is not None]
        out.append({
            "variant": name, "runs": runs, "seeds": [r["seed"] for r in runs], "lengths": lengths,
            "val_loss": _mean_std([r["val_loss"] for r in runs]),
            "n_params": runs[0]["n_params"], "ms_per_step": statistics.median(ms) if ms else None,
            "block_size": runs[0]["block_size"], "has_accuracy": runs[0].get("has_accuracy", False),
            "stopped": [r["stopped"] for r in runs if r.get("stopped")],
            "position_loss": position_curve(runs, pool=not runs[0].get("has_accuracy", False)),
            "sizes": aggregate_sizes(runs),
        })
    return out


REACHED = 0.99  # in-distribution exact match a model must reach before its OOD numbers mean something


def aggregate_sizes(runs: list[dict]) -> dict | None:
    """Per task size and over the in-distribution / OOD sizes, mean and spread over seeds; None without sizes."""
    with_sizes = [r["sizes"] for r in runs if r.get("sizes") and r["sizes"]["records"]]
    if not with_sizes:
        return None
    per_size = []
    for i, x in enumerate(with_sizes[0]["records"]):
        ok = [s["records"][i] for s in with_sizes if i < len(s["records"]) and s["records"][i]["na"] is None]
        per_size.append({"items": x["items"], "ood": x["ood"], "na": None if ok else x["na"], "seeds": len(ok),
                         "exact_match": _mean_std([y["exact_match"] for y in ok]),
                         "token_accuracy": _mean_std([y["token_accuracy"] for y in ok])})
    summary = {}
    for part in ("in_distribution", "ood"):
        parts = [s[part] for s in with_sizes if s.get(part)]
        summary[part] = ({key: _mean_std([p[key] for p in parts]) for key in ("exact_match", "token_accuracy")}
                         | {"sizes": parts[0]["sizes"], "values": [p["exact_match"] for p in parts]}
                         if parts else None)
    reached = sum(1 for s in with_sizes if s.get("in_distribution") and
                  s["in_distribution"]["exact_match"] >= REACHED)
    return {"per_size": per_size, "train_max_items": with_sizes[0]["train_max_items"], "reached": reached,
            "seeds": len(with_sizes), **summary}


def plot_sizes(variants: list[dict], path: str, *, title: str = "") -> None:
    """Exact match and token accuracy at every task size, one line per variant (mean over seeds, bars = spread),
    the longest training size marked: the per-length curve of the length-generalization papers."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=120)
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")  # 20 distinct colours for a task's 15 rows
    for ax, (key, label) in zip(axes, (("exact_match", "exact match (%)"), ("token_accuracy", "token accuracy (%)")),
                                strict=True):
        for i, v in enumerate(variants):
            sizes = v.get("sizes")
            pts = [(x["items"], 100 * x[key][0], 100 * x[key][1]) for x in (sizes or {}).get("per_size", [])
                   if x[key] is not None]
            if not pts:
                continue
            n, mean, std = zip(*pts, strict=True)
            ax.errorbar(n, mean, yerr=std, fmt="--" if v["variant"].endswith("(random eval positions)") else "-",
                        color=cmap(i % cmap.N), label=v["variant"], capsize=2, linewidth=1.4)
        train_max = next((v["sizes"]["train_max_items"] for v in variants if v.get("sizes")), None)
        if train_max:
            ax.axvline(train_max + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(train_max + 0.5, 0.02, " longest training size", transform=ax.get_xaxis_transform(),
                    fontsize=8, color="grey")
        ax.set_xlabel("task size n (items in the prompt)")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def position_curve(runs: list[dict], *, pool: bool) -> np.ndarray | None:
    """Mean loss at each token position over the seeds (NaN where nothing is predicted), at the longest length run.

    With `pool` (text), every eval length contributes at the positions it covers, weighted by its windows: under
    causal attention the loss at position t depends only on tokens 0..t, so a window of any length is a sample of
    it, and the early positions get all the windows instead of the few of the longest length. Synthetic tasks are
    not pooled: a longer length is a different (longer) example, not more samples of the same positions.
    """
    sums_T, counts_T = np.zeros(0), np.zeros(0)
    for r in runs:
        ran = [x for x in r["lengths"] if x.get("na") is None and x.get("position_loss")]
        for x in ran if pool else ran[-1:]:
            curve = np.array([np.nan if v is None else v for v in x["position_loss"]], np.float64)
            if len(curve) > len(sums_T):
                sums_T = np.pad(sums_T, (0, len(curve) - len(sums_T)))
                counts_T = np.pad(counts_T, (0, len(curve) - len(counts_T)))
            weight = np.where(np.isfinite(curve), x["windows"], 0.0)
            sums_T[:len(curve)] += np.nan_to_num(curve) * weight
            counts_T[:len(curve)] += weight
    if not counts_T.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts_T > 0, sums_T / counts_T, np.nan)


# ---------------------------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _readable_ylim(ax, values: list[float]) -> bool:
    """Clip the top so that a variant that blows up does not flatten the others (values far above the upper
    quartile, by five interquartile ranges); True when something is cut off."""
    if not values:
        return False
    low, high = min(values), max(values)
    q1, q3 = np.percentile(values, [25, 75])
    top = min(high, q3 + 5 * max(q3 - q1, 0.02))
    margin = max(0.05 * (top - low), 0.01)
    ax.set_ylim(low - margin, top + margin)
    return high > top + margin


def _mark_training_length(ax, block: int | None) -> None:
    if block:
        ax.axvline(block, color="grey", linestyle=":", linewidth=1)
        ax.text(block, 0.98, " training length", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                color="grey")


def plot_extrapolation(variants: list[dict], path: str, *, title: str = "") -> None:
    """Mean eval loss against eval length (log-x), one line per variant, error bars = spread over seeds, dashed: the
    same variant's sliding-window baseline; a second panel with exact-match accuracy for synthetic tasks."""
    plt = _plt()
    accuracy = bool(variants) and variants[0]["has_accuracy"]
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(13 if accuracy else 8.5, 5), dpi=120, squeeze=False)
    cmap = plt.get_cmap("tab10")
    lengths = sorted({x["length"] for v in variants for x in v["lengths"]})
    panels = [("loss", "mean loss at the predicted tokens (nats/token)", 1.0)]
    if accuracy:
        panels.append(("exact_match", "exact match (%)", 100.0))
    for ax, (key, label, scale) in zip(axes[0], panels, strict=True):
        shown = []
        for i, v in enumerate(variants):
            pts = [(x["length"], x[key][0] * scale, x[key][1] * scale) for x in v["lengths"] if x[key] is not None]
            if not pts:
                continue
            T, mean, std = zip(*pts, strict=True)
            shown += list(mean)
            ax.errorbar(T, mean, yerr=std, fmt="o-" if len(pts) > 1 else "s", color=cmap(i % 10),
                        label=v["variant"], capsize=3, markersize=5, linewidth=1.6)
        for i, v in enumerate(variants if key == "loss" else ()):  # the sliding-window baseline, dashed
            pts = [(x["length"], x["sliding_loss"][0]) for x in v["lengths"] if x.get("sliding_loss")]
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), "--", color=cmap(i % 10), linewidth=1.0, alpha=0.7)
                shown += [y for _, y in pts]
        _mark_training_length(ax, variants[0]["block_size"] if variants else None)
        ax.set_xscale("log", base=2)
        if lengths:
            ax.set_xticks(lengths, [str(T) for T in lengths])
            ax.minorticks_off()
        if key == "loss" and _readable_ylim(ax, shown):
            ax.text(0.99, 0.01, "points above the axis: see results.md", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color="grey")
        if key == "exact_match":  # a percentage: the whole 0-100 range, also when every point is 0
            ax.set_ylim(-2, 102)
        ax.set_xlabel("eval length (tokens, log scale)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:  # no point evaluated yet: no legend
        axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _log_bins(curve_T: np.ndarray, per_octave: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean of the finite values in each bin) over log-spaced position bins [0, 1), [1, 2), ..."""
    T = len(curve_T)
    edges = np.unique(np.round(np.geomspace(1, T, int(per_octave * math.log2(max(T, 2))) + 1)).astype(int))
    edges = np.concatenate([[0], edges[edges < T], [T]])
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        values = curve_T[lo:hi][np.isfinite(curve_T[lo:hi])]
        if values.size:
            centres.append(math.sqrt(max(lo, 0.5) * (hi - 0.5)) if hi - lo > 1 else lo)
            means.append(values.mean())
    return np.asarray(centres), np.asarray(means)


def plot_position_loss(variants: list[dict], path: str, *, title: str = "", per_octave: int = 4) -> None:
    """Mean loss at each token position (see position_curve) up to each variant's longest length, log-x, averaged
    over log-spaced position bins (`per_octave` per doubling) so the late positions are not noise."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    shown, longest = [], 1
    for i, v in enumerate(variants):
        curve_T = v["position_loss"]
        if curve_T is None:
            continue
        longest = max(longest, len(curve_T))
        x, y = _log_bins(curve_T, per_octave)
        shown += list(y[x >= 4])  # the first few positions (little context yet) may leave the axis
        ax.plot(np.maximum(x, 0.5), y, "-" if len(y) > 3 else "o", color=cmap(i % 10),
                label=f"{v['variant']} (T={len(curve_T)})", linewidth=1.4)
    _mark_training_length(ax, variants[0]["block_size"] if variants else None)
    if _readable_ylim(ax, shown):
        ax.text(0.99, 0.01, "curves above the axis: see results.md", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ticks = [2 ** k for k in range(int(math.log2(longest)) + 1)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"token position in the window (log scale; mean over {per_octave} bins per doubling)")
    ax.set_ylabel("mean loss at the position (nats/token)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no curve yet (a sweep stopped before its first evaluation): no legend
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
