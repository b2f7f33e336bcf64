"""Effective context: does a model use the tokens beyond its training length? Passkey and MQAR by (length, depth).

For every eval length T and depth (data/retrieval.py: where the key or the far MQAR pairs sit), `examples` probes
(`SyntheticDataset.probe`) are answered five ways, each scored by exact match (every predicted answer token right)
and per-token accuracy, the latter also split into answer tokens whose source lies within the training length L
and beyond it (the distance back to the token they copy > L):

    free-running   greedy decoding: each answer token is the argmax given the prompt and the model's own earlier
                   answer tokens (MQAR's queries are given) -- how Mohtashami & Jaggi 2023, Chen et al. 2023 and
                   Peng et al. 2023 score passkey retrieval;
    teacher-forced the argmax at each answer position given the true earlier tokens (the training metric);
    sliding window the same model decoding free-running from only the last L tokens: it cannot see a key farther
                   back, so it is the row a model must beat to show it *uses* the longer context;
    majority       the most frequent answer token at each answer position over the probes (a trivial baseline that
                   knows the answer distribution);
    repeat         repeat-previous-token: each answer token predicted as the token before it (teacher-forced, the
                   stronger form; free-running it would repeat the question mark).

`<run>/context.json` holds a run's records; the sweep report (`report_lines`) tabulates them over seeds.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import positional
from jaxformer import run as run_lib

RESULT_FILE = "context.json"
METHODS = ("free_running", "teacher_forced", "sliding_window", "majority", "repeat")


def compile_argmax(graphdef):
    """`fn(params, inputs_BxT) -> argmax_BxT`: the model's greedy next token at every position (jit, per shape)."""

    def argmax(params, inputs_BxT):
        logits_BxTxV = nnx.merge(graphdef, params)(inputs_BxT)
        return jnp.argmax(logits_BxTxV, axis=-1).astype(jnp.int32)

    return jax.jit(argmax)


