"""The pipeline's results: `retention.json`, the heatmap `retention.png`, and the model card `README.md`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..io import atomic_write_json, atomic_write_text
from ..plots import plt

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .pipeline import PipelineResult


def row_labels(result: PipelineResult) -> list[str]:
    return ["start"] + [f"after {name}" for name in result.tasks][:len(result.matrix) - 1]


def write_results(result: PipelineResult, cfg: PipelineConfig) -> None:
    metric = cfg.evaluation.metric
    atomic_write_json(result.folder / "retention.json", {
        "strategy": cfg.strategy.model_dump(mode="json"), "metric": metric, "lower_is_better": True,
        "tasks": result.tasks, "rows": row_labels(result), "matrix": result.matrix, **result.summary,
        "final_model": result.final_model})
    plot_heatmap(result, metric, result.folder / "retention.png", title=f"retention ({cfg.strategy.name})")
    atomic_write_text(result.folder / "README.md", model_card(result, cfg))


def plot_heatmap(result: PipelineResult, metric: str, path, title: str) -> None:
    import numpy as np

    values = np.array([[math.nan if v is None else v for v in row] for row in result.matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(result.tasks), 1.2 + 0.6 * len(result.matrix)), dpi=110)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto")  # reversed: lower is better
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if math.isfinite(value):  # dark text on the light (low, good) end of the reversed viridis
                color = "black" if image.norm(value) < 0.5 else "white"
                ax.text(j, i, f"{value:.4g}", ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(result.tasks)), result.tasks)
    ax.set_yticks(range(len(result.matrix)), row_labels(result))
    ax.set_xlabel(f"task ({metric} on its held-out data, lower is better)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cell(value) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


def model_card(result: PipelineResult, cfg: PipelineConfig) -> str:
    metric, s = cfg.evaluation.metric, result.summary
    lines = [f"# Continual learning: {len(cfg.stages)} stages, strategy {cfg.strategy.name}", "",
             f"Base model: `{cfg.base['model']['name_or_path']}`. Stages in order: "
             + ", ".join(f"`{stage.name}`" for stage in cfg.stages) + ".",
             f"Final model: `{result.final_model}`.", "",
             "## Retention matrix", "",
             f"Row *after X*: the model after stage X; column: a task's {metric} on its held-out data (response "
             "tokens; lower is better). Row *start*: the base model before any stage.", "",
             "| | " + " | ".join(result.tasks) + " |", "|---" * (len(result.tasks) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_cell(v) for v in row) + " |"
              for label, row in zip(row_labels(result), result.matrix)]
    if s:
        lines += ["", "## Summary", "",
                  f"- average {metric} after the last stage: {_cell(s['average'])}",
                  f"- backward transfer (BWT): {_cell(s['bwt'])} (negative: earlier tasks got worse)",
                  "", "| task | forgetting | forgetting rate |", "|---|---|---|"]
        lines += [f"| {task} | {_cell(f)} | " + ("–" if r is None or not math.isfinite(r) else f"{100 * r:+.1f}%")
                  + " |" for task, f, r in zip(result.tasks, s["forgetting"], s["forgetting_rate"])]
        lines += ["", "Forgetting: how much worse a task's score is after the last stage than its best after it was "
                      "learned (positive: forgotten); the rate is that relative to the best score. The last task "
                      "has none.", ""]
    lines += ["![retention](retention.png)", "", "Each stage's run folder (`stages/`) has its own model card, loss "
              "curve and train.log; `retention.json` holds these numbers.", ""]
    return "\n".join(lines)
