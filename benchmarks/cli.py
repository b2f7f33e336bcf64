"""How fast the `jaxformer` command answers: `--help` of every subcommand, and `runs` on a folder of runs.

    python benchmarks/cli.py [--repeats 7] [--runs-dir experiments/pe_extrapolation/copy]

Each command is a fresh process (`python -m jaxformer.cli ...`, what the console script runs), timed wall-clock from
start to exit; the commands are interleaved round-robin within each repeat, so load from other processes spreads
over all of them. Prints the median and the range per command, and whether JAX was imported (it must not be, before
the arguments are parsed). Target: every line at most 0.5 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from jaxformer import cli

CHECK = ("import sys, runpy; sys.argv = ['jaxformer', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('jaxformer.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('JAX_IMPORTED' if 'jax' in sys.modules else 'NO_JAX', file=sys.stderr)\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--runs-dir", default="experiments/pe_extrapolation/copy")
    args = p.parse_args(argv)
    commands = [["--help"], *[[name, "--help"] for name in cli.SUBCOMMANDS], ["runs", args.runs_dir]]
    times = {tuple(c): [] for c in commands}
    jax_imported = {}
    for _ in range(args.repeats):
        for command in commands:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHECK, *command], capture_output=True, text=True)
            times[tuple(command)].append(time.perf_counter() - start)
            jax_imported[tuple(command)] = "JAX_IMPORTED" in out.stderr
    print(f"| command | median s | min-max s | JAX imported |  ({args.repeats} runs each)")
    print("|---|---:|---:|---|")
    for command, values in times.items():
        print(f"| jaxformer {' '.join(command)} | {statistics.median(values):.3f} | {min(values):.3f}-"
              f"{max(values):.3f} | {'yes' if jax_imported[command] else 'no'} |")


if __name__ == "__main__":
    main()
