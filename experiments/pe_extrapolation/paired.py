"""Paired per-seed differences the sweep report does not give (issue 22's write-up), from a sweep's run files.

`jaxformer report` pairs every variant with the reference (RoPE) only. The write-up also needs:
  1. each variant's full-context loss against its own sliding-window loss at 2x..8x (does the longer context help,
     hurt, or tie?), paired per seed;
  2. every pair of variants at every eval length (e.g. KERPLE vs T5, ALiBi vs KERPLE at 8x), paired per seed;
  3. per length, the variants ranked by mean loss with the difference between neighbours.
`--with OTHER_SWEEP` adds another sweep's variants (a control run beside the comparison, e.g. fire_init_L/) to the
ranking and pairs them with this sweep's; a variant of both is kept twice (the other's renamed `variant (other)`) or,
with `--replace`, this sweep's runs stand in for the other's (shakespeare_lr4/: FIRE re-run at its best of 4 rates
takes FIRE's place in the comparison).
Every interval is jaxformer.statistics.paired_test (95% paired Student-t over the seeds both runs have, and the paired
t test's p, from scipy.stats), on the full-precision losses of runs/*/extrapolation.json that results.csv is written
from. The seeds a sweep names in `selection_seeds` (the learning-rate selection runs) are left out of every pair.
Each of the three sections is one family of tests (declared in issue 33, after the runs): Holm's adjusted p decides
"significant" (bold), Benjamini-Hochberg's is given beside it. Writes <sweep>/paired.md and prints it.

    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/shakespeare
    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/fire_init_L \
        --with experiments/pe_extrapolation/shakespeare
    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/shakespeare_lr4 \
        --with experiments/pe_extrapolation/shakespeare --replace
"""

import argparse
import itertools
import os
import sys

from jaxformer import statistics, sweep
from jaxformer.sweeps import aggregate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def cell(diff: dict | None, *, digits: int = 3, words: tuple[str, str] = ("", "")) -> str:
    """`mean [lo, hi] p (Holm, BH)`, bold where significant after Holm within its family, `tie` otherwise (with
    `(BH)` where only Benjamini-Hochberg's p <= 0.05); `words` name the sign of a significant difference
    (negative, positive)."""
    if diff is None:
        return "-"
    text = (f"{diff['mean']:+.{digits}f} [{diff['lo']:+.{digits}f}, {diff['hi']:+.{digits}f}] p={diff['p']:.2g} "
            f"({diff['p_holm']:.2g}, {diff['p_bh']:.2g})")
    if not diff["significant"]:
        return f"{text} tie" + (" (BH)" if diff["p_bh"] <= 0.05 else "")
    word = words[diff["mean"] > 0]
    return f"**{text}**" + (f" {word}" if word else "")


SKIP: set = set()  # the selection seeds of the sweeps being paired (report() sets them)


def by_seed(x: dict, sliding: bool = False) -> dict[int, float]:
    seeds, values = (x["sliding_seeds"], x["sliding_losses"]) if sliding else (x["loss_seeds"], x["losses"])
    return {s: v for s, v in zip(seeds, values, strict=True) if s not in SKIP}


def _mean(x: dict) -> float | None:
    values = list(by_seed(x).values())
    return sum(values) / len(values) if values else None


def _variants(sweep_dir: str) -> list[dict]:
    results, unfinished = aggregate.load_results(sweep_dir)
    if unfinished:
        raise SystemExit(f"{sweep_dir}: {len(unfinished)} runs not evaluated yet ({', '.join(unfinished)}); "
                         "finish the sweep first")
    if not results:
        raise SystemExit(f"{sweep_dir}: no evaluated runs under {sweep_dir}/runs")
    return aggregate.aggregate(results)


