"""The sweep report's figures: loss vs eval length, loss per token position, accuracy per task size."""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _readable_ylim(ax, values: list[float]) -> bool:
    """Clip the top so that a variant that blows up does not flatten the others (values far above the upper
    quartile, by five interquartile ranges); True when something is cut off."""
    if not values:
        return False
    low, high = min(values), max(values)
    q1, q3 = np.percentile(values, [25, 75])
    top = min(high, q3 + 5 * max(q3 - q1, 0.02))
    margin = max(0.05 * (top - low), 0.01)
    ax.set_ylim(low - margin, top + margin)
    return high > top + margin


def _mark_training_length(ax, block: int | None) -> None:
    if block:
        ax.axvline(block, color="grey", linestyle=":", linewidth=1)
        ax.text(block, 0.98, " training length", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                color="grey")


def plot_extrapolation(variants: list[dict], path: str, *, title: str = "") -> None:
    """Mean eval loss against eval length (log-x), one line per variant, error bars = spread over seeds, dashed: the
    same variant's sliding-window baseline; a second panel with exact-match accuracy for synthetic tasks."""
    plt = _plt()
    accuracy = bool(variants) and variants[0]["has_accuracy"]
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(13 if accuracy else 8.5, 5), dpi=120, squeeze=False)
    cmap = plt.get_cmap("tab10")
    lengths = sorted({x["length"] for v in variants for x in v["lengths"]})
    panels = [("loss", "mean loss at the predicted tokens (nats/token)", 1.0)]
    if accuracy:
        panels.append(("exact_match", "exact match (%)", 100.0))
    for ax, (key, label, scale) in zip(axes[0], panels, strict=True):
        shown = []
        for i, v in enumerate(variants):
            pts = [(x["length"], x[key][0] * scale, x[key][1] * scale) for x in v["lengths"] if x[key] is not None]
            if not pts:
                continue
            T, mean, std = zip(*pts, strict=True)
            shown += list(mean)
            ax.errorbar(T, mean, yerr=std, fmt="o-" if len(pts) > 1 else "s", color=cmap(i % 10),
                        label=v["variant"], capsize=3, markersize=5, linewidth=1.6)
        for i, v in enumerate(variants if key == "loss" else ()):  # the sliding-window baseline, dashed
            pts = [(x["length"], x["sliding_loss"][0]) for x in v["lengths"] if x.get("sliding_loss")]
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), "--", color=cmap(i % 10), linewidth=1.0, alpha=0.7)
                shown += [y for _, y in pts]
        _mark_training_length(ax, variants[0]["block_size"] if variants else None)
        ax.set_xscale("log", base=2)
        if lengths:
            ax.set_xticks(lengths, [str(T) for T in lengths])
            ax.minorticks_off()
        if key == "loss" and _readable_ylim(ax, shown):
            ax.text(0.99, 0.01, "points above the axis: see results.md", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color="grey")
        if key == "exact_match":  # a percentage: the whole 0-100 range, also when every point is 0
            ax.set_ylim(-2, 102)
        ax.set_xlabel("eval length (tokens, log scale)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:  # no point evaluated yet: no legend
        axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _log_bins(curve_T: np.ndarray, per_octave: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean of the finite values in each bin) over log-spaced position bins [0, 1), [1, 2), ..."""
    T = len(curve_T)
    edges = np.unique(np.round(np.geomspace(1, T, int(per_octave * math.log2(max(T, 2))) + 1)).astype(int))
    edges = np.concatenate([[0], edges[edges < T], [T]])
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        values = curve_T[lo:hi][np.isfinite(curve_T[lo:hi])]
        if values.size:
            centres.append(math.sqrt(max(lo, 0.5) * (hi - 0.5)) if hi - lo > 1 else lo)
            means.append(values.mean())
    return np.asarray(centres), np.asarray(means)


def plot_position_loss(variants: list[dict], path: str, *, title: str = "", per_octave: int = 4) -> None:
    """Mean loss at each token position (see position_curve) up to each variant's longest length, log-x, averaged
    over log-spaced position bins (`per_octave` per doubling) so the late positions are not noise."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    shown, longest = [], 1
    for i, v in enumerate(variants):
        curve_T = v["position_loss"]
        if curve_T is None:
            continue
        longest = max(longest, len(curve_T))
        x, y = _log_bins(curve_T, per_octave)
        shown += list(y[x >= 4])  # the first few positions (little context yet) may leave the axis
        ax.plot(np.maximum(x, 0.5), y, "-" if len(y) > 3 else "o", color=cmap(i % 10),
                label=f"{v['variant']} (T={len(curve_T)})", linewidth=1.4)
    _mark_training_length(ax, variants[0]["block_size"] if variants else None)
    if _readable_ylim(ax, shown):
        ax.text(0.99, 0.01, "curves above the axis: see results.md", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ticks = [2 ** k for k in range(int(math.log2(longest)) + 1)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"token position in the window (log scale; mean over {per_octave} bins per doubling)")
    ax.set_ylabel("mean loss at the position (nats/token)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no curve yet (a sweep stopped before its first evaluation): no legend
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sizes(variants: list[dict], path: str, *, title: str = "") -> None:
    """Exact match and token accuracy at every task size, one line per variant (mean over seeds, bars = spread),
    the longest training size marked: the per-length curve of the length-generalization papers."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=120)
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")  # 20 distinct colours for a task's 15 rows
    for ax, (key, label) in zip(axes, (("exact_match", "exact match (%)"), ("token_accuracy", "token accuracy (%)")),
                                strict=True):
        for i, v in enumerate(variants):
            sizes = v.get("sizes")
            pts = [(x["items"], 100 * x[key][0], 100 * x[key][1]) for x in (sizes or {}).get("per_size", [])
                   if x[key] is not None]
            if not pts:
                continue
            n, mean, std = zip(*pts, strict=True)
            ax.errorbar(n, mean, yerr=std, fmt="--" if v["variant"].endswith("(random eval positions)") else "-",
                        color=cmap(i % cmap.N), label=v["variant"], capsize=2, linewidth=1.4)
        train_max = next((v["sizes"]["train_max_items"] for v in variants if v.get("sizes")), None)
        if train_max:
            ax.axvline(train_max + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(train_max + 0.5, 0.02, " longest training size", transform=ax.get_xaxis_transform(),
                    fontsize=8, color="grey")
        ax.set_xlabel("task size n (items in the prompt)")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
