"""The paired comparisons the algorithmic README discusses, from the sweep's run directories alone.

For each task, the mean exact match over the OOD sizes (11..40), paired by seed (the same seed gives the same data
order and initial draw): 95% t intervals of the per-seed differences (jaxformer.statistics), a tie where the interval
contains 0. The papers compare models that solve the task in distribution first: a pair counts a seed only when both
models reached >= 99% exact match on the training sizes; the table says how many seeds that left. Writes
`comparisons.md` beside this file:

    python experiments/algorithmic_length_generalization/comparisons.py [SWEEP_DIR (default: ./sweep beside it)]
"""

from __future__ import annotations

import glob
import json
import os
import sys

from jaxformer import statistics

REACHED = 0.99
EXPLICIT = ("sinusoidal", "learned", "rope", "xpos", "alibi", "t5", "kerple", "fire")
RANDOMIZED = ("rope", "alibi", "sinusoidal")


def load(sweep_dir: str) -> dict:
    """{(variant, eval positions, task): {seed: {"id": in-distribution exact match, "ood": OOD exact match,
    "ood_tokens": OOD token accuracy}}}; eval positions "ordered" (0..T-1) or "random" (the authors' protocol)."""
    out: dict = {}
    for path in sorted(glob.glob(os.path.join(sweep_dir, "runs", "*", "extrapolation.json"))):
        with open(path) as f:
            r = json.load(f)
        variant = dict(r["axes"])["variant"]
        task = r["data"].split("/", 1)[1]
        for positions, key in (("ordered", "sizes"), ("random", "sizes_random_positions")):
            sizes = r.get(key)
            if not sizes or not sizes.get("in_distribution") or not sizes.get("ood"):
                continue  # e.g. a learned table shorter than every OOD size: nothing out of distribution ran
            out.setdefault((variant, positions, task), {})[r["seed"]] = {
                "id": sizes["in_distribution"]["exact_match"], "ood": sizes["ood"]["exact_match"],
                "ood_tokens": sizes["ood"]["token_accuracy"]}
    return out


def _pair(runs: dict, a: tuple, b: tuple, metric: str, precondition: bool = True) -> tuple[str, str]:
    """(cell, seeds note) for a - b over the seeds where both reached the in-distribution precondition (all shared
    seeds without `precondition`)."""
    if a not in runs or b not in runs:
        return "-", "-"
    shared = sorted(set(runs[a]) & set(runs[b]))
    kept = [s for s in shared if not precondition or (runs[a][s]["id"] >= REACHED and runs[b][s]["id"] >= REACHED)]
    note = f"{len(kept)}/{len(shared)}"
    d = statistics.paired_difference({s: runs[a][s][metric] for s in kept}, {s: runs[b][s][metric] for s in kept})
    if d is None:
        if len(kept) == 1:
            s = kept[0]
            return f"{runs[a][s][metric] - runs[b][s][metric]:+.3f} (1 seed)", note
        return "-", note
    verdict = "tie" if d["tie"] else ("higher" if d["lo"] > 0 else "lower")
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {verdict}", note


def _mean_std(values: list[float], percent: bool = True) -> str:
    if not values:
        return "-"
    scale = 100.0 if percent else 1.0
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{scale * mean:.1f} ± {scale * std:.1f}"


def task_tables(runs: dict) -> list[str]:
    """Per task: every variant (and the randomized ones at randomized eval positions) with how many seeds reached
    the precondition, and exact match in distribution / OOD and OOD token accuracy (%, mean ± std over seeds)."""
    tasks = sorted({task for _, _, task in runs})
    order = ["none", *EXPLICIT, *(f"{n}_randomized" for n in RANDOMIZED)]
    lines = []
    for task in tasks:
        lines += [f"## {task}", "", "| variant | eval positions | reached | exact match, train sizes (%) | "
                  "exact match, OOD (%) | token accuracy, OOD (%) |", "|---|---|---|---|---|---|"]
        for variant in order:
            for positions in ("ordered", "random"):
                seeds = runs.get((variant, positions, task))
                if not seeds:
                    continue
                values = list(seeds.values())
                reached = sum(v["id"] >= REACHED for v in values)
                lines.append(f"| {variant} | {'0..T-1' if positions == 'ordered' else 'random'} | "
                             f"{reached}/{len(values)} | {_mean_std([v['id'] for v in values])} | "
                             f"{_mean_std([v['ood'] for v in values])} | "
                             f"{_mean_std([v['ood_tokens'] for v in values])} |")
        lines.append("")
    return lines


def tables(runs: dict) -> list[str]:
    tasks = sorted({task for _, _, task in runs})
    lines = []
    for precondition in (True, False):
        which = ("seeds where both reached >= 99% in distribution" if precondition else
                 "every seed, the precondition NOT applied (as a sensitivity check)")
        seeds_head = "seeds (both reached / run)" if precondition else "seeds"
        for metric, what in (("ood", "OOD exact match"), ("ood_tokens", "OOD token accuracy")):
            lines += [f"## Ruoss et al. 2023: randomized minus plain positions, {what}; {which}", "",
                      f"| task | pair (a - b) | difference [95% CI] | {seeds_head} |", "|---|---|---|---|"]
            for task in tasks:
                for name in RANDOMIZED:
                    for positions in ("ordered", "random"):
                        a = (f"{name}_randomized", positions, task)
                        cell, note = _pair(runs, a, (name, "ordered", task), metric, precondition)
                        lines.append(f"| {task} | {name}_randomized ({positions} eval positions) - {name} | "
                                     f"{cell} | {note} |")
            lines += ["", f"## Kazemnejad et al. 2023: NoPE minus each explicit encoding, {what}; {which}", "",
                      f"| task | pair (a - b) | difference [95% CI] | {seeds_head} |", "|---|---|---|---|"]
            for task in tasks:
                for name in EXPLICIT:
                    cell, note = _pair(runs, ("none", "ordered", task), (name, "ordered", task), metric,
                                       precondition)
                    lines.append(f"| {task} | none - {name} | {cell} | {note} |")
            lines.append("")
    return lines


def render(sweep_dir: str) -> str:
    """The text of comparisons.md for the sweep in `sweep_dir`."""
    runs = load(sweep_dir)
    seeds = sorted({s for per_seed in runs.values() for s in per_seed})
    out = ["# Per task, and the papers' comparisons paired by seed (written by comparisons.py from the run "
           "directories)", "",
           f"Seeds {seeds}. Per-task tables: `reached` = seeds at >= 99% exact match on the training sizes 1..10; "
           "exact match and token accuracy in %, mean ± sample std over seeds; `random` eval positions = each example "
           "at its own sorted draw from [0, 256), as Ruoss et al.'s code evaluates. OOD = the mean over sizes "
           "11..40 (a learned table: the sizes that fit its 32 rows).", "",
           "Paired tables: the mean over seeds of the per-seed difference a - b of the mean over the OOD sizes "
           "(11..40), its "
           "95% paired t interval and the verdict: `higher` (interval above 0), `lower` (below 0) or `tie` (contains "
           "0); with one usable seed, that seed's difference, no interval. Only seeds where both models reached >= 99% "
           "exact match on the training sizes count (the papers' precondition); `-` where fewer than one is left.",
           "", *task_tables(runs), *tables(runs)]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    sweep_dir = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep")
    text = render(sweep_dir)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comparisons.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
