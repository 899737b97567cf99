"""Loss curves as a PNG saved with the run.

The training loss of one logged step is noisy (a few batches), so the plot shows each logged value as a faint point
and, through them, a smoothed line: an exponential moving average debiased at the start (`smoothed`), what the eye
reads the trend from. Validation losses are whole-set numbers and are drawn as they are.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402


def smoothing_weight(points: int) -> float:
    """The moving average's weight for a curve of `points` values: a window of about a tenth of the curve (3 to
    100 points), so a short run is not flattened and a long one is not left noisy. Below 10 points, none (0.0)."""
    if points < 10:
        return 0.0
    window = min(max(points // 10, 3), 100)
    return 1 - 1 / window


def smoothed(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased: s_t = w·s_(t-1) + (1-w)·x_t from s_0 = 0, shown as s_t / (1 - w^t).
    Without the division the first points would be pulled towards 0 (the start value); with it the first smoothed
    value is the first raw one and a constant curve stays constant (as TensorBoard smooths)."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)  # = 1 - w^t
        out.append(average / norm)
    return out


def loss_figure(metrics: list[dict], title: str = "training"):
    """The loss figure of a run's logged `metrics`, or None when nothing was logged."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, values = zip(*train)
        weight = smoothing_weight(len(values))
        if weight:
            ax.plot(steps, values, label="train loss (each logged step)", color="#1f77b4", alpha=0.3,
                    linewidth=0.8, marker=".", markersize=3)
            ax.plot(steps, smoothed(list(values), weight), label="train loss (smoothed)", color="#1f77b4",
                    linewidth=2)
        else:
            ax.plot(steps, values, label="train loss", color="#1f77b4", marker=".")
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
    return fig


def plot_loss_curves(metrics: list[dict], path: Path, title: str = "training") -> Path | None:
    fig = loss_figure(metrics, title)
    if fig is None:
        return None
    fig.savefig(path)
    plt.close(fig)
    return path
