"""Where a training step's time goes, per kind of operation: a `jax.profiler` trace of the real Trainer's step,
its thunks classified from the compiled HLO.

    python benchmarks/profile_step.py                        # shakespeare_char_cpu, 30 steps, stand-in data
    JAXFORMER_CPU_MATMUL=xla python benchmarks/profile_step.py --steps 20 --json prof.json

Categories (from each thunk's HLO instruction; a fusion by what its computation contains): dense products
forward / backward (rows times a weight: XLA's `dot` or the BLAS kernel's custom call; backward = the instruction's
`op_name` has `transpose(`, JAX's reverse mode), attention's batched products forward / backward (a product with
batch dimensions: the heads' q·kᵀ and weights·v), reductions (a fusion or op with `reduce`: LayerNorm and softmax
statistics, losses, norms), copies and transposes (only copy/transpose/bitcast/slice/concatenate inside), and
elementwise (every other fusion: GELU, the softmax's exp, AdamW, residual adds). Per step: the thunks' summed
time (threads added up) and the union of their intervals on the wall clock (what the step waits for).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MOVES = {"copy", "transpose", "bitcast", "slice", "concatenate", "parameter", "reshape", "broadcast", "constant",
          "tuple", "get-tuple-element", "dynamic-slice", "dynamic-update-slice", "pad", "iota"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*)$")


def computations(hlo: str) -> dict[str, list[str]]:
    """The HLO module's computations: name -> its instruction lines (ENTRY under "ENTRY")."""
    out, name = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if m:
            name = "ENTRY" if m.group(1) else m.group(2)
            out[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            out[name].append(line)
    return out


def _opcodes(comps, name, seen=None) -> set[str]:
    """Opcodes in a computation and the computations it calls (fusions nest)."""
    seen = seen if seen is not None else set()
    if name in seen or name not in comps:
        return set()
    seen.add(name)
    ops = set()
    for line in comps[name]:
        m = _INSTRUCTION.match(line)
        if m:
            ops.add(m.group(3))
        for called in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line):
            ops |= _opcodes(comps, called, seen)
    return ops


def classify(hlo: str) -> dict[str, str]:
    """Instruction name -> category, for every instruction of every computation (thunks are named after them)."""
    comps = computations(hlo)
    out = {}
    for lines in comps.values():
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            name, shape, opcode, rest = m.groups()
            ops = {opcode}
            for called in re.findall(r"calls=%([\w.\-]+)", rest):
                ops |= _opcodes(comps, called)
            backward = "transpose(" in (re.search(r'op_name="([^"]*)"', rest) or [None, ""])[1]
            rank = shape.count(",") + 1 if "[" in shape else 0
            if "dot" in ops or "jaxformer_gemm_f32" in rest:
                kind = "attention batched products" if rank > 2 else "dense products"
                out[name] = f"{kind} {'backward' if backward else 'forward'}"
            elif "reduce" in ops or "reduce-window" in ops:
                out[name] = "reductions"
            elif ops <= _MOVES | {"fusion"}:
                out[name] = "copies and transposes"
            else:
                out[name] = "elementwise"
    return out


def thunk_events(trace_dir: str) -> list[dict]:
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    events = json.load(gzip.open(path))["traceEvents"]
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _union(intervals) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profile(args) -> dict:
    if not args.no_platform:
        from jaxformer import platform

        platform.configure()
    import jax
    import train_step

    from jaxformer import config as config_lib
    from jaxformer import matmul, train

    cfg = config_lib.load(args.config, args.overrides)
    text = not cfg.data.name.startswith("synthetic")
    trainer = train.Trainer(cfg, train_step.standin_dataset() if text else None)
    state, batch = trainer.initial_state(), trainer.batch(0)
    categories = classify(trainer.train_step.lower(state, batch).compile().as_text())
    for _ in range(args.warmup):
        state = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state = trainer.train_step(state, batch)
            jax.block_until_ready(state)
            wall_s = time.perf_counter() - t0  # with the profiler's own overhead
        events = thunk_events(tmp)
    summed, calls, spans = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    for e in events:
        cat = categories.get(e["name"])
        if cat is None:
            continue
        summed[cat] += e["dur"]
        calls[cat] += 1
        spans[cat].append((e["ts"], e["ts"] + e["dur"]))
    n = args.steps
    everything = [s for v in spans.values() for s in v]
    return {"config": args.config, "cpu_matmul": matmul.cpu_backend_in_use(),
            "cpu_matmul_choice": matmul.cpu_backend_choice(), "steps": n,
            "wall_ms_per_step": 1e3 * wall_s / n,
            "thunk_union_ms_per_step": _union(everything) / 1e3 / n,
            "categories": {c: {"summed_ms": summed[c] / 1e3 / n, "wall_ms": _union(spans[c]) / 1e3 / n,
                               "calls": calls[c] / n} for c in sorted(summed)},
            "loadavg": os.getloadavg()[0]}


def table(r: dict) -> str:
    lines = [f"{r['config']}: {r['cpu_matmul']} products ({(r['cpu_matmul_choice'] or {}).get('why', '-')}); "
             f"{r['steps']} steps, load {r['loadavg']:.2f}",
             f"step wall {r['wall_ms_per_step']:.2f} ms, thunks busy {r['thunk_union_ms_per_step']:.2f} ms",
             f"{'category':32} {'summed ms':>10} {'wall ms':>8} {'calls':>6}"]
    for c, v in sorted(r["categories"].items(), key=lambda kv: -kv[1]["summed_ms"]):
        lines.append(f"{c:32} {v['summed_ms']:10.2f} {v['wall_ms']:8.2f} {v['calls']:6.0f}")
    return "\n".join(lines)


def main(argv=None):
    from jaxformer.options import split_config_args

    config, overrides, rest = split_config_args(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-platform", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(rest)
    args.config, args.overrides = config or "shakespeare_char_cpu", overrides
    r = profile(args)
    print(table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
