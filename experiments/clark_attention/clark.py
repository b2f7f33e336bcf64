"""Clark et al. 2019's surface-level attention analysis on an imported BERT-family run (here all-MiniLM-L6-v2).

    jaxformer import --hf DIR_OF_MINILM --workdir runs/minilm
    python experiments/clark_attention/clark.py --workdir runs/minilm --out experiments/clark_attention

Segments: tiny_shakespeare's validation text (TFDS validation + test, the last 10% of input.txt; $JAXFORMER_MANUAL_DIR
holds input.txt), cut into lines; consecutive non-empty lines form the pairs "[CLS] line 2k [SEP] line 2k+1 [SEP]"
(sentence A, sentence B; no segment shares a line with another). Writes heads.csv (every measure per layer and head,
with 95% t intervals over segments), layers.csv, summary.json and the figures; every number is a mean over segments of
the segment's mean over its tokens (jaxformer.analysis.clark).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time

import numpy as np
from scipy import stats
from scipy.cluster import hierarchy

from jaxformer import loader
from jaxformer.analysis import capture, clark
from jaxformer.data import SubwordTokenizer, run_tokenizer
from jaxformer.data.tiny_shakespeare.builder import split_text

MEASURES = ("cls", "sep", "period", "comma", "punct", "prev", "next", "self", "entropy", "cls_entropy",
            "uniform_entropy")


def segments(text: str, tok: SubwordTokenizer, max_tokens: int) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = []
    for a, b in zip(lines[0::2], lines[1::2], strict=False):
        ids, types = tok.encode_pair(a, b)
        if ids.size <= max_tokens:  # none of these short lines is longer; kept as a guard, counted in the summary
            out.append((ids, types, a, b))
    return out


def per_segment(w_LxHxTxT, valid_T, ids_T, special: dict) -> dict:
    is_ = {name: np.isin(ids_T, ids) for name, ids in special.items()}
    mean_h, cls_h = clark.entropy(w_LxHxTxT, valid_T)
    return {"cls": clark.attention_to(w_LxHxTxT, valid_T, is_["cls"]),
            "sep": clark.attention_to(w_LxHxTxT, valid_T, is_["sep"]),
            "period": clark.attention_to(w_LxHxTxT, valid_T, is_["period"]),
            "comma": clark.attention_to(w_LxHxTxT, valid_T, is_["comma"]),
            "punct": clark.attention_to(w_LxHxTxT, valid_T, is_["period"] | is_["comma"]),
            "prev": clark.offset_attention(w_LxHxTxT, valid_T, -1),
            "next": clark.offset_attention(w_LxHxTxT, valid_T, 1),
            "self": clark.offset_attention(w_LxHxTxT, valid_T, 0),
            "entropy": mean_h, "cls_entropy": cls_h,
            "uniform_entropy": np.full(mean_h.shape, clark.uniform_entropy(valid_T)),
            # the share each token type would get from uniform attention: the trivial baseline of Fig. 2
            "uniform_cls": np.full(mean_h.shape, is_["cls"][valid_T].mean()),
            "uniform_sep": np.full(mean_h.shape, is_["sep"][valid_T].mean()),
            "uniform_punct": np.full(mean_h.shape, (is_["period"] | is_["comma"])[valid_T].mean())}


def interval(x_NxLxH) -> tuple[np.ndarray, np.ndarray]:
    """(mean, half-width of the 95% t interval) over segments."""
    n = x_NxLxH.shape[0]
    return x_NxLxH.mean(0), stats.t.ppf(0.975, n - 1) * x_NxLxH.std(0, ddof=1) / np.sqrt(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="an imported BERT-family run directory")
    p.add_argument("--out", required=True, help="where the CSVs, JSON and figures go")
    p.add_argument("--manual-dir", default=os.environ.get("JAXFORMER_MANUAL_DIR", ""), help="folder of input.txt")
    p.add_argument("--max-tokens", type=int, default=128, help="Clark et al.'s segment limit")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    start = time.time()
    cfg, _, params, _ = loader.restore_params(args.workdir)
    model = capture.reference_model(cfg.model, params)  # the reference path forms the weights
    tok = run_tokenizer(args.workdir)
    text = open(os.path.join(args.manual_dir, "input.txt"), encoding="utf-8").read()
    parts = split_text(text)
    val = parts["validation"] + parts["test"]
    segs = segments(val, tok, args.max_tokens)
    special = {"cls": [tok.token_id("[CLS]")], "sep": [tok.token_id("[SEP]")], "period": [tok.token_id(".")],
               "comma": [tok.token_id(",")]}
    order = np.argsort([s[0].size for s in segs], kind="stable")  # batches of similar lengths: little padding
    segs = [segs[i] for i in order]
    records: dict[str, list] = {}
    L, H = cfg.model.n_layer, cfg.model.n_head
    js_sum, n_queries = np.zeros((L * H, L * H)), 0
    for b0 in range(0, len(segs), args.batch):
        print(f"segments {b0}/{len(segs)}, {time.time() - start:.0f} s", flush=True)
        batch = segs[b0:b0 + args.batch]
        T = -(-max(s[0].size for s in batch) // 16) * 16  # padded to a multiple of 16: a few compiled shapes
        ids = np.zeros((len(batch), T), np.int32)
        types = np.zeros((len(batch), T), np.int32)
        valid = np.zeros((len(batch), T), bool)
        for r, (i, t, _, _) in enumerate(batch):
            ids[r, :i.size], types[r, :i.size], valid[r, :i.size] = i, t, True
        _, w = capture.attention_weights_batch(model, ids, token_types_BxT=types, mask_BxT=valid, logits=False)
        w = w.astype(np.float64)
        for r in range(len(batch)):
            for name, value in per_segment(w[:, r], valid[r], ids[r], special).items():
                records.setdefault(name, []).append(value)
            js_sum += clark.js_divergence_sum(w[:, r], valid[r])
            n_queries += int(valid[r].sum())
    arrays = {k: np.stack(v) for k, v in records.items()}  # [N, L, H]
    n = len(segs)
    os.makedirs(args.out, exist_ok=True)

    with open(os.path.join(args.out, "heads.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head"] + [c for m in MEASURES for c in (m, f"{m}_ci95")])
        stats_by = {m: interval(arrays[m]) for m in MEASURES}
        for layer in range(L):
            for head in range(H):
                row = [layer + 1, head]
                for m in MEASURES:
                    mean, half = stats_by[m]
                    row += [f"{mean[layer, head]:.4f}", f"{half[layer, head]:.4f}"]
                writer.writerow(row)
    layer_rows = []
    with open(os.path.join(args.out, "layers.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        cols = ["cls", "sep", "punct", "prev", "next", "self", "entropy", "cls_entropy", "uniform_entropy",
                "uniform_cls", "uniform_sep", "uniform_punct"]
        writer.writerow(["layer"] + [c for m in cols for c in (m, f"{m}_ci95")])
        for layer in range(L):
            row = {"layer": layer + 1}
            out = [layer + 1]
            for m in cols:
                per_seg = arrays[m][:, layer].mean(-1)  # the layer's mean over heads, per segment
                mean, half = interval(per_seg[:, None, None])
                row[m], row[f"{m}_ci95"] = float(mean[0, 0]), float(half[0, 0])
                out += [f"{row[m]:.4f}", f"{row[f'{m}_ci95']:.4f}"]
            writer.writerow(out)
            layer_rows.append(row)

    prev_mean, next_mean = arrays["prev"].mean(0), arrays["next"].mean(0)
    js_mean = js_sum / n_queries
    summary = {
        "workdir": os.path.abspath(args.workdir), "segments": n, "tokens": int(sum(s[0].size for s in segs)),
        "mean_segment_tokens": float(np.mean([s[0].size for s in segs])),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - start, 1),
        "heads_over_half_on_previous": [[int(a) + 1, int(b)] for a, b in zip(*np.nonzero(prev_mean > 0.5),
                                                                              strict=True)],
        "heads_over_half_on_next": [[int(a) + 1, int(b)] for a, b in zip(*np.nonzero(next_mean > 0.5), strict=True)],
        "layers": layer_rows,
        "js_within_layer_mean": float(np.mean([js_mean[a, b] for a in range(L * H) for b in range(L * H)
                                               if a != b and a // H == b // H])),
        "js_across_layers_mean": float(np.mean([js_mean[a, b] for a in range(L * H) for b in range(L * H)
                                                if a // H != b // H])),
    }
    summary["js_within_layer_permutation_p"] = within_layer_permutation_p(js_mean, L, H)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    np.save(os.path.join(args.out, "js_divergence_mean.npy"), js_mean)
    figures(arrays, js_mean, L, H, args.out, n)
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}, indent=1))


def within_layer_permutation_p(js_mean, L: int, H: int, rounds: int = 10000, seed: int = 0) -> float:
    """The one test declared before the run (Clark et al. §6, "heads within the same layer are often fairly close
    to each other"): is the mean JS divergence between heads of the same layer smaller than under random
    assignments of the heads to layers (same layer sizes)? One-sided permutation p-value, (1 + #<=) / (1 + rounds)."""
    rng = np.random.default_rng(seed)
    off = ~np.eye(L * H, dtype=bool)

    def within(layer_of):
        same = (layer_of[:, None] == layer_of[None, :]) & off
        return js_mean[same].mean()

    layer_of = np.repeat(np.arange(L), H)
    observed = within(layer_of)
    null = np.array([within(rng.permutation(layer_of)) for _ in range(rounds)])
    return float((1 + np.sum(null <= observed)) / (1 + rounds))


def figures(arrays, js_mean, L, H, out, n) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    layers = np.arange(1, L + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, (name, label, base) in zip(axes, (("cls", "[CLS]", "uniform_cls"), ("sep", "[SEP]", "uniform_sep"),
                                              ("punct", ". or ,", "uniform_punct")), strict=True):
        mean = arrays[name].mean(0)
        for layer in range(L):
            ax.scatter(layer + 1 + rng.uniform(-0.15, 0.15, H), mean[layer], s=14, alpha=0.7)
        ax.plot(layers, arrays[name].mean((0, 2)), "k-", lw=1, label="layer mean")
        ax.plot(layers, arrays[base].mean((0, 2)), "k:", lw=1, label="uniform attention")
        ax.set_title(f"avg. attention to {label}")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].set_ylabel("attention (mean over tokens)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"all-MiniLM-L6-v2 on {n} tiny_shakespeare validation segments (cf. Clark et al. 2019, Fig. 2)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "token_types.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, name in zip(axes, ("prev", "self", "next"), strict=True):
        mean = arrays[name].mean(0)
        for layer in range(L):
            ax.scatter(layer + 1 + rng.uniform(-0.15, 0.15, H), mean[layer], s=14, alpha=0.7)
        ax.axhline(0.5, color="r", ls="--", lw=0.8)
        ax.set_title({"prev": "to the previous token", "self": "to itself", "next": "to the next token"}[name])
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].set_ylabel("attention (mean over tokens)")
    fig.suptitle("relative position (cf. Clark et al. 2019 §3.1); red: 50%")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "relative_position.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, name, title in ((axes[0], "entropy", "mean entropy of each token's attention"),
                            (axes[1], "cls_entropy", "entropy of [CLS]'s attention")):
        mean = arrays[name].mean(0)
        for layer in range(L):
            ax.scatter(layer + 1 + rng.uniform(-0.15, 0.15, H), mean[layer], s=14, alpha=0.7)
        ax.plot(layers, mean.mean(-1), "k-", lw=1, label="layer mean")
        ax.plot(layers, arrays["uniform_entropy"].mean((0, 2)), "k:", lw=1, label="uniform attention")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].set_ylabel("entropy (nats)")
    axes[0].legend(fontsize=8)
    fig.suptitle("focused vs broad attention (cf. Clark et al. 2019, Fig. 4)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "entropy.png"), dpi=120)
    plt.close(fig)

    distance = np.sqrt(np.maximum(js_mean, 0.0))  # the JS distance (a metric) of the mean JS divergence
    xy = clark.classical_mds(distance)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("viridis", L)
    for a in range(L * H):
        axes[0].scatter(*xy[a], color=cmap(a // H), s=30)
        axes[0].annotate(f"{a // H + 1}-{a % H}", xy[a], fontsize=6)
    for layer in range(L):
        axes[0].scatter([], [], color=cmap(layer), label=f"layer {layer + 1}")
    axes[0].legend(fontsize=7)
    axes[0].set_title("heads by Jensen-Shannon distance, classical MDS (cf. Clark et al. Fig. 6)")
    condensed = distance[np.triu_indices(L * H, 1)]
    link = hierarchy.linkage(condensed, method="average")
    hierarchy.dendrogram(link, ax=axes[1], labels=[f"{a // H + 1}-{a % H}" for a in range(L * H)], leaf_font_size=5)
    axes[1].set_title("average-linkage clustering of the same distances (label: layer-head)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "head_similarity.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
