"""GFLOP/s of the training step's own matrix products on each path this machine offers: XLA's dot in float32, the
BLAS kernel (float32), and XLA's dot in bfloat16 (what `model.dtype = "bfloat16"` asks for; on an AMX CPU, whether
XLA:CPU reaches the tile units shows as a rate far above the float32 ceiling).

    python benchmarks/products.py                  # nanoGPT's baby step's products (matmul.REFERENCE_PRODUCTS)
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/products.py --rounds 15

Each product is one jitted call on random inputs, timed to block_until_ready; the paths alternate within a round
and each cell is the median over rounds. The last row weights every product by how often the step runs it (the
step's product time on that path).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flops(sa, sb, ta, tb) -> float:
    batch = 1
    for n in sa[:-2]:
        batch *= n
    M, K = (sa[-1], sa[-2]) if ta else (sa[-2], sa[-1])
    N = sb[-2] if tb else sb[-1]
    return 2.0 * batch * M * K * N


def run(args) -> dict:
    from jaxformer import platform

    platform.configure()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxformer import matmul
    from jaxformer.kernels import cpu_gemm

    paths = {"xla f32": (jnp.float32, False), "blas f32": (jnp.float32, True), "xla bf16": (jnp.bfloat16, False),
             "xla bf16->f32": (jnp.bfloat16, False)}
    if cpu_gemm.load() is None:
        del paths["blas f32"]
    rng = np.random.default_rng(0)
    rows = []
    for (sa, sb, ta, tb), count in sorted(matmul.REFERENCE_PRODUCTS.items()):
        a32, b32 = (rng.standard_normal(s, dtype=np.float32) for s in (sa, sb))
        fns = {}
        for name, (dtype, blas) in paths.items():
            a, b = jnp.asarray(a32, dtype), jnp.asarray(b32, dtype)
            if blas:
                f = matmul._gemm_jitted(ta, tb)
            else:
                pet = jnp.float32 if name.endswith("->f32") else None
                f = jax.jit(functools.partial(matmul._xla, ta=ta, tb=tb, preferred_element_type=pet))
            f(a, b).block_until_ready()
            fns[name] = (f, a, b)
        times = {name: [] for name in fns}
        for r in range(args.rounds):
            order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
            for name in order:
                f, a, b = fns[name]
                t0 = time.perf_counter()
                f(a, b).block_until_ready()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"a": sa, "b": sb, "ta": ta, "tb": tb, "count": count, "gflop": _flops(sa, sb, ta, tb) / 1e9,
                     "median_s": med})
    step = {name: sum(r["count"] * r["median_s"][name] for r in rows) for name in paths}
    return {"paths": list(paths), "rows": rows, "step_products_ms": {k: 1e3 * v for k, v in step.items()},
            "device": jax.devices()[0].device_kind, "loadavg": os.getloadavg()[0]}


def table(r: dict) -> str:
    head = f"{'product (a, b, ta tb)':40} {'x':>3} " + " ".join(f"{p:>14}" for p in r["paths"])
    lines = [head, "GFLOP/s, medians over rounds:"]
    for row in r["rows"]:
        label = f"{tuple(row['a'])} {tuple(row['b'])} {int(row['ta'])}{int(row['tb'])}"
        lines.append(f"{label:40} {row['count']:>3} " + " ".join(
            f"{row['gflop'] / row['median_s'][p]:14.1f}" for p in r["paths"]))
    lines.append(f"{'step products, ms (count-weighted)':44} " + " ".join(
        f"{r['step_products_ms'][p]:14.2f}" for p in r["paths"]))
    lines.append(f"load average {r['loadavg']:.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    r = run(args)
    print(table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
