"""A model card written into every run folder, so the artifact explains itself."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import RunConfig
from ..diagnostics.callback import card_section as diagnostics_section
from ..evaluation.forgetting import card_section as forgetting_section
from ..io import atomic_write_text


def write_model_card(path: Path, cfg: RunConfig, meta: dict, *, has_plot: bool) -> None:
    m = meta["method"]
    task = meta.get("task", "sft")
    lines = [
        "---",
        f"base_model: {cfg.model.name_or_path}",
        "library_name: peft" if meta["artifact"] == "adapter" else "library_name: transformers",
        f"tags: [tunesmith, {task}, {m['name']}]",
        "---",
        "",
        f"# Fine-tuned {cfg.model.name_or_path} ({m['name']}, task {task})",
        "",
        f"Trained with tunesmith {meta['tunesmith_version']}.",
        "",
        "## Method",
        "",
        "| option | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in m.items()],
        f"| trainable parameters | {meta['trainable_params']:,} of {meta['total_params']:,} "
        f"({100 * meta['trainable_params'] / max(meta['total_params'], 1):.4f}%) |",
        "",
        "## Data",
        "",
        *[f"- `{d.path}` (format {d.format}, weight {d.weight})" for d in cfg.data.train],
        f"- template: `{meta['template']}`, max length {cfg.data.max_length}"
        + (", loss on assistant tokens only" if task == "sft" else ""),
        *[f"- preference.{k}: {v}" for k, v in (meta.get("preference") or {}).items()],
        *[f"- {k}: {v}" for k, v in meta["data"].items() if not isinstance(v, (dict, list))],
        "",
        "## Training",
        "",
        f"- learning rate {cfg.training.learning_rate} ({cfg.training.lr_scheduler}, warmup "
        f"{cfg.training.warmup_ratio}), batch {cfg.training.batch_size} x accumulation {cfg.training.grad_accum}",
        *[f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in meta["metrics"].items()],
        "",
    ]
    if has_plot:
        lines += ["![loss curves](loss.png)", ""]
    lines += diagnostics_section(meta.get("diagnostics"), meta.get("restored_from"))
    lines += forgetting_section(meta.get("forgetting"))
    if task == "reward":
        lines += [
            "## Use",
            "",
            "A reward model: one score per rendered prompt + reply (higher is preferred).",
            "",
            "```python",
            "from transformers import AutoModelForSequenceClassification",
            f"base = AutoModelForSequenceClassification.from_pretrained({cfg.model.name_or_path!r}, num_labels=1)",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')  # adapter runs; full runs load directly",
            "```",
            "",
        ]
        atomic_write_text(path, "\n".join(lines))
        return
    lines += [
        "## Use",
        "",
        "```bash",
        "tunesmith chat .        # the template used in training is applied automatically",
        "tunesmith export . --merge --out merged",
        "```",
        "",
    ]
    if meta["artifact"] == "adapter":
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"base = AutoModelForCausalLM.from_pretrained({cfg.model.name_or_path!r})",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')",
            "```",
            "",
        ]
    atomic_write_text(path, "\n".join(lines))