def report(sweep_dir: str, label: str | None = None, with_dirs: tuple[str, ...] = (), replace: bool = False) -> str:
    """The markdown of paired.md; `label` names the sweep in it (default: its path from the repository root).
    `with_dirs`: other sweeps (the same seeds and eval lengths) whose variants join the ranking and are paired with
    this sweep's variants, e.g. a control beside the comparison; pairs within them are left out. A variant in both
    is kept twice, the other sweep's renamed `variant (folder)`, or with `replace` only this sweep's."""
    label = label or os.path.relpath(os.path.abspath(sweep_dir), ROOT)
    SKIP.clear()
    for d in (sweep_dir, *with_dirs):
        SKIP.update(sweep.sweep_settings(d)["selection_seeds"])
    own = _variants(sweep_dir)
    variants = list(own)
    for other in with_dirs:
        for v in _variants(other):
            if [x["multiplier"] for x in v["lengths"]] != [x["multiplier"] for x in own[0]["lengths"]]:
                raise SystemExit(f"{other}: eval lengths differ from {sweep_dir}'s; pair sweeps with the same lengths")
            if any(v["variant"] == u["variant"] for u in variants):
                if replace:
                    continue
                v = {**v, "variant": f"{v['variant']} ({os.path.basename(os.path.normpath(other))})"}
            variants.append(v)
    command = " ".join([label, *(f"--with {os.path.relpath(os.path.abspath(d), ROOT)}" for d in with_dirs),
                        *(["--replace"] if replace else [])])
    lengths = [(x["multiplier"], x["length"]) for x in variants[0]["lengths"]]
    head = " | ".join(f"{m}× ({n})" for m, n in lengths)
    seeds = sorted({s for v in variants for s in v["seeds"]} - SKIP)
    skipped = f" (seed {', '.join(map(str, sorted(SKIP)))}, the learning-rate selection run, left out)" if SKIP else ""
    out = [f"# Paired differences: {label}", "",
           f"{len(variants)} variants, seeds {', '.join(map(str, seeds))}{skipped}; written by "
           f"`python experiments/pe_extrapolation/paired.py {command}`. Each cell: mean of the "
           "per-seed differences [95% paired Student-t interval] p=paired t test (Holm, Benjamini-Hochberg "
           "adjusted within the section: each section is one family); **bold**: significant after Holm; `tie`: "
           "not, `tie (BH)` where only Benjamini-Hochberg's p <= 0.05.", ""]

    out += ["## Full context against the variant's own sliding window", "",
            "Full-context loss − sliding-window loss (window = the training length, stride as in the report) over "
            "the same tokens, per seed. Negative: the longer context helps (the variant extrapolates in the sense "
            "of using it); positive: it hurts (a 64-token window does better). At 1× the two are the same "
            "evaluation.", "",
            f"| variant | {head} |", "|---|" + "---|" * len(lengths)]
    rows = [(v["variant"], [statistics.paired_test(by_seed(x), by_seed(x, sliding=True)) if x["multiplier"] > 1
                            else "(same)" for x in v["lengths"]]) for v in own]
    statistics.adjust([t for _, tests in rows for t in tests if isinstance(t, dict)], "holm")
    for name, tests in rows:
        cells = [t if isinstance(t, str) else cell(t, digits=4, words=("helps", "hurts")) for t in tests]
        out.append(f"| {name} | " + " | ".join(cells) + " |")

    out += ["", "## Ranking at each length, with the difference to the next variant", "",
            "Variants by mean full-context loss; between two neighbours, the paired difference (next − previous).",
            ""]
    rankings = []
    for i, (m, n) in enumerate(lengths):
        ranked = sorted(((_mean(v["lengths"][i]), v) for v in variants if _mean(v["lengths"][i]) is not None),
                        key=lambda t: t[0])
        steps = [statistics.paired_test(by_seed(b["lengths"][i]), by_seed(a["lengths"][i]))
                 for (_, a), (_, b) in itertools.pairwise(ranked)]
        rankings.append((m, n, ranked, steps))
    statistics.adjust([d for *_, steps in rankings for d in steps if d], "holm")
    for m, n, ranked, steps in rankings:
        parts = [f"{ranked[0][1]['variant']} {ranked[0][0]:.3f}"]
        for d, (loss, b) in zip(steps, ranked[1:], strict=True):
            parts.append(f"({cell(d, digits=4)}) {b['variant']} {loss:.3f}")
        out.append(f"- {m}× ({n}): " + " ".join(parts))

    out += ["", "## Every pair of variants, full context", "",
            "A − B per seed (negative: A is better).", "", f"| A − B | {head} |", "|---|" + "---|" * len(lengths)]
    rows = [(f"{a['variant']} − {b['variant']}", [statistics.paired_test(by_seed(x), by_seed(y))
                                                    for x, y in zip(a["lengths"], b["lengths"], strict=True)])
            for a, b in itertools.combinations(sorted(variants, key=lambda v: v["variant"]), 2)
            if any(a is v or b is v for v in own)]
    statistics.adjust([t for _, tests in rows for t in tests if t], "holm")
    for name, tests in rows:
        out.append(f"| {name} | " + " | ".join(cell(t) for t in tests) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--with", dest="with_dirs", action="append", default=[], metavar="SWEEP_DIR",
                   help="another sweep whose variants are paired with this one's (repeatable)")
    p.add_argument("--replace", action="store_true",
                   help="a variant of this sweep replaces the --with sweep's variant of the same name")
    args = p.parse_args()
    if args.replace and not args.with_dirs:
        p.error("--replace needs --with SWEEP_DIR (the sweep whose variants this one's replace)")
    text = report(args.sweep_dir, with_dirs=tuple(args.with_dirs), replace=args.replace)
    with open(os.path.join(args.sweep_dir, "paired.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
