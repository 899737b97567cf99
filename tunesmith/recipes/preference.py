"""Preference tuning of a causal LM: `tunesmith train` with `task: dpo | orpo | simpo | kto` (docs/alignment.md).

Read top to bottom: where the run starts from (a base model, or an earlier SFT run's adapter), the data (pairs, or
KTO's labelled replies) rendered with the run's template, the policy with its method and its reference, TRL's
trainer with the `preference:` options, the result. TRL computes the losses; what every run shares (run folder,
resume, callbacks, the staged save) is `training.run.TrainingRun`.
"""

from __future__ import annotations

from ..compat import base_config
from ..config.schema import PREFERENCE_OPTIONS, RunConfig
from ..data.preference_build import build_preference_data, dropped_note
from ..data.templates.registry import get_template
from ..errors import ConfigError
from ..models.loading import load_tokenizer
from ..models.targets import count_parameters
from ..reporting import Reporter, reporter_or_default
from ..tasks.preference.model import drop_reference_adapter, load_policy, reference_model, start_from_run
from ..tasks.preference.trainers import trl_classes, trl_options
from ..training.arguments import build_training_arguments
from ..training.model_card import write_model_card
from ..training.run import TrainingRun, TrainResult, base_model_meta, finite_metrics, total_steps


def train_preference(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
                     extra_callbacks: list | None = None) -> TrainResult:
    if cfg.task == "kto" and cfg.training.batch_size < 2:
        raise ConfigError("KTO estimates its KL term from the other examples of a batch", where="training.batch_size",
                          hint="use training.batch_size >= 2")
    written, (cfg, adapter) = cfg, start_from_run(cfg)
    with TrainingRun(cfg, resume=resume, reporter=reporter_or_default(reporter),
                     extra_callbacks=extra_callbacks) as run:
        method, runtime, report = run.method, run.runtime, run.reporter
        report.info(f"tunesmith {cfg.task} ({cfg.method.name}) on {cfg.model.name_or_path}")
        if adapter is not None:
            report.info(f"starting from the adapter of {adapter}; it is also the reference")

        tokenizer = load_tokenizer(cfg.model)
        template = get_template(cfg.data.template, tokenizer)
        with report.status("preparing data"):
            data = build_preference_data(cfg.data, tokenizer, template, unpaired=cfg.task == "kto",
                                         max_prompt_length=cfg.preference.max_prompt_length)
        report.info(f"data: {data.stats['train_samples']} training and {data.stats['validation_samples']} validation "
                    f"{'examples' if cfg.task == 'kto' else 'pairs'}")
        if dropped_note(data.stats):
            report.warning(dropped_note(data.stats))
        run.preflight()
        steps = total_steps(cfg, len(data.train))

        with report.status("loading model"):
            model = load_policy(cfg, run, tokenizer, adapter=adapter, total_steps=steps)
            reference = reference_model(cfg, run, model)
        # The model-level pieces of the speed plan (CPU layers, the frozen base held for autocast) apply; TRL owns
        # the batches and the head, so the padding-mask skip, packing and the causal kernel do not (docs/alignment.md);
        # nor, on CUDA, the varlen attention, which has not run under TRL's trainers on a GPU (speed/plan.py's
        # NOT_TAKEN turns it off for these tasks).
        run.speed_up(model)
        trainable, total = count_parameters(model)
        report.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%); reference: "
                    + ("a second frozen model" if reference is not None else "precomputed log-probs"
                       if cfg.preference.precompute_ref_log_probs else "the starting adapter, frozen (no second model)")
                    if cfg.task in ("dpo", "kto") else f"trainable parameters: {trainable:,} of {total:,}")

        trainer_class, args_class = trl_classes(cfg.task)
        args = build_training_arguments(cfg, runtime=runtime, speed=run.speed, args_class=args_class,
                                        has_validation=data.validation is not None, **trl_options(cfg))
        run.write_config(written)
        extra = {"ref_model": reference} if cfg.task in ("dpo", "kto") else {}
        trainer = trainer_class(
            model=model, args=args, train_dataset=data.train, eval_dataset=data.validation, processing_class=tokenizer,
            callbacks=run.callbacks(early_stopping=data.validation is not None,
                                    method_callbacks=method.callbacks(model, cfg.method)),
            optimizers=(method.optimizer(model, cfg.method, args), None), **extra)
        metrics, facts = run.fit(trainer, model, planned_steps=steps)
        if data.validation is not None:
            metrics.update(run.held_out_metrics(trainer))

        drop_reference_adapter(trainer.model)
        base_config(trainer.model).use_cache = True  # the saved model is for inference
        result = TrainResult(run.run_dir, trainable, total, metrics, data.stats, facts)
        options = cfg.preference.model_dump(mode="json", include=PREFERENCE_OPTIONS[cfg.task])
        meta = {"task": cfg.task, "artifact": method.artifact, "method": cfg.method.model_dump(mode="json"),
                "base_model": base_model_meta(cfg), "start_adapter": str(adapter) if adapter else None,
                "template": template.name, "max_length": cfg.data.max_length, "preference": options,
                "trainable_params": trainable, "total_params": total, "data": data.stats,
                "metrics": finite_metrics(metrics), **facts}
        run.save(save_weights=lambda folder: method.save(trainer.model, cfg.method, folder), tokenizer=tokenizer,
                 meta=meta, title=f"{cfg.task} ({cfg.method.name}) on {cfg.model.name_or_path}",
                 write_card=lambda path, meta, plot: write_model_card(path, cfg, meta, has_plot=plot))
        report.info(f"saved {run.run_dir}  (chat: tunesmith chat {run.run_dir})")
        return result
