"""Training-step benchmark of the real Trainer: compile time, ms/step, tokens/s, model FLOPs, MFU, peak RSS.

    python benchmarks/train_step.py                          # shakespeare_char_cpu, stand-in data
    python benchmarks/train_step.py --config tiny --steps 200 --json out.json
    python benchmarks/train_step.py --cpu-devices auto       # one JAX CPU device per core, batch split
    python benchmarks/train_step.py --data config --config.data.manual_dir=/work/shared/data/tinyshakespeare

What is timed: `Trainer.train_step(state, batch)` (the jit-compiled step, donated state) on batches prepared
beforehand by `Trainer.batch(step)` (8 distinct steps, cycled), so host-side batch sampling is not in the
number. Each step is timed to `block_until_ready` of its output; the median over `--steps` steps after
`--warmup` steps is reported (p10 and p90 too).

Model FLOPs per step follow nanoGPT/PaLM: tokens x (6·N + 12·L·H·d·T), N = non-embedding parameters (the token
table and any absolute position table left out), as in nanoGPT's `estimate_mfu`. The ceiling is measured in
the same process: float32 2048³ products, best of 10 runs, through XLA's dot (`jnp`) and, when the step's products
go through it (the CPU default), the BLAS kernel of `jaxformer.matmul`; MFU is against the faster of the two. On a
shared machine both move with the load; compare numbers from one run, or runs alternated back to back
(benchmarks/NOTES.md).

Data: the step time does not depend on the text, so by default a text config (tiny_shakespeare, tfds:...) runs
on a stand-in dataset -- random characters over 65 symbols, tiny_shakespeare's vocabulary size -- that
needs no download; `--data config` loads the config's own dataset (tiny_shakespeare then needs
`--config.data.manual_dir=DIR` with DIR/input.txt when offline). Synthetic-task configs use their own data.

Machine settings come from `jaxformer.platform.configure()` (the one place for them: allocator, XLA flags, CPU
devices, CPU matmul backend: measured at first use and cached unless JAXFORMER_CPU_MATMUL=xla|blas names one; the
table says which path ran and why); `--no-platform` skips it to
measure the defaults. An XLA_FLAGS entry already in the environment always wins over its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CONFIG = "shakespeare_char_cpu"
STANDIN_VOCAB = 65  # tiny_shakespeare's character vocabulary


def parse_args(argv):
    from jaxformer.options import split_config_args

    config, overrides, rest = split_config_args(list(argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="--config NAME|FILE and --config.a.b=value overrides, as for "
                                       "`jaxformer train`")
    p.add_argument("--steps", type=int, default=100, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps after compilation")
    p.add_argument("--data", choices=("standin", "config"), default="standin",
                   help="stand-in random text with a 65-symbol vocabulary (default), or the config's dataset")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n^3 float32 matmul ceiling")
    p.add_argument("--no-platform", action="store_true",
                   help="skip jaxformer.platform.configure() (XLA's and glibc malloc's defaults)")
    p.add_argument("--cpu-devices", default=None,
                   help="JAX CPU devices: an integer, or 'auto' = one per core (the batch is split over "
                        "them); "
                        "default: JAXFORMER_CPU_DEVICES, else 1")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(rest)
    args.config, args.overrides = config or DEFAULT_CONFIG, overrides
    return args


def standin_dataset(vocab_size: int = STANDIN_VOCAB, n_chars: int = 200_000, seed: int = 0):
    """Random text over `vocab_size` distinct characters: tiny_shakespeare's shapes, no download."""
    import numpy as np

    from jaxformer.data.text import TextDataset

    alphabet = np.array([chr(0x21 + i) for i in range(vocab_size)])
    g = np.random.default_rng(seed)
    text = lambda n: "".join(alphabet) + "".join(alphabet[g.integers(0, vocab_size, n)])
    return TextDataset("standin", text(n_chars), text(n_chars // 10), data_hash="standin")


def matmul_gflops(n: int = 2048, reps: int = 10, *, fn=None) -> float:
    """float32 n^3 matmul throughput (GFLOP/s) of `fn` (default jnp.matmul, i.e. XLA's dot): the best of `reps` timed
    runs after one warm-up. A ceiling: on a shared host, noise only ever slows a run (the median of 5 moved
    between 82 and 168 GFLOP/s from one run to the next on Zen 3, which made MFU read up to 98%)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(fn or jnp.matmul)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.min(times)) / 1e9


def model_flops_per_step(cfg, n_params_non_embedding: int) -> int:
    """tokens x (6·N + 12·L·H·d·T): nanoGPT's estimate_mfu (PaLM appendix B), per optimizer step."""
    m, d = cfg.model, cfg.data
    head_dim = m.n_embd // m.n_head
    tokens = d.batch_size * d.block_size * cfg.optim.accum_steps
    return tokens * (6 * n_params_non_embedding + 12 * m.n_layer * m.n_head * head_dim * d.block_size)


def _last_loss(state) -> float | None:
    import numpy as np

    recent = state.get("recent") if isinstance(state, dict) else None
    if recent is None:
        return None
    return float(np.asarray(recent["loss"])[np.argmax(np.asarray(recent["step"]))])


def time_train_step(trainer, *, steps: int, warmup: int, n_batches: int) -> dict:
    """Compiles `trainer.train_step`, runs `warmup` steps, then times `steps` steps, each to `block_until_ready`,
    cycling over `n_batches` batches prepared beforehand. Returns compile_s, the per-step times (s), the compiled
    step and the final state."""
    import jax

    state = trainer.initial_state()
    batches = [trainer.batch(s) for s in range(n_batches)]
    jax.block_until_ready((state, batches))
    t = time.perf_counter()
    compiled = trainer.train_step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t
    for i in range(warmup):
        state = compiled(state, batches[i % n_batches])
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state = jax.block_until_ready(compiled(state, batches[i % n_batches]))
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "times": times, "compiled": compiled, "state": state}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run(args) -> dict:
    if not args.no_platform:
        from jaxformer import platform

        platform.configure(cpu_devices=args.cpu_devices)
    import jax
    import numpy as np

    from jaxformer import config as config_lib
    from jaxformer import train

    cfg = config_lib.load(args.config, args.overrides)
    text_data = not cfg.data.name.startswith("synthetic")
    dataset = standin_dataset() if (args.data == "standin" and text_data) else None
    trainer = train.Trainer(cfg, dataset)
    cfg = trainer.cfg

    timed = time_train_step(trainer, steps=args.steps, warmup=args.warmup, n_batches=8)
    compile_s, times, state = timed["compile_s"], timed["times"], timed["state"]
    loss = _last_loss(state)
    from jaxformer import matmul

    # The ceiling is the faster of the two ways this run can multiply float32 matrices: XLA's dot (jnp) and, where
    # the model's products use it, the CPU BLAS kernel (jaxformer.matmul) -- MFU is never flattered by a slow one.
    cpu_matmul = matmul.cpu_backend_in_use()
    gflops_xla = matmul_gflops(args.matmul_size)
    gflops_blas = matmul_gflops(args.matmul_size, fn=matmul.matmul) if cpu_matmul == "blas" else None
    gflops = max(gflops_xla, gflops_blas or 0.0)

    step_s = float(np.median(times))
    flops = model_flops_per_step(cfg, trainer.n_params_non_embedding)
    tokens = cfg.data.batch_size * cfg.data.block_size * cfg.optim.accum_steps
    return {
        "config": args.config, "overrides": args.overrides,
        "data": dataset.name if dataset is not None else cfg.data.name,
        "device": jax.devices()[0].device_kind, "n_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_matmul": cpu_matmul,
        "cpu_matmul_choice": matmul.cpu_backend_choice(),
        "openblas_core": matmul.blas_core(),
        "n_params": trainer.n_params, "n_params_non_embedding": trainer.n_params_non_embedding,
        "compile_s": compile_s,
        "median_ms_per_step": 1e3 * step_s,
        "p10_ms_per_step": 1e3 * float(np.percentile(times, 10)),
        "p90_ms_per_step": 1e3 * float(np.percentile(times, 90)),
        "steps": args.steps,
        "tokens_per_s": tokens / step_s,
        "model_flops_per_step": flops,
        "matmul_gflops": gflops,
        "matmul_size": args.matmul_size,
        "matmul_gflops_xla": gflops_xla,
        "matmul_gflops_blas": gflops_blas,
        "mfu": flops / step_s / (gflops * 1e9),
        "peak_rss_mb": peak_rss_mb(),
        "final_loss": loss,
        "loadavg": os.getloadavg()[0],
    }


def table(r: dict) -> str:
    rows = [
        ("config", f"{r['config']} {' '.join(r['overrides'])}".strip()),
        ("data", r["data"]),
        ("device", f"{r['device']} x{r['n_devices']}"),
        ("XLA_FLAGS", r["xla_flags"] or "(none)"),
        ("CPU matmul", f"{r['cpu_matmul']} (OpenBLAS {r['openblas_core']} kernels)" if r.get("openblas_core")
                       else r["cpu_matmul"] or "-"),
        ("  chosen because", (r.get("cpu_matmul_choice") or {}).get("why", "-")),
        ("parameters", f"{r['n_params']:,} ({r['n_params_non_embedding']:,} non-embedding)"),
        ("compile", f"{r['compile_s']:.2f} s"),
        ("step (median)", f"{r['median_ms_per_step']:.2f} ms  (p10 {r['p10_ms_per_step']:.2f}, "
                          f"p90 {r['p90_ms_per_step']:.2f}; {r['steps']} steps)"),
        ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
        ("model FLOPs/step", f"{r['model_flops_per_step'] / 1e9:.3f} GFLOP"),
        ("f32 matmul ceiling", f"{r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_size']}^3, same run; XLA dot "
                               f"{r['matmul_gflops_xla']:.1f}"
                               + (f", BLAS kernel {r['matmul_gflops_blas']:.1f})" if r["matmul_gflops_blas"] else ")")),
        ("MFU", f"{100 * r['mfu']:.1f}%"),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB"),
        ("load average", f"{r['loadavg']:.2f} (other processes on this machine)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
