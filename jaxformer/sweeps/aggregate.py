"""Reading a sweep's evaluated runs (`<run>/extrapolation.json`, `metrics.jsonl`, `timing.jsonl`) and aggregating
them per variant over seeds: the numbers the reports print (jaxformer/sweeps/reports.py) and plot (plots.py)."""

from __future__ import annotations

import glob
import json
import math
import os
import statistics

import numpy as np

from jaxformer import run as run_lib
from jaxformer.extrapolation import RESULT_FILE

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
