"""`jaxformer import` on a >= 100M-parameter random Llama-family checkpoint: peak memory and `eval` speed.

    python benchmarks/import_checkpoint.py [--layers 12] [--width 768] [--vocab 32000] [--tokens 1024] [--dir DIR]

1. writes a random Llama-style checkpoint (config.json, model.safetensors in float32, a byte-level BPE
   tokenizer.json) with `safetensors.numpy` (no torch) -- in a subprocess of its own;
2. imports it in a fresh subprocess (`jaxformer.convert.hf.import_checkpoint`) and reads the process's peak RSS
   (VmHWM) at the end, and its RSS just before the import began (Python, JAX and jaxformer loaded): the target is
   peak <= 1.3x the checkpoint's size on disk, judged on the peak above that baseline and quoted in full too;
3. restores the run and times the jitted `eval_step` (the loss `jaxformer eval` computes) on one row of `--tokens`
   tokens: the median of 5 calls after a warm-up, as tokens/s.
Prints one table (markdown) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def write_checkpoint(folder: str, layers: int, width: int, vocab: int) -> dict:
    import ml_dtypes  # noqa: F401 (safetensors' numpy dtypes)
    from safetensors.numpy import save_file

    from jaxformer.data import SubwordTokenizer

    heads, kv_heads, hidden = width // 64, max(1, width // 256), int(width * 8 / 3) // 64 * 64
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": width,
           "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32"}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(0)
    d = width // heads
    shapes = {"model.embed_tokens.weight": (vocab, width), "model.norm.weight": (width,),
              "lm_head.weight": (vocab, width)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (width,), p + "post_attention_layernorm.weight": (width,),
                       p + "self_attn.q_proj.weight": (heads * d, width),
                       p + "self_attn.k_proj.weight": (kv_heads * d, width),
                       p + "self_attn.v_proj.weight": (kv_heads * d, width),
                       p + "self_attn.o_proj.weight": (width, heads * d), p + "mlp.gate_proj.weight": (hidden, width),
                       p + "mlp.up_proj.weight": (hidden, width), p + "mlp.down_proj.weight": (width, hidden)})
    tensors = {k: (0.02 * rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    text = " ".join(rng.choice(["the", "king", "and", "queen", "of", "love", "ROMEO", "\n"], 20000))
    SubwordTokenizer.train_bpe(text, 1024).save(os.path.join(folder, "tokenizer.json"))
    return {"params": int(sum(np.prod(s) for s in shapes.values())),
            "disk_mib": os.path.getsize(os.path.join(folder, "model.safetensors")) / 2**20}


def run_import(folder: str, workdir: str) -> dict:
    import jax

    from jaxformer.convert import hf

    jax.numpy.zeros(1).block_until_ready()  # the backend up: part of the baseline, as in `jaxformer import`
    baseline = rss_mib("VmRSS")
    start = time.perf_counter()
    hf.import_checkpoint(folder, workdir, overrides=["--config.data.block_size=1024"])
    return {"baseline_mib": baseline, "peak_mib": rss_mib("VmHWM"), "import_s": time.perf_counter() - start}


def run_eval(workdir: str, tokens: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxformer import train as train_lib

    cfg, graphdef, params, _ = train_lib.restore_params(workdir)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 1024, (1, tokens + 1)).astype(np.int32)
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
             "weights": jnp.ones((1, tokens), jnp.float32)}
    step = jax.jit(lambda p, b: train_lib.eval_step(p, b, graphdef=graphdef))
    jax.block_until_ready(step(params, batch))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, batch))
        times.append(time.perf_counter() - t0)
    return {"eval_s": float(np.median(times)), "tokens_per_s": tokens / float(np.median(times))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--dir", default="")
    p.add_argument("--step", choices=("write", "import", "eval"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:  # one phase, in a subprocess of its own
        folder, workdir = os.path.join(args.dir, "hf"), os.path.join(args.dir, "run")
        result = {"write": lambda: write_checkpoint(folder, args.layers, args.width, args.vocab),
                  "import": lambda: run_import(folder, workdir),
                  "eval": lambda: run_eval(workdir, args.tokens)}[args.step]()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        result = {}
        for step in ("write", "import", "eval"):
            out = subprocess.run([sys.executable, __file__, "--step", step, "--dir", tmp, "--layers", str(args.layers),
                                  "--width", str(args.width), "--vocab", str(args.vocab), "--tokens", str(args.tokens)],
                                 check=True, capture_output=True, text=True)
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    above = result["peak_mib"] - result["baseline_mib"]
    print("| parameters | on disk MiB | baseline RSS MiB | peak RSS MiB | peak above baseline | ratio to disk "
          "(above baseline / total) | import s | eval tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['params'] / 1e6:.1f}M | {result['disk_mib']:.0f} | {result['baseline_mib']:.0f} | "
          f"{result['peak_mib']:.0f} | {above:.0f} | {above / result['disk_mib']:.2f} / "
          f"{result['peak_mib'] / result['disk_mib']:.2f} | {result['import_s']:.1f} | "
          f"{result['tokens_per_s']:.0f} ({args.tokens} tokens in {result['eval_s'] * 1e3:.0f} ms) |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
