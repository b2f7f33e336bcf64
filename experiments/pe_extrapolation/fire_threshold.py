"""FIRE's learned threshold L = |L_multiplier * init_L| (and its c) in finished runs' final checkpoints.

Queries at positions below L share the normaliser psi(L); only queries beyond it are normalised by psi(i), the
progressive interpolation (jaxformer.positional.fire_bias). A threshold near the training length means training
never exercised the interpolation that the longer evaluations rely on. Needs the runs' checkpoints, which are not
committed: run it on the run directories of a sweep you ran (e.g. experiments/pe_extrapolation/shakespeare after
run.sh).

    python experiments/pe_extrapolation/fire_threshold.py experiments/pe_extrapolation/shakespeare/runs/position=fire,*
"""

import sys

from jaxformer import loader


def main(run_dirs: list[str]) -> int:
    if not run_dirs:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print(f"{'run':48s} {'init_L':>7s} {'L':>8s} {'c':>7s}")
    for run_dir in run_dirs:
        cfg, _, params, step = loader.restore_params(run_dir)
        fire = params["position"]["params"]
        threshold = abs(float(fire["L_multiplier"])) * cfg.model.position.fire.init_L
        print(f"{run_dir.rstrip('/').split('/')[-1]:48s} {cfg.model.position.fire.init_L:7g} {threshold:8.2f} "
              f"{float(fire['c']):7.4f}   (step {step})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
