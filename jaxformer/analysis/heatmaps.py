"""Static pictures of captured attention (matplotlib, Agg backend): the layers x heads grid, one large heatmap
per head, the diagnostics table and the diagnostics over training steps.

Rows are query tokens, columns key tokens. The colour scale is the same in every panel (0 to 1, square-root
stretched so that weights of a few percent stay visible); the masked future (j > i) is drawn light grey, apart
from weights that are merely small. Token labels are drawn where they fit (`fits_labels`).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxformer.analysis import diagnostics  # noqa: E402

NORM = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
FUTURE = "#eeeeee"
LABEL_FONT_PT = 6.0
SHOWN = {"\n": "⏎", " ": "␣", "\t": "⇥", "\r": "␍"}


def display_token(token: str) -> str:
    """A token as a label: whitespace made visible (space ␣, newline ⏎, tab ⇥)."""
    return "".join(SHOWN.get(c, c) for c in token) if token.strip() == "" or "\n" in token else token


def fits_labels(n_tokens: int, axis_inches: float, *, font_pt: float = LABEL_FONT_PT) -> bool:
    """Whether one label per token fits along an axis: each token needs about 1.15 x the font height."""
    return n_tokens * font_pt * 1.15 <= axis_inches * 72


def _cmap():
    return plt.get_cmap("viridis").with_extremes(bad=FUTURE)


def _masked(w_TxT: np.ndarray) -> np.ma.MaskedArray:
    T, S = w_TxT.shape
    return np.ma.masked_where(np.arange(S)[None, :] > np.arange(T)[:, None], w_TxT)


def _label_axes(ax, tokens: list[str], *, labels: bool, font_pt: float = LABEL_FONT_PT):
    T = len(tokens)
    if labels:
        shown = [display_token(t) for t in tokens]
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.set_xticklabels(shown, rotation=90, fontsize=font_pt, family="DejaVu Sans Mono")
        ax.set_yticklabels(shown, fontsize=font_pt, family="DejaVu Sans Mono")
        ax.tick_params(length=0, pad=1)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def grid(weights_LxHxTxT: np.ndarray, tokens: list[str], path: str, *, layers: list[int], heads: list[int],
         title: str = "") -> None:
    """Layers (rows) x heads (columns) of heatmaps; token labels on every panel when they fit."""
    L, H, T, _ = weights_LxHxTxT.shape
    panel = float(np.clip(16.0 / H, 1.8, 3.6))  # inches per panel: a 4-head grid gets 3.6", 12 heads 1.8"
    labels = fits_labels(T, panel * 0.85)
    interpolation = "nearest" if T <= panel * 130 / 2 else "antialiased"  # >= 2 pixels per token, else smooth
    pad = 0.45 if labels else 0.0
    fig, axes = plt.subplots(L, H, figsize=(H * (panel + pad) + 1.2, L * (panel + pad) + 0.9), dpi=130,
                             squeeze=False, layout="constrained")
    image = None
    for a in range(L):
        for b in range(H):
            ax = axes[a, b]
            image = ax.imshow(_masked(weights_LxHxTxT[a, b]), cmap=_cmap(), norm=NORM,
                              interpolation=interpolation)
            _label_axes(ax, tokens, labels=labels)
            if a == 0:
                ax.set_title(f"head {heads[b]}", fontsize=10)
            if b == 0:
                ax.set_ylabel(f"layer {layers[a]}" + ("" if labels else "\nquery"), fontsize=10)
            if a == L - 1 and not labels:
                ax.set_xlabel("key", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8 if L < 3 else 0.5, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)


def head(w_TxT: np.ndarray, tokens: list[str], path: str, *, title: str = "") -> None:
    """One head's matrix, large: labelled up to ~150 tokens, otherwise with position ticks."""
    T = w_TxT.shape[0]
    side = float(np.clip(0.13 * T, 5.0, 16.0))
    labels = fits_labels(T, side, font_pt=7.0)
    fig, ax = plt.subplots(figsize=(side + 1.8, side + 0.9), dpi=130, layout="constrained")
    image = ax.imshow(_masked(w_TxT), cmap=_cmap(), norm=NORM, interpolation="nearest")
    if labels:
        _label_axes(ax, tokens, labels=True, font_pt=7.0)
    ax.set_xlabel("key token (attended to)")
    ax.set_ylabel("query token (attending)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    ax.set_title(title, fontsize=11)
    _save(fig, path)


def diagnostics_table(table: dict, path: str, *, layers: list[int], heads: list[int],
                      title: str = "") -> None:
    """One panel per metric: a layers x heads table coloured by value, the value written in each cell."""
    names = [name for name in diagnostics.METRICS if name in table]
    L, H = len(layers), len(heads)
    cell = 0.55
    fig, axes = plt.subplots(1, len(names), figsize=(len(names) * (H * cell + 1.0) + 0.5, L * cell + 1.9),
                             dpi=130, squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names, strict=True):
        values = np.asarray(table[name], np.float64)
        unbounded = name in ("entropy", "mean_distance")  # nats, positions; the others are in [0, 1]
        scale = (0.0, max(float(values.max()), 1e-6)) if unbounded else (0.0, 1.0)
        ax.imshow(values, cmap="magma", vmin=scale[0], vmax=scale[1], aspect="equal")
        for a in range(L):
            for b in range(H):
                v = values[a, b]
                dark = (v - scale[0]) / (scale[1] - scale[0] + 1e-12) < 0.6
                ax.text(b, a, f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(H), [str(h) for h in heads], fontsize=8)
        ax.set_yticks(range(L), [str(l) for l in layers], fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_title(name.replace("_", " "), fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def diagnostics_history(series: dict[str, list[tuple[int, float]]], path: str, *, title: str = "") -> None:
    """Each metric against the training step (metrics.jsonl's `attn/L{l}H{h}/{metric}`), one line per head."""
    names = [name for name in diagnostics.METRICS if any(key.endswith("/" + name) for key in series)]
    if not names:
        raise ValueError("no attention diagnostics in metrics.jsonl; train with "
                         "--config.train.attention_diagnostics_every=N")
    heads = sorted({key.split("/")[1] for key in series})
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), dpi=120, squeeze=False,
                             layout="constrained")
    colors = plt.get_cmap("tab10" if len(heads) <= 10 else "tab20")
    for ax, name in zip(axes.flat[:len(names)], names, strict=True):
        for k, head_name in enumerate(heads):
            points = series.get(f"attn/{head_name}/{name}")
            if points:
                steps, values = np.asarray(points).T
                ax.plot(steps, values, "-o", markersize=2, color=colors(k % colors.N), label=head_name)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2 if len(heads) > 8 else 1)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
