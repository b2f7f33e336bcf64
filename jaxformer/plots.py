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


def compare_curves(curves: dict, path: str) -> None:
    """Several runs' losses in one figure: validation solid with markers, training (logged) faint, one colour per run;
    a second panel with the validation exact-match accuracy when a run has one. `curves`: label -> metrics records."""
    has_accuracy = any("val_accuracy" in m for records in curves.values() for m in records)
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(12 if has_accuracy else 7.5, 4.5), dpi=120,
                             squeeze=False)
    loss_ax = axes[0, 0]
    for i, (label, records) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for key, style, alpha, legend in (("loss", "-", 0.35, "_nolegend_"), ("val_loss", "-o", 1.0, label)):
            points = [(m["step"], m[key]) for m in records if key in m]
            if points:
                steps, values = zip(*points, strict=True)
                loss_ax.plot(steps, values, style, color=color, alpha=alpha, markersize=3, label=legend)
        if has_accuracy:
            points = [(m["step"], 100 * m["val_accuracy"]) for m in records if "val_accuracy" in m]
            if points:
                steps, values = zip(*points, strict=True)
                axes[0, 1].plot(steps, values, "-o", color=color, markersize=3, label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("cross-entropy (nats/token)")
    loss_ax.set_yscale("log")
    loss_ax.grid(True, which="both", alpha=0.3)
    loss_ax.legend(fontsize=7)
    loss_ax.set_title("loss: validation (markers), training (faint)")
    if has_accuracy:
        axes[0, 1].set_xlabel("step")
        axes[0, 1].set_ylabel("exact match (%)")
        axes[0, 1].set_ylim(-2, 102)
        axes[0, 1].grid(True, alpha=0.3)
        axes[0, 1].legend(fontsize=7)
        axes[0, 1].set_title("validation exact match")
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
