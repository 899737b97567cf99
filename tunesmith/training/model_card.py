"""A model card written into every run folder, so the artifact explains itself.

Its Python snippet runs as written, without tunesmith: the base is what `from_pretrained` loads (a hub id as given,
a local folder by its absolute path, and a tunesmith alias such as `smollm2-135m-instruct` or a `.gguf` file as the
Hugging Face folder tunesmith converted it into and trained on), the trained model is the run folder's path.
"""

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
            *python_snippet(cfg, meta["artifact"], "AutoModelForSequenceClassification", ", num_labels=1"),
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
    lines += python_snippet(cfg, meta["artifact"], "AutoModelForCausalLM")
    atomic_write_text(path, "\n".join(lines))


def base_reference(cfg: RunConfig) -> str:
    """What `from_pretrained` loads the run's base from (the module docstring); the run has resolved it already, so
    nothing is downloaded or converted here."""
    from ..models.loading import source_kwargs

    ref, _ = source_kwargs(cfg.model)
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def python_snippet(cfg: RunConfig, artifact: str, auto_class: str, extra: str = "") -> list[str]:
    """Loading the run with transformers (and PEFT for an adapter), as card lines; none for the artifacts only
    tunesmith loads (bottleneck, hybrid)."""
    folder = str(Path(cfg.training.output_dir).resolve())
    if artifact == "full":
        return ["```python", f"from transformers import {auto_class}",
                f"model = {auto_class}.from_pretrained({folder!r}{extra})  # this folder", "```", ""]
    if artifact != "adapter":
        return []
    options = extra
    if cfg.model.revision:
        options += f", revision={cfg.model.revision!r}"
    if cfg.model.trust_remote_code:
        options += ", trust_remote_code=True"
    base = base_reference(cfg)
    note = f"  # {cfg.model.name_or_path}, as tunesmith loaded it" if base != cfg.model.name_or_path else ""
    return ["```python", "from peft import PeftModel", f"from transformers import {auto_class}",
            f"base = {auto_class}.from_pretrained({base!r}{options}){note}",
            f"model = PeftModel.from_pretrained(base, {folder!r})  # this folder", "```", ""]
