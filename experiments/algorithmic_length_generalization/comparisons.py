"""The paired comparisons the algorithmic README discusses, from the sweep's run directories alone.

For each task, the mean exact match over the OOD sizes (11..40), paired by seed (the same seed gives the same data
order and initial draw): 95% t intervals of the per-seed differences and the paired t test's p (jaxformer.statistics).
Families (declared in issue 33, after the runs): each paper's table (Ruoss et al.: randomized minus plain; Kazemnejad
et al.: NoPE minus each explicit encoding), both metrics together, within one analysis; Holm's adjusted p decides the
verdict, Benjamini-Hochberg's is given beside it. The primary analysis uses every seed; the papers' precondition (a
pair counts a seed only when both models reached >= 99% exact match on the training sizes) selects on an outcome after
training, so it is a secondary analysis beside it. Each task's table also gives the trivial baselines (the majority
answer token per answer position, repeat-previous-token) on the same examples. Writes `comparisons.md` beside this
file:

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


def _pair(runs: dict, a: tuple, b: tuple, metric: str, precondition: bool = True) -> tuple:
    """(paired test, or the text of a one-seed / missing cell; seeds note) for a - b over the seeds where both reached
    the in-distribution precondition (all shared seeds without `precondition`)."""
    if a not in runs or b not in runs:
        return "-", "-"
    shared = sorted(set(runs[a]) & set(runs[b]))
    kept = [s for s in shared if not precondition or (runs[a][s]["id"] >= REACHED and runs[b][s]["id"] >= REACHED)]
    note = f"{len(kept)}/{len(shared)}"
    d = statistics.paired_test({s: runs[a][s][metric] for s in kept}, {s: runs[b][s][metric] for s in kept})
    if d is None:
        if len(kept) == 1:
            s = kept[0]
            return f"{runs[a][s][metric] - runs[b][s][metric]:+.3f} (1 seed)", note
        return "-", note
    return d, note


def _cell(d) -> str:
    """mean [95% interval] p (Holm, BH) and the verdict under Holm (`higher` / `lower` / `tie`)."""
    if isinstance(d, str):
        return d
    sign = "higher" if d["mean"] > 0 else "lower"
    verdict = sign if d["significant"] else (f"tie (BH: {sign})" if d["p_bh"] <= 0.05 else "tie")
    return (f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] p={d['p']:.2g} (Holm {d['p_holm']:.2g}, "
            f"BH {d['p_bh']:.2g}) {verdict}")


def baselines(task: str, sizes: range, examples: int = 64) -> dict:
    """OOD exact match and token accuracy of the trivial predictors on the evaluation's examples (the same
    `sized` rows, a pure function of the size): the majority answer token per answer position, and
    repeat-previous-token (teacher-forced: each answer token predicted as the token before it)."""
    import numpy as np

    from jaxformer.data import SyntheticDataset

    ds = SyntheticDataset(task)
    scores = {"majority": [], "repeat": []}
    for n in sizes:
        rows = ds.sized("val", items=n, count=examples, length=ds.length(n) - 1)
        w, t, x = rows["weights"] > 0, rows["targets"], rows["inputs"]
        majority = np.zeros_like(w)
        for col in np.flatnonzero(w.any(0)):
            values, counts = np.unique(t[w[:, col], col], return_counts=True)
            majority[:, col] = t[:, col] == values[np.argmax(counts)]
        for name, correct in (("majority", majority), ("repeat", x == t)):
            scores[name].append((float(np.all(correct | ~w, axis=1).mean()), float(correct[w].mean())))
    return {name: tuple(float(np.mean(v)) for v in zip(*values, strict=True)) for name, values in scores.items()}


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
        for name, (exact, tokens) in baselines(task, range(11, 41)).items():
            lines.append(f"| {name} (trivial baseline) | - | - | - | {100 * exact:.1f} | {100 * tokens:.1f} |")
        lines.append("")
    return lines


def tables(runs: dict) -> list[str]:
    tasks = sorted({task for _, _, task in runs})
    lines = []
    for precondition in (False, True):
        which = ("every seed (the primary analysis)" if not precondition else
                 "seeds where both reached >= 99% in distribution (secondary: selects on an outcome after training)")
        seeds_head = "seeds (both reached / run)" if precondition else "seeds"
        for paper in ("ruoss", "kazemnejad"):  # a family each: both metrics, every task, this analysis
            rows = []
            for metric, what in (("ood", "OOD exact match"), ("ood_tokens", "OOD token accuracy")):
                if paper == "ruoss":
                    head = f"## Ruoss et al. 2023: randomized minus plain positions, {what}; {which}"
                    pairs = [(task, f"{name}_randomized ({positions} eval positions) - {name}",
                              (f"{name}_randomized", positions, task), (name, "ordered", task))
                             for task in tasks for name in RANDOMIZED for positions in ("ordered", "random")]
                else:
                    head = f"## Kazemnejad et al. 2023: NoPE minus each explicit encoding, {what}; {which}"
                    pairs = [(task, f"none - {name}", ("none", "ordered", task), (name, "ordered", task))
                             for task in tasks for name in EXPLICIT]
                rows.append((head, [(task, label, *_pair(runs, a, b, metric, precondition))
                                    for task, label, a, b in pairs]))
            statistics.adjust([d for _, cells in rows for _, _, d, _ in cells if isinstance(d, dict)], "holm")
            for head, cells in rows:
                lines += [head, "", f"| task | pair (a - b) | difference [95% CI] p (Holm, BH) | {seeds_head} |",
                          "|---|---|---|---|"]
                lines += [f"| {task} | {label} | {_cell(d)} | {note} |" for task, label, d, note in cells]
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
           "(11..40), its 95% paired t interval, the paired t test's p with its Holm and Benjamini-Hochberg adjusted "
           "values (the family: the paper's table, both metrics, one analysis), and the verdict under Holm: "
           "`higher` / `lower` where Holm's p <= 0.05, else `tie` (`(BH: ...)` where only Benjamini-Hochberg's p <= "
           "0.05). With one usable seed, that seed's difference, no interval and no test. The primary analysis uses "
           "every seed; the secondary one only seeds where both models reached >= 99% exact match on the training "
           "sizes (the papers' precondition, an outcome of training); `-` where fewer than one is left. Trivial "
           "baselines in the per-task tables: `majority` predicts each answer position's most frequent token, "
           "`repeat` the token before it (teacher-forced), on the same 64 examples per size.",
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
