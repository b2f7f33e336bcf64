"""Accelerator benchmark: tokens/s and MFU of the full shakespeare-char config per attention implementation,
in bfloat16 compute with float32 master parameters, and a check that the fused path computes what the
reference does.

    python benchmarks/gpu.py                 # a GPU/TPU: shakespeare_char, 64 x 256 tokens per step (minutes)
    python benchmarks/gpu.py --smoke         # anywhere (CPU): the tiny config, a few steps (a smoke test)
    python benchmarks/gpu.py --json out.json --steps 100

1. Check (per implementation): loss and gradients on one batch, for the same parameters, against the float32
   `reference` implementation. An implementation passes when its bfloat16 error is at most twice the
   reference's own bfloat16 error (or 1e-3); in float32 it must agree to 1e-3. On a GPU the compiled fused
   step must call cuDNN's flash attention (`__cudnn$fmha`) where its constraints allow (bfloat16/float16,
   head width a multiple of 8 up to 128, plain causal: attention._fused_backend); a failed check makes the
   exit status 1.
2. Throughput (per implementation, and the float32 reference for the bfloat16 speed-up): the jitted
   `Trainer.train_step` on prepared batches, median wall time over `--steps` steps after `--warmup`, each to
   `block_until_ready`. MFU = model FLOPs/s over the device's dense bfloat16 peak (nanoGPT's
   6N + 12·L·H·d·T FLOPs per token); the peak comes from a table of device kinds, or `--peak-tflops`.

Data: random text over a 65-symbol alphabet (tiny_shakespeare's vocabulary size; the step time does not
depend on the text), so the script needs no download: the device machine needs only the checkout and venv.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Dense bfloat16 peak FLOP/s by a substring of `device_kind` (first match wins; data sheets, no sparsity).
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6", 918e12),
)
IMPLEMENTATIONS = ("reference", "chunked", "fused")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="shakespeare_char", help="packaged config name or .py file")
    p.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: table)")
    p.add_argument("--smoke", action="store_true", help="tiny config, 3 steps: checks that the script runs")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.smoke:
        args.config, args.steps, args.warmup = "tiny", 3, 1
    args.implementations = args.implementations.split(",")
    return args


def load_config(name: str, *, implementation: str, dtype: str):
    from jaxformer import config as config_lib

    cfg = config_lib.load(name)
    cfg.model.attention.implementation = implementation
    cfg.model.dtype = dtype
    cfg.model.param_dtype = "float32"
    cfg.train.progress = False
    return cfg


def dataset_for(cfg):
    """Stand-in text for text configs (no download); a synthetic task's own data otherwise."""
    if cfg.data.name.startswith("synthetic/"):
        return None
    from train_step import standin_dataset

    return standin_dataset()


def peak_flops(device_kind: str, override_tflops: float) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((peak for name, peak in PEAK_BF16 if name.lower() in device_kind.lower()), None)


def cudnn_attention_in(compiled_text: str) -> bool:
    return "__cudnn$fmha" in compiled_text


# ----------------------------------------------------------------------------------------------------- check

def loss_and_grads(args, implementation: str, dtype: str, dataset):
    """Loss and gradients of one fixed batch at the initial parameters (float32), computing in `dtype`."""
    import jax

    from jaxformer import train

    trainer = train.Trainer(load_config(args.config, implementation=implementation, dtype=dtype), dataset)
    cfg = trainer.cfg
    batch = trainer.dataset.batch("train", 0, batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                  seed=cfg.train.seed)
    objective = functools.partial(train.loss_fn, graphdef=trainer.graphdef)
    fn = jax.jit(jax.value_and_grad(lambda params, batch: objective(params, batch=batch)))
    compiled = fn.lower(trainer._params0, batch).compile()
    loss, grads = compiled(trainer._params0, batch)
    return float(loss), jax.device_get(grads), cudnn_attention_in(compiled.as_text() or "")


def relative_error(loss, grads, ref_loss, ref_grads) -> tuple[float, float]:
    import jax
    import numpy as np

    diff = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
               for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True))
    norm = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in jax.tree.leaves(ref_grads))
    return abs(loss - ref_loss) / abs(ref_loss), (diff / norm) ** 0.5


