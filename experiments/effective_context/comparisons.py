"""Context extension measured by passkey retrieval (issue 33, 2b): each method against the base model's own sliding
window, from the run files alone.

For every method (zero-shot and fine-tuned) and eval length, free-running exact match averaged over the depths,
paired by seed with the base model (the run the method started from) read through a sliding window of its training
length L = 32 on the same probes: a method whose number equals that row does not use the context it was extended
to. The whole table is one family (declared in the sweep config's docstring before the runs: each method against
the window); Holm's adjusted p decides the verdict, Benjamini-Hochberg's is given beside it. Writes
`extension/comparisons.md`:

    python experiments/effective_context/comparisons.py [experiments/effective_context/extension]
"""

from __future__ import annotations

import os
import sys

import numpy as np

from jaxformer import effective_context, statistics

METHODS = ("none", "linear", "ntk", "yarn", "yarn_paper_bounds")
NAMES = {"none": "plain fine-tuning (no scaling)", "linear": "PI", "ntk": "NTK-aware",
         "yarn": "YaRN (bounds scaled to L)", "yarn_paper_bounds": "YaRN (paper's bounds)"}


def _cell(d) -> str:
    if d is None:
        return "-"
    sign = "above" if d["mean"] > 0 else "below"
    verdict = sign if d["significant"] else (f"tie (BH: {sign})" if d["p_bh"] <= 0.05 else "tie")
    return (f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] p={d['p']:.2g} "
            f"(Holm {d['p_holm']:.2g}, BH {d['p_bh']:.2g}) {verdict}")


def _mean_std(values: dict) -> str:
    x = 100 * np.asarray(list(values.values()), np.float64)
    return "-" if not x.size else f"{x.mean():.1f}" + (f" ± {x.std(ddof=1):.1f}" if x.size > 1 else "")


def render(sweep_dir: str) -> str:
    runs = effective_context.load(sweep_dir)
    base = effective_context.load(os.path.join(sweep_dir, "base"))
    paired = {s for seeds in runs.values() for s in seeds}  # the base runs the methods started from, paired by seed
    base_runs = {s: r for s, r in next(iter(base.values()), {}).items() if s in paired}
    lengths = sorted({r["length"] for seeds in runs.values() for records in seeds.values() for r in records})
    window = {T: effective_context.per_seed(base_runs, T, "sliding_window", "exact_match") for T in lengths}
    base_full = {T: effective_context.per_seed(base_runs, T, "free_running", "exact_match") for T in lengths}
    rows = []
    for kind in ("zero-shot", "fine-tuned"):
        for method in METHODS:
            name = f"{method} zero-shot" if kind == "zero-shot" else method
            if name not in runs:
                continue
            free = {T: effective_context.per_seed(runs[name], T, "free_running", "exact_match") for T in lengths}
            tests = [statistics.paired_test(free[T], window[T]) for T in lengths]
            rows.append((f"{NAMES[method]}, {kind}", free, tests))
    statistics.adjust([t for *_, tests in rows for t in tests if t], "holm")
    seeds = sorted({s for seeds in runs.values() for s in seeds})
    out = ["# Passkey retrieval after context extension (written by comparisons.py from the run files)", "",
           f"Seeds {seeds}. Free-running exact match (%), mean over the depths 0..1, mean ± std over seeds; the "
           "base model (RoPE trained at L = 32) in full context and through its 32-token sliding window on the same "
           "probes. Extended by factor 4 to 128 (the fine-tunes: 100 steps at 128).", "",
           "| model | " + " | ".join(str(T) for T in lengths) + " |", "|---|" + "---|" * len(lengths),
           "| base model, full context | " + " | ".join(_mean_std(base_full[T]) for T in lengths) + " |",
           "| base model, sliding window of 32 | " + " | ".join(_mean_std(window[T]) for T in lengths) + " |"]
    out += [f"| {name} | " + " | ".join(_mean_std(free[T]) for T in lengths) + " |" for name, free, _ in rows]
    out += ["", "Each model minus the base model's sliding window, paired by seed (percentage points; 95% paired t "
            "interval; p raw (Holm, BH) over the whole table as one family). `above`: the model retrieves keys the "
            "window cannot see, significant after Holm; `tie`: no evidence that it uses the longer context.", "",
            "| model − base window | " + " | ".join(str(T) for T in lengths) + " |", "|---|" + "---|" * len(lengths)]
    out += [f"| {name} | " + " | ".join(_cell(t) for t in tests) + " |" for name, _, tests in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    sweep_dir = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "extension")
    text = render(sweep_dir)
    with open(os.path.join(sweep_dir, "comparisons.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
