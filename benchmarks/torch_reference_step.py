"""The same training step in PyTorch, written after nanoGPT's model.py/train.py, to time it on THIS machine.

nanoGPT's baby shakespeare-char step: 4 layers x 4 heads x 128, block 64, batch 12, vocab 65, no biases, no dropout,
tied embeddings, learned positions, pre-LN, exact GELU, `F.scaled_dot_product_attention(is_causal=True)`, AdamW
(weight decay on >= 2-D tensors, betas (0.9, 0.99)) and clipping at 1.0, float32 on the CPU, no torch.compile
(nanoGPT's CPU command passes --compile=False). Not a dependency of jaxformer: run it in an environment with torch:

    pip install torch==2.13.0 numpy && python benchmarks/torch_reference_step.py [--steps 150]

Prints the median ms/step over the timed steps (after warm-up), as benchmarks/train_step.py does for jaxformer.

`--train DIR` runs nanoGPT's whole baby run instead, as its train.py does it, on DIR/input.txt (the 90/10 split of
data/shakespeare_char/prepare.py, the sorted-character vocabulary): 2000 iterations, lr 1e-3 with 100 warm-up
iterations ((it+1)/(warmup+1)) and cosine decay to 1e-4, `estimate_loss` over 20 random batches every 250
iterations, the time of every iteration as nanoGPT prints it (`dt`, which includes sampling the next batch and
`loss.item()`), and at the end the loss over the whole validation text in non-overlapping 64-character blocks
(jaxformer's `eval --full`). Seeds: `--seed S` seeds torch with 1337 + S (nanoGPT: 1337).

    python benchmarks/torch_reference_step.py --train ../shared/data/tinyshakespeare --seed 0 --json out.json
"""

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=65, block=64, layers=4, heads=4, d=128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup))) * (lr - min_lr)


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.99))


def train(data_dir, seed, iters=2000, block=64, batch=12, eval_every=250, eval_iters=20):
    """nanoGPT's train.py loop for the baby config; returns the evaluations, per-iteration times and whole-val loss."""
    text = open(os.path.join(data_dir, "input.txt")).read()
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    n = int(len(data) * 0.9)
    splits = {"train": data[:n], "val": data[n:]}
    torch.manual_seed(1337 + seed)
    model = GPT(vocab=len(stoi), block=block)
    opt = make_optimizer(model)

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block, (batch,))
        x = torch.stack([torch.from_numpy(d[i:i + block]) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + block]) for i in ix])
        return x, y

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {s: float(torch.tensor([model(*get_batch(s)).item() for _ in range(eval_iters)]).mean())
               for s in ("train", "val")}
        model.train()
        return out

    evals, times = [], []
    x, y = get_batch("train")
    t0 = time.time()
    for it in range(iters + 1):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it, decay_iters=iters)
        if it % eval_every == 0:
            evals.append({"iter": it, **estimate_loss()})
            print(f"step {it}: train loss {evals[-1]['train']:.4f}, val loss {evals[-1]['val']:.4f}", flush=True)
        loss = model(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        t1 = time.time()
        times.append(t1 - t0)
        t0 = t1
    with torch.no_grad():  # whole validation text, non-overlapping blocks, whole batches of 12 (as `eval --full`)
        model.eval()
        val = torch.from_numpy(splits["val"])
        count = (len(val) - 1) // block
        count -= count % batch
        starts = torch.arange(count) * block
        total = 0.0
        for b in range(0, count, batch):
            s = starts[b:b + batch]
            xs = torch.stack([val[i:i + block] for i in s])
            ys = torch.stack([val[i + 1:i + 1 + block] for i in s])
            total += model(xs, ys).item() * len(s)
        whole_val = total / count
    ms = sorted(1000 * t for t in times[1:])  # iteration 0 includes the first evaluation
    return {"seed": seed, "torch_seed": 1337 + seed, "evals": evals, "whole_val_loss": whole_val,
            "median_ms_per_iter": statistics.median(ms), "wall_s": sum(times), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train", metavar="DIR", help="run nanoGPT's whole baby run on DIR/input.txt instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="with --train: write the results here")
    args = p.parse_args()
    if args.train:
        result = train(args.train, args.seed)
        print(f"seed {args.seed}: final val {result['evals'][-1]['val']:.4f} (20 batches), whole val "
              f"{result['whole_val_loss']:.4f}, median {result['median_ms_per_iter']:.2f} ms/iter, "
              f"wall {result['wall_s']:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return
    torch.manual_seed(0)
    model = GPT()
    opt = make_optimizer(model)
    data = torch.randint(0, 65, (100_000,))
    times = []
    for step in range(args.warmup + args.steps):
        ix = torch.randint(len(data) - 65, (12,))
        x = torch.stack([data[i:i + 64] for i in ix])
        y = torch.stack([data[i + 1:i + 65] for i in ix])
        start = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()  # nanoGPT reads the loss every log step; here every step, as a sync point
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    ms = sorted(1000 * t for t in times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: median {statistics.median(ms):.2f} ms/step "
          f"(p10 {ms[len(ms) // 10]:.2f}, p90 {ms[9 * len(ms) // 10]:.2f})")


if __name__ == "__main__":
    main()