def _batched(argmax_fn, params, inputs_NxT, batch_tokens: int) -> np.ndarray:
    """argmax over rows in batches of at most `batch_tokens` tokens (the last batch padded, so one compile)."""
    N, T = inputs_NxT.shape
    B = max(1, min(N, batch_tokens // T))
    pad = (-N) % B
    padded = np.concatenate([inputs_NxT, np.repeat(inputs_NxT[:1], pad, axis=0)]) if pad else inputs_NxT
    out = [np.asarray(argmax_fn(params, padded[i:i + B])) for i in range(0, N + pad, B)]
    return np.concatenate(out)[:N]


def greedy_decode(argmax_fn, params, inputs_NxT, weights_NxT, *, window: int | None = None,
                  batch_tokens: int = 8192) -> np.ndarray:
    """Free-running greedy predictions `[N, T]` at the predicted positions (weights > 0; -1 elsewhere).

    Position t predicts token t + 1; the prediction replaces input t + 1 before any later position is predicted, so
    every answer token is conditioned on the model's own earlier answer tokens (tokens with weight 0, e.g. MQAR's
    queries, stay as given). With `window` W, position t sees only inputs (t - W, t], at positions 0..W-1: the
    sliding-window model. Causal attention makes the full-row forward at t independent of the inputs after t.
    """
    inputs_NxT = np.array(inputs_NxT, np.int32, copy=True)
    N, T = inputs_NxT.shape
    predicted_NxT = np.full((N, T), -1, np.int32)
    for t in np.flatnonzero(weights_NxT.sum(0) > 0):
        rows = weights_NxT[:, t] > 0
        if window is None or t + 1 <= window:
            guess_N = _batched(argmax_fn, params, inputs_NxT, batch_tokens)[:, t]
        else:
            guess_N = _batched(argmax_fn, params, inputs_NxT[:, t + 1 - window:t + 1], batch_tokens)[:, -1]
        predicted_NxT[rows, t] = guess_N[rows]
        if t + 1 < T:
            inputs_NxT[rows, t + 1] = guess_N[rows]
    return predicted_NxT


def scores(correct_NxT, weights_NxT, distance_NxT, window: int) -> dict:
    """Exact match, token accuracy, and token accuracy within / beyond `window` tokens of the copied token."""
    w = weights_NxT > 0
    exact_N = np.all(correct_NxT | ~w, axis=1)
    beyond, within = w & (distance_NxT > window), w & (distance_NxT <= window)
    mean = lambda mask: float(correct_NxT[mask].mean()) if mask.any() else None
    return {"exact_match": float(exact_N.mean()), "token_accuracy": mean(w), "within": mean(within),
            "beyond": mean(beyond)}


def majority_correct(targets_NxT, weights_NxT) -> np.ndarray:
    """Correctness of predicting, at each answer position, the probes' most frequent answer token there."""
    from jaxformer.data.synthetic import trivial_correct

    return trivial_correct({"targets": targets_NxT, "weights": weights_NxT, "inputs": targets_NxT})["majority"]


def evaluate(argmax_fn, params, dataset, *, lengths: list[int], depths: list[float], examples: int, window: int,
             batch_tokens: int, split: str = "val", max_length: int | None = None) -> list[dict]:
    """One record per (length, depth): the five methods' scores (module docstring), `beyond_fraction` (answer
    tokens whose source lies beyond `window`). Lengths past `max_length` (a learned table) have only the
    sliding-window and trivial rows."""
    out = []
    for T in lengths:
        for depth in depths:
            rows = dataset.probe(split, length=T, depth=depth, count=examples)
            inputs, targets = np.asarray(rows["inputs"], np.int32), np.asarray(rows["targets"], np.int32)
            weights, distance = np.asarray(rows["weights"]), np.asarray(rows["distance"])
            w = weights > 0
            record = {"length": T, "depth": depth, "examples": examples,
                      "beyond_fraction": float((distance[w] > window).mean()),
                      "na": None if max_length is None or T <= max_length else
                      f"n/a ({T} tokens exceed the {max_length}-position table)"}
            score = lambda correct, weights=weights, distance=distance: scores(correct, weights, distance, window)
            if record["na"] is None:
                record["teacher_forced"] = score(_batched(argmax_fn, params, inputs, batch_tokens) == targets)
                record["free_running"] = score(greedy_decode(argmax_fn, params, inputs, weights,
                                                             batch_tokens=batch_tokens) == targets)
            record["sliding_window"] = score(greedy_decode(argmax_fn, params, inputs, weights, window=window,
                                                           batch_tokens=batch_tokens) == targets)
            record["majority"] = score(majority_correct(targets, weights))
            record["repeat"] = score(inputs == targets)
            out.append(record)
    return out


def evaluate_run(run_dir: str, graphdef, params, dataset, cfg, *, lengths: list[int], depths: list[float],
                 examples: int, batch_tokens: int, split: str, zero_shot_params=None) -> dict:
    """Evaluates a run (and, with `zero_shot_params`, the parameters it started from under its config) and writes
    `<run_dir>/context.json`."""
    if getattr(dataset, "bos_id", None) is not None:
        raise ValueError("eval_depths with data.bos=True is not supported; set --config.data.bos=False")
    argmax_fn = compile_argmax(graphdef)
    kw = dict(lengths=lengths, depths=depths, examples=examples, window=cfg.data.block_size,
              batch_tokens=batch_tokens, split=split, max_length=positional.max_length(cfg.model.position))
    result = {"block_size": cfg.data.block_size, "seed": cfg.train.seed, "data": cfg.data.name,
              "records": evaluate(argmax_fn, params, dataset, **kw)}
    if zero_shot_params is not None:
        result["zero_shot"] = evaluate(argmax_fn, zero_shot_params, dataset, **kw)
    run_lib.atomic_write(os.path.join(run_dir, RESULT_FILE), json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def check_depths(depths) -> list[float]:
    """The sweep's eval_depths as floats in [0, 1]; a one-line error otherwise."""
    out = [float(d) for d in depths]
    bad = [d for d in out if not 0.0 <= d <= 1.0]
    if bad:
        raise ValueError(f"eval_depths={tuple(depths)}: {bad[0]} is outside [0, 1]; a depth is the fraction of the "
                         "context before the key, e.g. (0.0, 0.25, 0.5, 0.75, 1.0)")
    return out


# ------------------------------------------------------------------------------------------------------ the report

def load(sweep_dir: str) -> dict[str, dict[int, list[dict]]]:
    """{variant: {seed: records}} of the evaluated runs in sweep order; a run's zero-shot records are the variant
    "<variant> zero-shot"."""
    found = []
    for run_dir in sorted(glob.glob(os.path.join(sweep_dir, "runs", "*"))):
        paths = [os.path.join(run_dir, f) for f in (RESULT_FILE, "extrapolation.json")]
        if all(os.path.exists(p) for p in paths):
            context, run = (run_lib.read_json(p) for p in paths)
            found.append((run["index"], run["variant"], run["seed"], context))
    out: dict[str, dict[int, list[dict]]] = {}
    for _, variant, seed, context in sorted(found, key=lambda x: x[0]):
        if context.get("zero_shot"):
            out.setdefault(f"{variant} zero-shot", {})[seed] = context["zero_shot"]
    for _, variant, seed, context in sorted(found, key=lambda x: x[0]):
        out.setdefault(variant, {})[seed] = context["records"]
    return out


def per_seed(runs: dict[int, list[dict]], length: int, method: str, key: str, depth: float | None = None) -> dict:
    """{seed: the method's `key` score at `length`} at one depth, or (depth None) averaged over the depths."""
    out = {}
    for seed, records in runs.items():
        values = [r[method][key] for r in records if r["length"] == length and (depth is None or r["depth"] == depth)
                  and r.get(method) and r[method][key] is not None]
        if values:
            out[seed] = float(np.mean(values))
    return out


def _cell(values: dict, percent: bool = True) -> str:
    if not values:
        return "-"
    x = np.asarray(list(values.values()), np.float64) * (100 if percent else 1)
    return f"{x.mean():.1f}" + (f" ± {x.std(ddof=1):.1f}" if x.size > 1 else "")


def _diff_cell(test: dict | None) -> str:
    if test is None:
        return "-"
    text = f"{100 * test['mean']:+.1f} [{100 * test['lo']:+.1f}, {100 * test['hi']:+.1f}]"
    if "p_holm" not in test:
        return f"{text} p={test['p']:.3f} (no family)"
    text += f" p={test['p']:.3g}/{test['p_holm']:.3g}/{test['p_bh']:.3g}"
    return f"**{text}**" if test["significant"] else f"{text} tie"


def comparisons(runs_by_variant: dict, *, window: int, lengths: list[int], settings: dict) -> list[dict]:
    """The paired tests of the report, over seeds (the selection seeds left out), free-running exact match averaged
    over the depths: each variant against its own sliding window at every length beyond `window` (does it use the
    longer context?) and against the reference at every length; adjusted within "<family>/context"."""
    from jaxformer import statistics

    skip = set(settings.get("selection_seeds", ()))
    keep = lambda d: {s: v for s, v in d.items() if s not in skip}
    reference = settings.get("reference")
    declared = settings.get("families") or {}
    families = dict(declared) if declared else {"all": tuple(v for v in runs_by_variant if v != reference)}
    tests = []
    for variant, runs in runs_by_variant.items():
        family = next((f for f, members in families.items() if variant in members), None)
        for T in lengths:
            free = keep(per_seed(runs, T, "free_running", "exact_match"))
            if T > window:
                test = statistics.paired_test(free, keep(per_seed(runs, T, "sliding_window", "exact_match")))
                tests.append({"variant": variant, "length": T, "against": f"sliding window {window}",
                              "family": family, "test": test})
            if reference in runs_by_variant and variant != reference:
                test = statistics.paired_test(free, keep(per_seed(runs_by_variant[reference], T, "free_running",
                                                                   "exact_match")))
                tests.append({"variant": variant, "length": T, "against": reference, "family": family, "test": test})
    for family in families:
        statistics.adjust([t["test"] for t in tests if t["family"] == family and t["test"]],
                          settings.get("correction", "holm"))
    return tests


def report_lines(sweep_dir: str, settings: dict) -> list[str]:
    """context.md's lines (empty when no run has context.json)."""
    runs_by_variant = load(sweep_dir)
    if not runs_by_variant:
        return []
    first = next(iter(next(iter(runs_by_variant.values())).values()))
    context = run_lib.read_json(sorted(glob.glob(os.path.join(sweep_dir, "runs", "*", RESULT_FILE)))[0])
    window, data = context["block_size"], context["data"]
    lengths = sorted({r["length"] for r in first})
    depths = sorted({r["depth"] for r in first})
    out = [f"# Effective context: {data}, trained at L = {window}", "",
           f"{first[0]['examples']} probes per (length, depth), the same for every run. Cells: percent, mean ± sample "
           "std over seeds. Rows: the variant decoding free-running (greedy, its own earlier answer tokens fed "
           f"back); `(sliding {window})` the same model seeing only the last {window} tokens (it cannot see a key "
           "farther back: where a variant equals this row it does not use the longer context); `majority` the "
           "most frequent answer token at each answer position; `repeat` the previous token (teacher-forced). "
           "Depth: where the key sits in the filler (passkey) or the fraction of the pairs before the filler "
           "(MQAR).", ""]
    reference = runs_by_variant[next(iter(runs_by_variant))]
    for T in lengths:
        beyond = float(np.mean([r["beyond_fraction"] for r in first if r["length"] == T]))  # over the depths
        out += [f"## Exact match (%) at length {T} ({T / window:g}× L; {100 * beyond:.0f}% of the answer tokens "
                f"copy from more than {window} tokens back)", "",
                "| row | seeds | " + " | ".join(f"depth {d:g}" for d in depths) + " | all depths |",
                "|---|---|" + "---|" * (len(depths) + 1)]
        for variant, runs in runs_by_variant.items():
            for method, label in (("free_running", variant), ("sliding_window", f"{variant} (sliding {window})")):
                cells = [_cell(per_seed(runs, T, method, "exact_match", d)) for d in depths]
                row = per_seed(runs, T, method, "exact_match")
                out.append(f"| {label} | {len(row)} | " + " | ".join(cells) + f" | {_cell(row)} |")
        for method in ("majority", "repeat"):
            cells = [_cell(per_seed(reference, T, method, "exact_match", d)) for d in depths]
            out.append(f"| {method} | - | " + " | ".join(cells) +
                       f" | {_cell(per_seed(reference, T, method, 'exact_match'))} |")
        out.append("")
    out += ["## Token accuracy (%) of the answer tokens that copy from beyond L, all depths", "",
            "Free-running / sliding window / teacher-forced; `-` where no answer token lies beyond L.", "",
            "| variant | " + " | ".join(f"{T}" for T in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for variant, runs in runs_by_variant.items():
        cells = [" / ".join(_cell(per_seed(runs, T, m, "beyond")).split(" ±")[0]
                            for m in ("free_running", "sliding_window", "teacher_forced")) for T in lengths]
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    if settings.get("statistics"):
        tests = comparisons(runs_by_variant, window=window, lengths=lengths, settings=settings)
        correction = {"holm": "Holm", "bh": "Benjamini–Hochberg"}[settings.get("correction", "holm")]
        selection = settings.get("selection_seeds") or ()
        out += ["", "## Paired differences over seeds (free-running exact match, all depths, percentage points)", "",
                f"Mean [95% paired t interval] p = raw / Holm / Benjamini–Hochberg (paired t test; adjusted within "
                f"the variant's family of these tests, `<family>/context`). **Bold**: significant at 5% after the "
                f"{correction} correction; `tie`: not. Selection seeds left out: "
                f"{', '.join(map(str, selection)) if selection else 'none'}.", "",
                "| variant | against | family | " + " | ".join(str(T) for T in lengths) + " |",
                "|---|---|---|" + "---|" * len(lengths)]
        for variant in runs_by_variant:
            for against in dict.fromkeys(t["against"] for t in tests if t["variant"] == variant):
                row = {t["length"]: t for t in tests if t["variant"] == variant and t["against"] == against}
                family = next(iter(row.values()))["family"]
                out.append(f"| {variant} | {against} | {family + '/context' if family else '-'} | " +
                           " | ".join(_diff_cell(row[T]["test"]) if T in row else "" for T in lengths) + " |")
    return out


def write_report(sweep_dir: str, settings: dict) -> bool:
    """Writes `<sweep_dir>/context.md` when any run has context.json; True if it did."""
    lines = report_lines(sweep_dir, settings)
    if lines:
        run_lib.atomic_write(os.path.join(sweep_dir, "context.md"), "\n".join(lines) + "\n")
    return bool(lines)
