"""The learning-rate grid's edge (issue 22): each variant's best of 4 rates, and the control sweep for the variants
whose best rate moved.

Seven variants were best at the top of the 3-rate grid (1.2e-2). shakespeare_lr_edge/ holds their seed-0 runs at
2.4e-2 (sweep_config.py there). This script reads those runs' whole-split loss at 1x beside the 3 rates of
shakespeare_lr/lr_choice.json and writes
  shakespeare_lr_edge/lr_choice.json  every variant's losses at the 4 rates and the best of them (the main
                                      comparison keeps its best of 3: `lr_main`);
  shakespeare_lr4/sweep_config.py     sweeps.positional narrowed to the variants whose best rate moved to 2.4e-2,
                                      each at that rate (5 seeds, the point names of the main comparison).
It copies no runs: the variants whose best rate did not move are the main comparison's runs (shakespeare/runs/),
which the supplementary comparison "every variant at its best of 4 rates" reads from there:

    python experiments/pe_extrapolation/select_edge.py
    jaxformer sweep --config experiments/pe_extrapolation/shakespeare_lr4/sweep_config.py \\
        --workdir experiments/pe_extrapolation/shakespeare_lr4
    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/shakespeare_lr4 \\
        --with experiments/pe_extrapolation/shakespeare --replace
"""

import glob
import importlib.util
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EDGE, LR4 = (os.path.join(HERE, d) for d in ("shakespeare_lr_edge", "shakespeare_lr4"))


def main() -> int:
    with open(os.path.join(HERE, "shakespeare_lr", "lr_choice.json")) as f:
        record = json.load(f)
    edge: dict[str, tuple[float, float, str]] = {}
    for path in sorted(glob.glob(os.path.join(EDGE, "runs", "*", "extrapolation.json"))):
        with open(path) as f:
            r = json.load(f)
        with open(os.path.join(os.path.dirname(path), "config.json")) as f:
            lr = json.load(f)["optim"]["lr"]
        loss = r["lengths"][0].get("loss")  # None: diverged (stopped), never chosen
        edge[r["position"]] = (lr, math.inf if loss is None else loss, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("edge_sweep", os.path.join(EDGE, "sweep_config.py"))
    planned = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(planned)
    missing = [v for v in planned.EDGE if v not in edge]
    if not edge or missing:
        print(f"the edge sweep is not finished ({', '.join(missing) or 'no runs'}); run it first", file=sys.stderr)
        return 1
    out = {}
    for v, rec in sorted(record.items()):
        losses = {float(lr): (math.inf if loss is None else loss) for lr, loss in rec["loss_at_1x_by_lr"].items()}
        if v in edge:
            losses[edge[v][0]] = edge[v][1]
        best = min(losses, key=losses.get)
        out[v] = {"lr_main": rec["lr"], "lr": best,
                  "loss_at_1x_by_lr": {str(lr): loss if math.isfinite(loss) else None
                                       for lr, loss in sorted(losses.items())}}
    with open(os.path.join(EDGE, "lr_choice.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    moved = {v: rec["lr"] for v, rec in out.items() if rec["lr"] != rec["lr_main"]}
    for v, rec in out.items():
        mark = " (moved)" if v in moved else ""
        print(f"{v:10s} lr {rec['lr']:g}{mark}  " + "  ".join(f"{lr}: {loss:.4f}" for lr, loss in
                                                              rec["loss_at_1x_by_lr"].items() if loss is not None))
    if not moved:
        print("no variant's best rate moved: the main comparison is already at every variant's best of 4 rates")
        return 0
    os.makedirs(LR4, exist_ok=True)
    lines = ",\n".join(f"    {v!r}: {lr!r}" for v, lr in moved.items())
    with open(os.path.join(LR4, "sweep_config.py"), "w") as f:
        f.write(f'''"""The variants whose best learning rate moved to the grid's edge, at it (written by
select_edge.py from shakespeare_lr_edge/lr_choice.json: the best of the 3 rates of shakespeare_lr and the 2.4e-2 edge
point, on seed 0). sweeps.positional narrowed to them, 5 seeds, the same point names as the main comparison
(shakespeare/); the other variants' best rate is the main comparison's, so "every variant at its best of 4 rates" is

    python experiments/pe_extrapolation/paired.py experiments/pe_extrapolation/shakespeare_lr4 \\\\
        --with experiments/pe_extrapolation/shakespeare --replace
"""

from jaxformer.configs.sweeps import positional

LR = {{
{lines},
}}


def get_config():
    c = positional.get_config()
    c.axes.model = {{"position": {{"name": tuple(LR)}}}}
    c.overrides_by_variant = {{name: (f"--config.optim.lr={{lr}}",) for name, lr in LR.items()}}
    c.reference = next(iter(LR))  # rope is not re-run here: its pairs come from paired.py --with
    return c
''')
    return 0


if __name__ == "__main__":
    sys.exit(main())
