"""The learning-rate grid's edge (issue 22): each variant's best of 4 rates, and the supplementary comparison at it.

Seven variants were best at the top of the 3-rate grid (1.2e-2). shakespeare_lr_edge/ holds their seed-0 runs at
2.4e-2 (sweep_config.py there). This script reads those runs' whole-split loss at 1x beside the 3 rates of
shakespeare_lr/lr_choice.json and writes
  shakespeare_lr_edge/lr_choice.json  every variant's losses at the 4 rates and the best of them (the main
                                      comparison keeps its best of 3: `lr_main`);
  shakespeare_lr4/sweep_config.py     sweeps.positional with every variant at its best of the 4 rates;
and fills shakespeare_lr4/runs/ so that only what the edge changes is trained: a variant whose best rate moved to
2.4e-2 gets its seed-0 edge run (config, metrics, checkpoints; not its 1x-only extrapolation.json: the sweep
evaluates it at the four lengths) and trains seeds 1-4; a variant whose best rate did not move gets the main
comparison's 5 finished runs (shakespeare/runs/, small files), which the sweep counts as done. A run directory
already there is left alone.

    python experiments/pe_extrapolation/select_edge.py
    jaxformer sweep --config experiments/pe_extrapolation/shakespeare_lr4/sweep_config.py \\
        --workdir experiments/pe_extrapolation/shakespeare_lr4
"""

import glob
import importlib.util
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN, EDGE, LR4 = (os.path.join(HERE, d) for d in ("shakespeare", "shakespeare_lr_edge", "shakespeare_lr4"))


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
    os.makedirs(os.path.join(LR4, "runs"), exist_ok=True)
    lines = ",\n".join(f"    {v!r}: {rec['lr']!r}" for v, rec in out.items())
    with open(os.path.join(LR4, "sweep_config.py"), "w") as f:
        f.write(f'''"""sweeps.positional with each variant's learning rate the best of 4 on seed 0 (written by
select_edge.py from shakespeare_lr_edge/lr_choice.json: the 3 rates of shakespeare_lr and the 2.4e-2 edge point).
A supplementary comparison beside the main one (shakespeare/, best of the 3 planned rates)."""

from jaxformer.configs.sweeps import positional

LR = {{
{lines},
}}


def get_config():
    c = positional.get_config()
    c.overrides_by_variant = {{name: (f"--config.optim.lr={{lr}}",) for name, lr in LR.items()}}
    return c
''')
    for v, rec in out.items():
        if rec["lr"] != rec["lr_main"]:  # moved to the edge: its seed-0 edge run, evaluated by the sweep
            sources = {f"position={v},seed=0": edge[v][2]}
            ignore = shutil.ignore_patterns("extrapolation.json")
        else:  # unchanged: the main comparison's finished runs
            sources = {os.path.basename(d): d for d in glob.glob(os.path.join(MAIN, "runs", f"position={v},seed=*"))}
            ignore = None
        for name, source in sorted(sources.items()):
            target = os.path.join(LR4, "runs", name)
            if not os.path.exists(target):
                shutil.copytree(source, target, ignore=ignore)
        moved = " (moved)" if rec["lr"] != rec["lr_main"] else ""
        print(f"{v:10s} lr {rec['lr']:g}{moved}  " + "  ".join(f"{lr}: {loss:.4f}" for lr, loss in
                                                               rec["loss_at_1x_by_lr"].items() if loss is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
