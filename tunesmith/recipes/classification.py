"""Text classification: labelled texts → a sequence classifier (LoRA-style adapter or full model), `tunesmith train`
with `task: classification`.

Read top to bottom: the data and its labels, the model with its method, the Trainer with the task's loss and
metrics, the validation report, the result. What every run shares is `training.run.TrainingRun`.
"""

from __future__ import annotations

from transformers import Trainer

from ..config.schema import RunConfig
from ..models.loading import load_tokenizer
from ..models.targets import count_parameters
from ..reporting import Reporter
from ..tasks.classification.data import ClassificationCollator, build_classification_data
from ..tasks.classification.loss import class_weights, make_loss_func
from ..tasks.classification.metrics import classification_report, trainer_metrics
from ..tasks.classification.model import classification_method_options, load_classification_model
from ..tasks.classification.report import plot_confusion_matrix, write_classification_card
from ..training.arguments import build_training_arguments
from ..training.run import TrainingRun, TrainResult, base_model_meta, finite_metrics, total_steps


def train_classification(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
                         extra_callbacks: list | None = None) -> TrainResult:
    task = cfg.classification
    with TrainingRun(cfg, resume=resume, reporter=reporter, extra_callbacks=extra_callbacks) as run:
        method, runtime, report = run.method, run.runtime, run.reporter
        report.info(f"tunesmith classification ({cfg.method.name}) on {cfg.model.name_or_path}")

        tokenizer = load_tokenizer(cfg.model)
        tokenizer.padding_side = "right"
        max_length = _max_length(cfg, report)
        with report.status("preparing data"):
            data = build_classification_data(cfg.data, task, tokenizer, max_length)
        report.info(f"data: {data.stats['train_samples']} training samples, {data.stats['validation_samples']} "
                    f"validation samples; labels {data.label_names}")
        weights = class_weights(task.class_weights, list(data.stats["train_class_counts"].values()))

        with report.status("loading model"):
            model = load_classification_model(cfg.model, data.label_names, pad_token_id=tokenizer.pad_token_id,
                                              dtype=runtime.load_dtype,
                                              extra=method.load_kwargs(cfg.method, runtime.compute_dtype))
            model.config.use_cache = False
            opts = classification_method_options(model, cfg.method)
            method_meta = opts.model_dump(mode="json")  # before PEFT adds its SEQ_CLS head names to modules_to_save
            model = method.prepare(model, opts, gradient_checkpointing=cfg.training.gradient_checkpointing,
                                   total_steps=total_steps(cfg, len(data.train)))
        run.speed_up(model)  # the CPU layers: a classifier takes no other piece
        trainable, total = count_parameters(model)
        report.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

        has_validation = data.validation is not None
        args = build_training_arguments(cfg, runtime=runtime, speed=run.speed, has_validation=has_validation)
        if has_validation:  # the best checkpoint / early stopping follow the configured metric, not eval_loss
            args.metric_for_best_model = ("eval_loss" if task.metric_for_best == "loss"
                                          else f"eval_{task.metric_for_best}")
            args.greater_is_better = task.metric_for_best != "loss"
        run.write_config()
        trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                          data_collator=ClassificationCollator(tokenizer), processing_class=tokenizer,
                          compute_loss_func=make_loss_func(weights, task.label_smoothing),
                          compute_metrics=trainer_metrics(len(data.label_names)) if has_validation else None,
                          callbacks=run.callbacks(diagnostics=False, early_stopping=has_validation,
                                                  method_callbacks=method.callbacks(model, opts)),
                          optimizers=(method.optimizer(model, opts, args), None))
        metrics, _ = run.fit(trainer, model, planned_steps=total_steps(cfg, len(data.train)))

        evaluation = None
        if has_validation:
            prediction = trainer.predict(data.validation, metric_key_prefix="eval")
            metrics.update(prediction.metrics)
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            evaluation = classification_report(prediction.label_ids.tolist(), logits.argmax(-1).tolist(),
                                               data.label_names)
            report.info(f"validation: accuracy {evaluation['accuracy']:.4f}, macro-F1 {evaluation['macro_f1']:.4f} "
                        f"on {evaluation['samples']} samples")
        result = TrainResult(run.run_dir, trainable, total, metrics, {**data.stats, "label_names": data.label_names})
        meta = {"task": "classification", "artifact": method.artifact, "method": method_meta,
                "base_model": base_model_meta(cfg), "label_names": data.label_names,
                "classification": task.model_dump(mode="json"), "max_length": max_length,
                "trainable_params": trainable, "total_params": total, "data": data.stats,
                "metrics": finite_metrics(metrics), "evaluation": evaluation}

        def confusion_matrix(folder):
            if evaluation:
                plot_confusion_matrix(evaluation["confusion_matrix"], data.label_names,
                                      folder / "confusion_matrix.png",
                                      title=f"validation ({evaluation['samples']} samples)")

        run.save(save_weights=lambda folder: method.save(trainer.model, opts, folder), tokenizer=tokenizer,
                 meta=meta, title=f"{cfg.method.name} classifier on {cfg.model.name_or_path}", plots=confusion_matrix,
                 write_card=lambda path, meta, plot: write_classification_card(path, cfg, meta, has_loss_plot=plot))
        report.info(f"saved {run.run_dir}  (classify: tunesmith classify {run.run_dir} --text \"...\")")
        return result


def _max_length(cfg: RunConfig, report: Reporter) -> int:
    """data.max_length, capped at the model's context (data.max_length's default suits chat data, not BERT)."""
    from transformers import AutoConfig

    from ..models.loading import source_kwargs

    ref, kwargs = source_kwargs(cfg.model)
    try:
        config = AutoConfig.from_pretrained(ref, **kwargs)
    except (OSError, ValueError):
        return cfg.data.max_length  # the model load below reports the problem properly
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and cfg.data.max_length > context:
        if "max_length" in cfg.data.model_fields_set:
            report.info(f"note: data.max_length {cfg.data.max_length} exceeds the model's context; texts are "
                        f"truncated to {context} tokens")
        return context
    return cfg.data.max_length
