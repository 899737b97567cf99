"""A reward model: a sequence classifier with one output, trained on preference pairs so that the chosen reply
scores above the rejected one (Bradley-Terry; TRL's RewardTrainer computes the loss). `tunesmith train` with
`task: reward` (docs/alignment.md).

Read top to bottom: the pairs rendered with the run's template, the model with a one-output head and its method,
the trainer, the held-out pair accuracy, the result. What every run shares is `training.run.TrainingRun`.
"""

from __future__ import annotations

from ..config.schema import PREFERENCE_OPTIONS, RunConfig
from ..data.preference_build import build_preference_data, dropped_note
from ..data.templates.registry import get_template
from ..models.loading import load_tokenizer
from ..models.targets import count_parameters
from ..reporting import Reporter
from ..tasks.classification.model import classification_method_options, load_classification_model
from ..tasks.preference.trainers import trl_classes, trl_options
from ..training.arguments import build_training_arguments
from ..training.model_card import write_model_card
from ..training.run import TrainingRun, TrainResult, base_model_meta, finite_metrics, total_steps


def train_reward(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
                 extra_callbacks: list | None = None) -> TrainResult:
    with TrainingRun(cfg, resume=resume, reporter=reporter, extra_callbacks=extra_callbacks) as run:
        method, runtime, report = run.method, run.runtime, run.reporter
        report.info(f"tunesmith reward model ({cfg.method.name}) on {cfg.model.name_or_path}")

        tokenizer = load_tokenizer(cfg.model)
        template = get_template(cfg.data.template, tokenizer)
        with report.status("preparing data"):
            data = build_preference_data(cfg.data, tokenizer, template,
                                         max_prompt_length=cfg.preference.max_prompt_length, whole=True)
        report.info(f"data: {data.stats['train_samples']} training and {data.stats['validation_samples']} "
                    f"validation pairs")
        if dropped_note(data.stats):
            report.warning(dropped_note(data.stats))
        if data.stats["cut_to_fit"]:
            report.info(f"{data.stats['cut_to_fit']} pairs longer than data.max_length cut to fit (replies keep "
                        f"their beginning, prompts their end)")
        run.preflight()
        steps = total_steps(cfg, len(data.train))

        with report.status("loading model"):
            model = load_classification_model(cfg.model, ["reward"], pad_token_id=tokenizer.pad_token_id,
                                              dtype=runtime.load_dtype,
                                              extra=method.load_kwargs(cfg.method, runtime.compute_dtype))
            model.config.use_cache = False
            opts = classification_method_options(model, cfg.method)
            method_meta = opts.model_dump(mode="json")  # before PEFT adds its SEQ_CLS head to modules_to_save
            model = method.prepare(model, opts, gradient_checkpointing=cfg.training.gradient_checkpointing,
                                   total_steps=steps)
        run.speed_up(model)  # the CPU layers: a classifier takes no other piece
        trainable, total = count_parameters(model)
        report.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

        trainer_class, args_class = trl_classes("reward")
        args = build_training_arguments(cfg, runtime=runtime, speed=run.speed, args_class=args_class,
                                        has_validation=data.validation is not None, **trl_options(cfg))
        run.write_config()
        trainer = trainer_class(
            model=model, args=args, train_dataset=data.train, eval_dataset=data.validation, processing_class=tokenizer,
            callbacks=run.callbacks(early_stopping=data.validation is not None,
                                    method_callbacks=method.callbacks(model, opts)),
            optimizers=(method.optimizer(model, opts, args), None))
        metrics, facts = run.fit(trainer, model, planned_steps=steps)
        if data.validation is not None:  # eval_accuracy: held-out pairs whose chosen reply scores higher
            metrics.update(run.held_out_metrics(trainer))
            report.info(f"validation: pair accuracy {metrics.get('eval_accuracy', float('nan')):.4f} on "
                        f"{data.stats['validation_samples']} pairs")

        result = TrainResult(run.run_dir, trainable, total, metrics, data.stats, facts)
        meta = {"task": "reward", "artifact": method.artifact, "method": method_meta,
                "base_model": base_model_meta(cfg), "label_names": ["reward"], "template": template.name,
                "max_length": cfg.data.max_length,
                "preference": cfg.preference.model_dump(mode="json", include=PREFERENCE_OPTIONS["reward"]),
                "trainable_params": trainable, "total_params": total, "data": data.stats,
                "metrics": finite_metrics(metrics), **facts}
        run.save(save_weights=lambda folder: method.save(trainer.model, opts, folder), tokenizer=tokenizer,
                 meta=meta, title=f"reward model ({cfg.method.name}) on {cfg.model.name_or_path}",
                 write_card=lambda path, meta, plot: write_model_card(path, cfg, meta, has_plot=plot))
        report.info(f"saved {run.run_dir}")
        return result
