"""How flat each run's validation loss is at the end of training (the experiment's "flattened" criterion).

For every run of a sweep directory: the val loss at the training length (train.eval_iters fixed random batches,
metrics.jsonl) at the final step and `--window` steps before it, and the relative improvement between them. A run
has flattened when that improvement is below `--threshold` (default: 0.5% over the last 500 steps).

    python experiments/pe_extrapolation/flatness.py experiments/pe_extrapolation/shakespeare
"""

import argparse
import glob
import json
import os
import statistics
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--window", type=int, default=500, help="steps before the final one to compare with")
    p.add_argument("--threshold", type=float, default=0.005, help="largest relative improvement that is flat")
    args = p.parse_args()
    flat = total = 0
    by_variant: dict[str, list[float]] = {}  # relative improvement of each finished run, per position encoding
    print(f"{'run':36s} {'val@end-' + str(args.window):>12s} {'val@end':>8s} {'change':>8s}  flat")
    for run in sorted(glob.glob(os.path.join(args.sweep_dir, "runs", "*"))):
        with open(os.path.join(run, "config.json")) as f:
            steps = json.load(f)["train"]["steps"]
        path = os.path.join(run, "metrics.jsonl")
        vals = {}
        if os.path.exists(path):
            with open(path) as f:
                vals = {m["step"]: m["val_loss"] for m in map(json.loads, filter(str.strip, f)) if "val_loss" in m}
        if steps not in vals or steps - args.window not in vals:
            print(f"{os.path.basename(run):36s} (not finished)")
            continue
        before, end = vals[steps - args.window], vals[steps]
        change = (before - end) / before
        ok = change < args.threshold
        flat, total = flat + ok, total + 1
        with open(os.path.join(run, "config.json")) as f:
            by_variant.setdefault(json.load(f)["model"]["position"]["name"], []).append(change)
        print(f"{os.path.basename(run):36s} {before:12.4f} {end:8.4f} {-100 * change:+7.2f}%  {'yes' if ok else 'NO'}")
    for name, changes in sorted(by_variant.items()):
        print(f"{name:12s} improved {100 * statistics.median(changes):.2f}% (median of {len(changes)}; "
              f"{100 * min(changes):.2f}-{100 * max(changes):.2f}%), "
              f"{sum(c < args.threshold for c in changes)} flat")
    print(f"{flat} of {total} finished runs improved by less than {100 * args.threshold:g}% over their last "
          f"{args.window} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
