"""Time and memory of the attention implementations: B=1, H=8, d=64, float32, causal, T = S = 256 ... 8192.

    python benchmarks/attention.py                        # the full table (minutes on a 2-core CPU)
    python benchmarks/attention.py --lengths 256,512 --repeats 3

Time: median wall time of the jitted forward (`out`) and forward+backward (`grad` of sum(out) w.r.t. q, k,
v), after a warm-up call; also the median process CPU time per call, less sensitive to other processes' load.
All implementations run in this one process, round-robin within each repeat, so load from other processes on
a shared machine falls on all of them alike and the ratios stay comparable.

Memory, per implementation and length, in a fresh subprocess:
  xla  — XLA's compiled memory analysis, temp + output bytes of the jitted function (exact buffer sizes);
  rss  — peak resident memory while running it once, minus the resident memory just before (the peak is reset
         through /proc/self/clear_refs after compiling, so compilation does not count).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

B, H, d = 1, 8, 64
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)


def _functions(implementation, block_size):
    import jax

    from jaxformer import attention

    forward = lambda q, k, v: attention.multi_head_attention(
        q, k, v, causal=True, implementation=implementation, block_size=block_size)
    backward = jax.grad(lambda q, k, v: forward(q, k, v).sum(), argnums=(0, 1, 2))
    return {"fwd": jax.jit(forward), "fwd+bwd": jax.jit(backward)}


def _inputs(T):
    import jax

    return tuple(jax.random.normal(key, (B, T, H, d)) for key in jax.random.split(jax.random.key(0), 3))


def _peak_rss_bytes():
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def _rss_bytes():
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def measure_memory(implementation, T, block_size):
    """Runs in its own process: XLA's buffer sizes and the peak-RSS increase of one call, per function."""
    import jax

    qkv = _inputs(T)
    result = {}
    for name, fn in _functions(implementation, block_size).items():
        compiled = fn.lower(*qkv).compile()
        analysis = compiled.memory_analysis()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets the peak-RSS high-water mark to the current RSS
        before = _rss_bytes()
        jax.block_until_ready(compiled(*qkv))
        result[name] = {"xla": analysis.temp_size_in_bytes + analysis.output_size_in_bytes,
                        "rss": _peak_rss_bytes() - before}
    return result


def measure_times(implementations, T, repeats, block_size):
    import jax

    qkv = _inputs(T)
    functions = {impl: _functions(impl, block_size) for impl in implementations}
    for fns in functions.values():
        for fn in fns.values():
            jax.block_until_ready(fn(*qkv))  # compile and warm up
    wall = {(impl, name): [] for impl in implementations for name in ("fwd", "fwd+bwd")}
    cpu = {key: [] for key in wall}
    for _ in range(repeats):
        for name in ("fwd", "fwd+bwd"):
            for impl in implementations:
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(functions[impl][name](*qkv))
                wall[impl, name].append(time.perf_counter() - start)
                cpu[impl, name].append(time.process_time() - start_cpu)
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key])) for key in wall}


def _machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax

    return f"{cpu}, {os.cpu_count()} cores, {jax.devices()[0].platform}, jax {jax.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--implementations", default="reference,chunked,fused")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls per length (default 21 up to T=1024, 7, 5, then 3 at T=8192)")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--memory-only", nargs=2, metavar=("IMPLEMENTATION", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(measure_memory(args.memory_only[0], int(args.memory_only[1]), args.block_size)))
        return

    lengths = [int(t) for t in args.lengths.split(",")]
    implementations = args.implementations.split(",")
    print(f"# {datetime.date.today()} — {_machine()}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"# B={B}, H={H}, d={d}, float32, causal, block_size={args.block_size}; median of N calls; memory: "
          "XLA temp+output / peak RSS increase, fresh process each\n")
    print("| T | implementation | N | fwd ms (wall / cpu) | fwd+bwd ms (wall / cpu) | fwd MiB (xla / rss) "
          "| fwd+bwd MiB (xla / rss) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    rows = {}
    for T in lengths:
        repeats = args.repeats or (21 if T <= 1024 else 7 if T <= 2048 else 5 if T <= 4096 else 3)
        times = measure_times(implementations, T, repeats, args.block_size)
        for impl in implementations:
            out = subprocess.run([sys.executable, __file__, "--memory-only", impl, str(T), "--block-size",
                                  str(args.block_size)], capture_output=True, text=True, check=True)
            memory = json.loads(out.stdout.strip().splitlines()[-1])
            rows[T, impl] = {name: (times[impl, name], memory[name]) for name in ("fwd", "fwd+bwd")}
            ms = lambda t: f"{1e3 * t[0]:.1f} / {1e3 * t[1]:.1f}"
            mib = lambda m: f"{m['xla'] / 2**20:.0f} / {m['rss'] / 2**20:.0f}"
            print(f"| {T} | {impl} | {repeats} | {ms(times[impl, 'fwd'])} | {ms(times[impl, 'fwd+bwd'])} | "
                  f"{mib(memory['fwd'])} | {mib(memory['fwd+bwd'])} |", flush=True)
    print(f"\n# load average {os.getloadavg()[0]:.1f} at end")
    _verdicts(rows, lengths)


def _verdicts(rows, lengths):
    """The targets: reference within 1.2x of fused at T <= 1024; chunked at the longest T within 1/8 of
    reference's memory and 2x its time. Time ratios: wall (cpu)."""
    for T in [t for t in lengths if t <= 1024]:
        if (T, "reference") in rows and (T, "fused") in rows:
            for name in ("fwd", "fwd+bwd"):
                (wall_r, cpu_r), (wall_f, cpu_f) = rows[T, "reference"][name][0], rows[T, "fused"][name][0]
                ratio = wall_r / wall_f
                print(f"T={T} {name}: reference / fused time = {ratio:.2f} ({cpu_r / cpu_f:.2f} cpu) "
                      f"-> {'meets' if ratio <= 1.2 else 'MISSES'} <= 1.2")
    T = max(lengths)
    if (T, "chunked") in rows and (T, "reference") in rows:
        for name in ("fwd", "fwd+bwd"):
            (wall_c, cpu_c), m_c = rows[T, "chunked"][name]
            (wall_r, cpu_r), m_r = rows[T, "reference"][name]
            for kind in ("xla", "rss"):
                ratio = m_c[kind] / m_r[kind]
                print(f"T={T} {name}: chunked / reference memory ({kind}) = {ratio:.3f} "
                      f"-> {'meets' if ratio <= 1 / 8 else 'MISSES'} <= 0.125")
            print(f"T={T} {name}: chunked / reference time = {wall_c / wall_r:.2f} ({cpu_c / cpu_r:.2f} cpu) "
                  f"-> {'meets' if wall_c / wall_r <= 2 else 'MISSES'} <= 2")


if __name__ == "__main__":
    main()
