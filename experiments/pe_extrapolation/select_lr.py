"""Picks each variant's learning rate from the selection sweep and prepares the main sweep (issue 22).

Reads shakespeare_lr/runs/*/extrapolation.json (seed 0, the 3 learning rates of sweeps.positional_lr per variant,
loss on the whole validation split at the training length; runs of an earlier grid are left out), and writes
  shakespeare_lr/lr_choice.json   every variant's losses per learning rate and the one chosen (the lowest);
  shakespeare/sweep_config.py     sweeps.positional with each variant's chosen learning rate (overrides_by_variant);
and copies each chosen seed-0 run (config, metrics, checkpoints; not its 1x-only extrapolation.json) to
shakespeare/runs/position=<variant>,seed=0, where the main sweep finds it trained and only evaluates it. A run
directory already there is left alone.

    python experiments/pe_extrapolation/select_lr.py
"""

import glob
import json
import math
import os
import shutil
import sys

from jaxformer.configs.sweeps import positional_lr

HERE = os.path.dirname(os.path.abspath(__file__))
SELECTION, MAIN = os.path.join(HERE, "shakespeare_lr"), os.path.join(HERE, "shakespeare")
GRID = tuple(positional_lr.get_config().axes.optim.lr)


def main() -> int:
    losses: dict[str, dict[float, tuple[float, str]]] = {}
    for path in sorted(glob.glob(os.path.join(SELECTION, "runs", "*", "extrapolation.json"))):
        with open(path) as f:
            r = json.load(f)
        with open(os.path.join(os.path.dirname(path), "config.json")) as f:
            lr = json.load(f)["optim"]["lr"]
        if lr not in GRID:  # a run of an earlier grid
            continue
        loss = r["lengths"][0].get("loss")  # None: diverged (stopped), never chosen
        losses.setdefault(r["position"], {})[lr] = (math.inf if loss is None else loss, os.path.dirname(path))
    incomplete = sorted(v for v, by_lr in losses.items() if len(by_lr) < len(GRID))
    if not losses or incomplete:
        print(f"the selection sweep is not finished ({', '.join(incomplete) or 'no runs'}); run it first",
              file=sys.stderr)
        return 1
    choice = {v: min(by_lr, key=lambda lr: by_lr[lr][0]) for v, by_lr in sorted(losses.items())}
    record = {v: {"lr": choice[v], "loss_at_1x_by_lr": {str(lr): loss if math.isfinite(loss) else None
                                                         for lr, (loss, _) in sorted(by_lr.items())}}
              for v, by_lr in sorted(losses.items())}
    with open(os.path.join(SELECTION, "lr_choice.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.makedirs(os.path.join(MAIN, "runs"), exist_ok=True)
    lines = ",\n".join(f"    {v!r}: {lr!r}" for v, lr in choice.items())
    with open(os.path.join(MAIN, "sweep_config.py"), "w") as f:
        f.write(f'''"""sweeps.positional with each variant's learning rate chosen on seed 0 (written by select_lr.py
from shakespeare_lr/lr_choice.json: the lowest whole-validation-split loss at 1x of 3 learning rates)."""

from jaxformer.configs.sweeps import positional

LR = {{
{lines},
}}


def get_config():
    c = positional.get_config()
    c.overrides_by_variant = {{name: (f"--config.optim.lr={{lr}}",) for name, lr in LR.items()}}
    return c
''')
    for v, lr in choice.items():
        target = os.path.join(MAIN, "runs", f"position={v},seed=0")
        if not os.path.exists(target):
            shutil.copytree(losses[v][lr][1], target, ignore=shutil.ignore_patterns("extrapolation.json"))
        print(f"{v:10s} lr {lr:g}  " + "  ".join(f"{x:g}: {loss:.4f}" for x, (loss, _) in sorted(losses[v].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