def check(args, dataset) -> list[dict]:
    """Each implementation against the float32 reference, in float32 and in the compute dtype."""
    import jax
    import jax.numpy as jnp

    from jaxformer import attention, positional

    on_gpu = jax.devices()[0].platform == "gpu"
    truth = loss_and_grads(args, "reference", "float32", dataset)
    rows = []
    ref_low = loss_and_grads(args, "reference", args.dtype, dataset)
    ref_err = relative_error(*ref_low[:2], *truth[:2])
    cfg = load_config(args.config, implementation="fused", dtype=args.dtype)
    head_width = cfg.model.n_embd // cfg.model.n_head
    # What attention._fused_backend decides for this model (a positional bias is an array cuDNN is not sent).
    has_bias = positional.get_positional_encoding(cfg.model.position.name).bias is not None
    expect_cudnn = on_gpu and attention._fused_backend(jnp.dtype(args.dtype), head_width,
                                                       has_arrays=has_bias) == "cudnn"
    for implementation in args.implementations:
        for dtype in ("float32", args.dtype) if args.dtype != "float32" else ("float32",):
            if implementation == "reference" and dtype == "float32":
                continue
            loss, grads, cudnn = (ref_low if (implementation, dtype) == ("reference", args.dtype)
                                  else loss_and_grads(args, implementation, dtype, dataset))
            loss_err, grad_err = relative_error(loss, grads, *truth[:2])
            if implementation == "reference":
                ok, rule = True, "(the baseline for the others)"
            elif dtype == "float32":
                ok = loss_err <= 1e-3 and grad_err <= 1e-3
                rule = "<= 1e-3"
            else:
                loss_tol, grad_tol = max(2 * ref_err[0], 1e-3), max(2 * ref_err[1], 1e-3)
                ok = loss_err <= loss_tol and grad_err <= grad_tol
                rule = f"<= {loss_tol:.1e} / {grad_tol:.1e} (2x reference {dtype})"
            wants_cudnn = implementation == "fused" and dtype == args.dtype and expect_cudnn
            ok = ok and (cudnn or not wants_cudnn)
            rows.append({"implementation": implementation, "dtype": dtype, "loss": loss,
                         "loss_rel_err": loss_err, "grad_rel_err": grad_err, "rule": rule, "cudnn": cudnn,
                         "cudnn_expected": wants_cudnn, "ok": ok})
    return rows


# ------------------------------------------------------------------------------------------------ throughput

def throughput(args, implementation: str, dtype: str, dataset) -> dict:
    import jax
    import numpy as np
    from train_step import model_flops_per_step, time_train_step

    from jaxformer import train

    trainer = train.Trainer(load_config(args.config, implementation=implementation, dtype=dtype), dataset)
    cfg = trainer.cfg
    timed = time_train_step(trainer, steps=args.steps, warmup=args.warmup, n_batches=4)
    compile_s, compiled, state = timed["compile_s"], timed["compiled"], timed["state"]
    step_s = float(np.median(timed["times"]))
    tokens = cfg.data.batch_size * cfg.data.block_size * cfg.optim.accum_steps
    flops = model_flops_per_step(cfg, trainer.n_params_non_embedding)
    peak = peak_flops(jax.devices()[0].device_kind, args.peak_tflops)
    recent = jax.device_get(state["recent"])
    return {"implementation": implementation, "dtype": dtype, "compile_s": compile_s,
            "ms_per_step": 1e3 * step_s, "tokens_per_s": tokens / step_s,
            "tflops_per_s": flops / step_s / 1e12,
            "mfu": flops / step_s / peak if peak else None,
            "cudnn": cudnn_attention_in(compiled.as_text() or ""),
            "final_loss": float(recent["loss"][int(np.argmax(recent["step"]))]),
            "params": trainer.n_params, "tokens_per_step": tokens}


# ------------------------------------------------------------------------------------------------------- main

def markdown(result: dict) -> str:
    lines = [f"{result['device']} (x{result['n_devices']}), jax {result['jax']}, "
             f"config `{result['config']}`, {result['params']:,} parameters, "
             f"{result['tokens_per_step']:,} tokens/step, median of {result['steps']} steps",
             "",
             "| attention | compute | ms/step | tokens/s | TFLOP/s | MFU | cuDNN | compile s |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in result["throughput"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['implementation']} | {r['dtype']} | {r['ms_per_step']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tflops_per_s']:.2f} | {mfu} | "
                     f"{'yes' if r['cudnn'] else 'no'} | {r['compile_s']:.1f} |")
    lines += ["", "| check vs float32 reference | compute | loss rel. err | grad rel. err | tolerance | cuDNN"
              " | |", "|---|---|---:|---:|---|---|---|"]
    for r in result["check"]:
        cudnn = ("yes" if r["cudnn"] else "no") + (" (expected)" if r["cudnn_expected"] else "")
        lines.append(f"| {r['implementation']} | {r['dtype']} | {r['loss_rel_err']:.1e} | "
                     f"{r['grad_rel_err']:.1e} | {r['rule']} | {cudnn} | {'PASS' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import jax

    start = time.perf_counter()
    dataset = dataset_for(load_config(args.config, implementation="reference", dtype=args.dtype))
    result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
              "n_devices": jax.device_count(), "jax": jax.__version__, "config": args.config,
              "steps": args.steps}
    result["check"] = check(args, dataset)
    runs = [(implementation, args.dtype) for implementation in args.implementations]
    if args.dtype != "float32" and "reference" in args.implementations:
        runs.append(("reference", "float32"))
    result["throughput"] = [throughput(args, impl, dtype, dataset) for impl, dtype in runs]
    result["params"] = result["throughput"][0]["params"]
    result["tokens_per_step"] = result["throughput"][0]["tokens_per_step"]
    result["wall_s"] = time.perf_counter() - start
    print(markdown(result))
    print(f"\n{result['wall_s']:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    failed = [f"{r['implementation']}/{r['dtype']}" for r in result["check"] if not r["ok"]]
    if failed:
        print(f"FAILED checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
