"""Loss curves as a PNG saved with the run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(metrics: list[dict], path: Path, title: str = "training") -> Path | None:
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), label="validation loss", color="#d62728", marker="o")
    # The retain options' terms (tunesmith/retain/): the task's loss and each penalty on its own.
    for key in sorted({k for m in metrics for k in m if k.startswith("loss_")}):
        curve = [(m["step"], m[key]) for m in metrics if key in m]
        ax.plot(*zip(*curve), label=key.removeprefix("loss_") if key != "loss_task" else "task loss",
                linestyle="--", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
