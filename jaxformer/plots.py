"""Plots written into run directories (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(metrics: list[dict], path: str, *, title: str = "") -> None:
    """Training loss (logged) and evaluation losses against the step, log-y."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    series = [("loss", "train (logged)", "-"), ("train_eval_loss", "train (eval)", "--"), ("val_loss", "val", "-o")]
    for key, label, style in series:
        points = [(m["step"], m[key]) for m in metrics if key in m]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
