"""`train_classification(config)`: labelled texts → a sequence classifier (LoRA-style adapter or full model),
trained with transformers' Trainer and saved as a run folder with its evaluation."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from transformers import EarlyStoppingCallback, Trainer, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ... import __version__
from ...config.schema import RunConfig
from ...io import atomic_write_json, atomic_write_text, publish_dir_contents
from ...methods.registry import get_method
from ...models.loading import RUN_META, load_tokenizer, training_compute_dtype, training_load_dtype
from ...models.targets import count_parameters
from ...training.arguments import build_training_arguments, configure_cpu_runtime
from ...training.cpu_layers import apply_cpu_layers
from ...training.callbacks import MetricsFileCallback, RichProgressCallback, read_metrics
from ...training.plots import plot_loss_curves
from ...training.run import TrainResult, _checkpoint_to_resume, _tensorboard, total_steps
from .data import ClassificationCollator, build_classification_data
from .loss import class_weights, make_loss_func
from .metrics import classification_report, trainer_metrics
from .model import classification_method_options, load_classification_model
from .report import plot_confusion_matrix, write_classification_card


def train_classification(cfg: RunConfig, *, resume: bool = False, console: Console | None = None,
                         extra_callbacks: list | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    task = cfg.classification
    run_dir = Path(cfg.training.output_dir)
    checkpoint = _checkpoint_to_resume(run_dir, resume, console)
    set_seed(cfg.training.seed)
    configure_cpu_runtime(cfg)
    method = get_method(cfg.method.name)
    compute_dtype = training_compute_dtype(cfg.model.dtype, bf16_safe=method.bf16_autocast_safe(cfg.method))

    console.print(f"[bold]tunesmith[/] classification ({cfg.method.name}) on {cfg.model.name_or_path}")
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "right"
    max_length = _max_length(cfg, console)
    with console.status("preparing data"):
        data = build_classification_data(cfg.data, task, tokenizer, max_length)
    console.print(f"data: {data.stats['train_samples']} training samples, {data.stats['validation_samples']} "
                  f"validation samples; labels {data.label_names}")
    counts = list(data.stats["train_class_counts"].values())
    weights = class_weights(task.class_weights, counts)

    load_dtype = training_load_dtype(method.is_peft, compute_dtype)
    with console.status("loading model"):
        model = load_classification_model(cfg.model, data.label_names, pad_token_id=tokenizer.pad_token_id,
                                          dtype=load_dtype, extra=method.load_kwargs(cfg.method, compute_dtype))
        model.config.use_cache = False
        opts = classification_method_options(model, cfg.method)
        method_meta = opts.model_dump(mode="json")  # before PEFT adds its SEQ_CLS head names to modules_to_save
        model = method.prepare(model, opts, gradient_checkpointing=cfg.training.gradient_checkpointing,
                               total_steps=total_steps(cfg, len(data.train)))
    apply_cpu_layers(cfg, model, console)  # outside: its own status, and rich < 14.1 allows one at a time
    trainable, total = count_parameters(model)
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

    has_validation = data.validation is not None
    args = build_training_arguments(cfg, compute_dtype=compute_dtype, has_validation=has_validation)
    if has_validation:  # the best checkpoint / early stopping follow the configured metric, not eval_loss
        args.metric_for_best_model = "eval_loss" if task.metric_for_best == "loss" else f"eval_{task.metric_for_best}"
        args.greater_is_better = task.metric_for_best != "loss"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                             allow_unicode=True))
    callbacks = [RichProgressCallback(console), MetricsFileCallback(run_dir / "metrics.jsonl")]
    if cfg.training.tensorboard:
        callbacks.append(_tensorboard(run_dir))
    if cfg.training.early_stopping_patience and has_validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    callbacks += method.callbacks(model, opts)
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                      data_collator=ClassificationCollator(tokenizer), processing_class=tokenizer,
                      compute_loss_func=make_loss_func(weights, task.label_smoothing),
                      compute_metrics=trainer_metrics(len(data.label_names)) if has_validation else None,
                      callbacks=callbacks + list(extra_callbacks or []),
                      optimizers=(method.optimizer(model, opts, args), None))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    metrics, evaluation = dict(output.metrics), None
    if has_validation:
        prediction = trainer.predict(data.validation, metric_key_prefix="eval")
        metrics.update(prediction.metrics)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        evaluation = classification_report(prediction.label_ids.tolist(), logits.argmax(-1).tolist(),
                                           data.label_names)
        console.print(f"validation: accuracy {evaluation['accuracy']:.4f}, macro-F1 {evaluation['macro_f1']:.4f} "
                      f"on {evaluation['samples']} samples")
    result = TrainResult(run_dir, trainable, total, metrics, {**data.stats, "label_names": data.label_names})
    _save_run(cfg, opts, method_meta, result, trainer.model, tokenizer, method, data.label_names, max_length,
              evaluation)
    console.print(f"[green]saved[/] {run_dir}  (classify: tunesmith classify {run_dir} --text \"...\")")
    return result


def _max_length(cfg: RunConfig, console: Console) -> int:
    """data.max_length, capped at the model's context (data.max_length's default suits chat data, not BERT)."""
    from transformers import AutoConfig

    from ...models.loading import _source_kwargs

    ref, kwargs = _source_kwargs(cfg.model)
    try:
        config = AutoConfig.from_pretrained(ref, **kwargs)
    except (OSError, ValueError):
        return cfg.data.max_length  # the model load below reports the problem properly
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and cfg.data.max_length > context:
        if "max_length" in cfg.data.model_fields_set:
            console.print(f"[yellow]note:[/] data.max_length {cfg.data.max_length} exceeds the model's context; "
                          f"texts are truncated to {context} tokens")
        return context
    return cfg.data.max_length


def _save_run(cfg: RunConfig, opts, method_meta: dict, result: TrainResult, model, tokenizer, method, label_names: list[str],
              max_length: int, evaluation: dict | None) -> None:
    run_dir = result.run_dir
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=run_dir))
    method.save(model, opts, staging)
    tokenizer.save_pretrained(staging)
    meta = {
        "tunesmith_version": __version__,
        "task": "classification",
        "artifact": method.artifact,
        "method": method_meta,
        "base_model": cfg.model.model_dump(mode="json", include={"name_or_path", "gguf_file", "revision",
                                                                  "trust_remote_code", "attn_implementation"}),
        "label_names": label_names,
        "classification": cfg.classification.model_dump(mode="json"),
        "max_length": max_length,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "data": {k: v for k, v in result.data_stats.items() if k != "label_names"},
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        "evaluation": evaluation,
    }
    atomic_write_json(staging / RUN_META, meta)
    title = f"{cfg.method.name} classifier on {cfg.model.name_or_path}"
    plot_loss_curves(read_metrics(run_dir / "metrics.jsonl"), staging / "loss.png", title=title)
    if evaluation:
        plot_confusion_matrix(evaluation["confusion_matrix"], label_names, staging / "confusion_matrix.png",
                              title=f"validation ({evaluation['samples']} samples)")
    write_classification_card(staging / "README.md", cfg, meta, has_loss_plot=(staging / "loss.png").exists())
    publish_dir_contents(staging, run_dir)
