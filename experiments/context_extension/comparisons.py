"""The paired comparisons the context-extension README discusses, from the sweep's run directories alone.

Every point of a seed starts from the same base model, so methods are compared paired by seed (the base model's
seed-to-seed variation cancels): 95% t intervals of the per-seed loss differences and the paired t test's p
(jaxformer.statistics). The whole table is one family of tests (declared in issue 33, after the runs): Holm's
adjusted p decides `better` / `worse` (Benjamini-Hochberg's is given beside it); otherwise a tie. Writes
`comparisons.md` beside this file:

    python experiments/context_extension/comparisons.py [experiments/context_extension/sweep]
"""

from __future__ import annotations

import json
import os
import sys

from jaxformer import statistics

METHODS = ("none", "linear", "ntk", "yarn")
NAMES = {"none": "no scaling", "linear": "PI (linear)", "ntk": "NTK-aware", "yarn": "YaRN",
         "linear400": "PI (linear), 400 steps"}
CONTROL = "pi_400"  # beside the sweep: PI fine-tuned 4x longer (400 steps), from the same base runs
# (a, b, question): loss(a) - loss(b) per seed, at every eval length; < 0 means a is better.
PAIRS = [
    (("yarn", "fine-tuned"), ("ntk", "fine-tuned"), "YaRN <= NTK after fine-tuning (Peng et al. 2023)"),
    (("ntk", "fine-tuned"), ("linear", "fine-tuned"), "NTK <= PI after fine-tuning (Peng et al. 2023)"),
    (("yarn", "fine-tuned"), ("linear", "fine-tuned"), "YaRN <= PI after fine-tuning (Peng et al. 2023)"),
    (("linear", "fine-tuned"), ("linear", "zero-shot"), "PI needs the fine-tune (Chen et al. 2023)"),
    (("ntk", "zero-shot"), ("linear", "zero-shot"), "zero-shot: NTK <= PI (bloc97 2023; Peng et al. 2023)"),
    (("yarn", "zero-shot"), ("ntk", "zero-shot"), "zero-shot: YaRN <= NTK (Peng et al. 2023)"),
    (("yarn", "zero-shot"), ("none", "zero-shot"), "zero-shot: YaRN <= no scaling (the base model)"),
    (("none", "fine-tuned"), ("yarn", "fine-tuned"), "fine-tuning without scaling vs YaRN"),
    (("linear400", "fine-tuned"), ("linear", "fine-tuned"), "control: PI with a 4x longer fine-tune vs 100 steps"),
    (("linear400", "fine-tuned"), ("yarn", "fine-tuned"), "control: PI at 400 steps vs YaRN at 100"),
    (("linear400", "fine-tuned"), ("ntk", "fine-tuned"), "control: PI at 400 steps vs NTK at 100"),
]
BASELINE = "sliding window of the base model (64 tokens)"


def load(sweep_dir: str) -> tuple[dict, dict]:
    """({(method, "fine-tuned"|"zero-shot"): {seed: {length: loss}}}, {seed: {length: sliding-window loss}}); the
    control beside the sweep (`../pi_400`), where it is there, as the method "linear400"."""
    losses: dict = {}
    control = os.path.join(os.path.dirname(os.path.abspath(sweep_dir)), CONTROL)
    for method, folder, scaling in [*((m, sweep_dir, m) for m in METHODS), ("linear400", control, "linear")]:
        for seed in range(100):
            path = os.path.join(folder, "runs", f"scaling={scaling},seed={seed}", "extrapolation.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                r = json.load(f)
            for kind, lengths in (("fine-tuned", r["lengths"]), ("zero-shot", r["zero_shot"]["lengths"])):
                losses.setdefault((method, kind), {})[seed] = {x["length"]: x["loss"] for x in lengths
                                                               if x.get("na") is None}
    sliding = {}
    for seed in range(100):
        path = os.path.join(sweep_dir, "base", "runs", f"seed={seed}", "extrapolation.json")
        if os.path.exists(path):
            with open(path) as f:
                sliding[seed] = {x["length"]: x["sliding"]["loss"] for x in json.load(f)["lengths"]
                                 if x.get("sliding")}
    return losses, sliding


def _cell(d: dict | None) -> str:
    """mean [95% interval] p (Holm, BH) and the verdict under Holm."""
    if d is None:
        return "-"
    sign = "better" if d["mean"] < 0 else "worse"
    verdict = sign if d["significant"] else ("tie (BH: " + sign + ")" if d["p_bh"] <= 0.05 else "tie")
    return (f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] p={d['p']:.2g} (Holm {d['p_holm']:.2g}, "
            f"BH {d['p_bh']:.2g}) {verdict}")


def table(losses: dict, sliding: dict) -> list[str]:
    lengths = sorted({T for per_seed in losses.values() for x in per_seed.values() for T in x})
    head = "| comparison (a - b) | " + " | ".join(f"{T}" for T in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]

    def at(rows: dict, T: int) -> dict:
        return {s: x[T] for s, x in rows.items() if T in x}

    rows = []
    for a, b, question in PAIRS:
        if a not in losses or b not in losses:
            continue
        tests = [statistics.paired_test(at(losses[a], T), at(losses[b], T)) for T in lengths]
        rows.append((f"{NAMES[a[0]]} {a[1]} - {NAMES[b[0]]} {b[1]}: {question}", tests))
    for method in (*METHODS, "linear400"):
        key = (method, "fine-tuned")
        if key in losses:
            tests = [statistics.paired_test(at(losses[key], T), at(sliding, T)) for T in lengths]
            rows.append((f"{NAMES[method]} fine-tuned - {BASELINE}", tests))
    statistics.adjust([t for _, tests in rows for t in tests], "holm")  # the table is one family
    for name, tests in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(t) for t in tests) + " |")
    return lines


def render(sweep_dir: str) -> str:
    """The text of comparisons.md for the sweep in `sweep_dir`."""
    losses, sliding = load(sweep_dir)
    seeds = sorted({s for per_seed in losses.values() for s in per_seed})
    out = [
        "# Paired comparisons (written by comparisons.py from the run directories)", "",
        f"Seeds {seeds}. Cells: mean of the per-seed loss difference a - b (nats/token) at each eval length, its 95% "
        "paired t interval, the paired t test's p (df = seeds - 1) with its Holm and Benjamini-Hochberg adjusted "
        "values, and the verdict under Holm: `better` (a lower) or `worse` where Holm's p <= 0.05, else `tie`, with "
        "`(BH: better|worse)` where only Benjamini-Hochberg's p <= 0.05 (a 5% false discovery rate). The "
        "family is the whole table (every cell below, declared in issue 33 after the runs). Every point of a seed "
        "starts from the same base model.", "",
        *table(losses, sliding), "",
    ]
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
