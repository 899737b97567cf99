"""What a classification run folder shows: a confusion-matrix PNG and a model card with the evaluation."""

from __future__ import annotations

from pathlib import Path

from ...config.schema import RunConfig
from ...io import atomic_write_text
from ...plots import plt  # matplotlib, already switched to the headless backend


def plot_confusion_matrix(matrix: list[list[int]], label_names: list[str], path: Path, title: str) -> Path:
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(2.2 + 0.6 * k, 1.8 + 0.6 * k), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for t in range(k):
        for p in range(k):
            ax.text(p, t, str(matrix[t][p]), ha="center", va="center",
                    color="white" if matrix[t][p] > top / 2 else "black")
    ax.set_xticks(range(k), label_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_table(matrix: list[list[int]], label_names: list[str]) -> list[str]:
    """The matrix as a Markdown table, rows true labels, columns predictions."""
    return ["| true \\ predicted | " + " | ".join(label_names) + " |",
            "|---" * (len(label_names) + 1) + "|",
            *[f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(label_names, matrix)]]


def write_classification_card(path: Path, cfg: RunConfig, meta: dict, *, has_loss_plot: bool) -> None:
    m, task, evaluation = meta["method"], meta["classification"], meta.get("evaluation")
    base = cfg.model.name_or_path
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: peft" if meta["artifact"] == "adapter" else "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [tunesmith, text-classification, " + m["name"] + "]",
        "---",
        "",
        f"# Text classifier fine-tuned from {base} ({m['name']})",
        "",
        f"Trained with tunesmith {meta['tunesmith_version']}. Labels (in id order): "
        + ", ".join(f"`{name}`" for name in meta["label_names"]) + ".",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        lines += [f"On {evaluation['samples']} validation samples: accuracy **{evaluation['accuracy']:.4f}**, "
                  f"macro-F1 **{evaluation['macro_f1']:.4f}**.", "",
                  *confusion_table(evaluation["confusion_matrix"], meta["label_names"]), "",
                  "| label | precision | recall | F1 | support |", "|---|---|---|---|---|",
                  *[f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
                    for name, s in evaluation["per_class"].items()],
                  "", "![confusion matrix](confusion_matrix.png)", ""]
    else:
        lines += ["No validation data was given (set `data.validation` or `data.val_size`), so nothing was "
                  "measured.", ""]
    lines += [
        "## Training",
        "",
        "| option | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in m.items()],
        f"| trainable parameters | {meta['trainable_params']:,} of {meta['total_params']:,} |",
        f"| text column | {task['text_column']} |" + (f" + {task['text_pair_column']}" if task["text_pair_column"]
                                                       else ""),
        f"| class weights | {task['class_weights']} |",
        f"| label smoothing | {task['label_smoothing']} |",
        f"| max length | {meta['max_length']} tokens |",
        f"| learning rate | {cfg.training.learning_rate} ({cfg.training.lr_scheduler}) |",
        f"| batch | {cfg.training.batch_size} x accumulation {cfg.training.grad_accum} |",
        "",
        *[f"- `{d.path}`" for d in cfg.data.train],
        *[f"- {k}: {v}" for k, v in meta["data"].items()],
        "",
    ]
    if has_loss_plot:
        lines += ["![loss curves](loss.png)", ""]
    lines += ["## Use", "", "```bash", "tunesmith classify . --text \"...\"",
              "tunesmith classify . --file texts.csv --out predictions.jsonl", "```", "", "```python",
              "from tunesmith.tasks.classification import load_classifier",
              "clf = load_classifier('path/to/this/folder')",
              "clf.predict(['some text'])", "```", ""]
    atomic_write_text(path, "\n".join(lines))
