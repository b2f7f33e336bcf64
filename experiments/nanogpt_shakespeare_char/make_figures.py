"""Table and loss-curve figure of the baby runs: jaxformer's run directories and the PyTorch nanoGPT replica's JSONs.

    python experiments/nanogpt_shakespeare_char/make_figures.py RUN_DIR... --nanogpt NANOGPT_JSON...

RUN_DIR: a `jaxformer train` run directory (metrics.jsonl, timing.jsonl; `eval_full.json` if the output of
`jaxformer eval --full` was saved there, `wall_s.txt` if `/usr/bin/time -f %e -o RUN_DIR/wall_s.txt` timed the run).
NANOGPT_JSON: the output of `benchmarks/torch_reference_step.py --train DIR --json FILE`.
Writes loss_curves.png next to this file and prints the README's Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def jaxformer_run(run_dir):
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    timing = read_jsonl(os.path.join(run_dir, "timing.jsonl"))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    evals = [m for m in metrics if "val_loss" in m]
    full_path, wall_path = os.path.join(run_dir, "eval_full.json"), os.path.join(run_dir, "wall_s.txt")
    return {"seed": config["train"]["seed"], "metrics": metrics, "evals": evals,
            "whole_val": json.load(open(full_path))["loss"] if os.path.exists(full_path) else None,
            "ms_per_iter": statistics.median(t["ms_per_step"] for t in timing if "ms_per_step" in t),
            "wall_s": float(open(wall_path).read().split()[-1]) if os.path.exists(wall_path) else None}


def mean_std(values):
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return "—"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def tables(runs, replicas) -> str:
    lines = ["| implementation | seed | train loss (20 batches) | val loss (20 batches) | val loss (whole val text) "
             "| wall time | median ms/iter |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        last = r["evals"][-1]
        wall = f"{r['wall_s']:.0f} s" if r["wall_s"] else "—"
        whole = f"{r['whole_val']:.4f}" if r["whole_val"] is not None else "—"
        lines.append(f"| jaxformer | {r['seed']} | {last['train_eval_loss']:.4f} | {last['val_loss']:.4f} | "
                     f"{whole} | {wall} | {r['ms_per_iter']:.1f} |")
    lines.append(f"| jaxformer | mean ± std | {mean_std([r['evals'][-1]['train_eval_loss'] for r in runs])} | "
                 f"{mean_std([r['evals'][-1]['val_loss'] for r in runs])} | "
                 f"{mean_std([r['whole_val'] for r in runs])} | | |")
    for n in replicas:
        last = n["evals"][-1]
        lines.append(f"| nanoGPT replica (PyTorch) | {n['seed']} | {last['train']:.4f} | {last['val']:.4f} | "
                     f"{n['whole_val_loss']:.4f} | {n['wall_s']:.0f} s | {n['median_ms_per_iter']:.1f} |")
    if replicas:
        train_losses = [n["evals"][-1]["train"] for n in replicas]
        lines.append(f"| nanoGPT replica (PyTorch) | mean ± std | {mean_std(train_losses)}"
                     f" | {mean_std([n['evals'][-1]['val'] for n in replicas])} | "
                     f"{mean_std([n['whole_val_loss'] for n in replicas])} | | |")
    return "\n".join(lines)


def figure(runs, replicas, path):
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=120)
    for i, r in enumerate(runs):
        logged = [(m["step"], m["loss"]) for m in r["metrics"] if "loss" in m]
        ax.plot(*zip(*logged, strict=True), "-", color="tab:blue", alpha=0.15, linewidth=0.7,
                label="jaxformer train loss (logged, mean of 10 steps)" if i == 0 else None)
        ax.plot([e["step"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]], "-o", color="tab:blue",
                alpha=0.6, markersize=2.5, linewidth=1,
                label=f"jaxformer val (20 batches), seeds {runs[0]['seed']}-{runs[-1]['seed']}" if i == 0 else None)
    for i, n in enumerate(replicas):
        evals = [e for e in n["evals"] if e["iter"] > 0]
        ax.plot([e["iter"] for e in evals], [e["val"] for e in evals], "--s", color="tab:orange", alpha=0.7,
                markersize=2.5, linewidth=1,
                label=(f"nanoGPT replica (PyTorch) val (20 batches), seeds {replicas[0]['seed']}-"
                       f"{replicas[-1]['seed']}") if i == 0 else None)
    ax.axhline(1.886, color="k", linestyle=":", linewidth=0.9, label="nanoGPT's one run in the brief, val 1.886")
    ax.set_ylim(1.7, 2.6)
    ax.set_xlim(0, 2050)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5)
    ax.set_title("nanoGPT baby config (shakespeare_char_cpu): jaxformer vs a PyTorch nanoGPT replica", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="jaxformer run directories")
    p.add_argument("--nanogpt", nargs="*", default=[], help="torch_reference_step.py --train --json outputs")
    p.add_argument("--out", default=os.path.join(HERE, "loss_curves.png"))
    args = p.parse_args()
    runs = sorted((jaxformer_run(d) for d in args.runs), key=lambda r: r["seed"])
    replicas = sorted((json.load(open(f)) for f in args.nanogpt), key=lambda n: n["seed"])
    figure(runs, replicas, args.out)
    print(tables(runs, replicas))


if __name__ == "__main__":
    main()
