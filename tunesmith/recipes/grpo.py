"""GRPO: `tunesmith train` with `task: grpo` (docs/alignment.md). For each prompt TRL's GRPOTrainer samples a group
of completions, scores them with the reward functions (`grpo.rewards`: built-ins or the user's own by import path),
and moves the policy towards the completions that beat their group's mean. TRL computes the loss.

Read top to bottom: the reward functions (imported first, so a bad path fails before any model loads), the prompts
rendered with the run's template, the policy with its method, the trainer, the result. What every run shares is
`training.run.TrainingRun`.
"""

from __future__ import annotations

import importlib

from ..compat import base_config
from ..config.schema import RunConfig
from ..data.templates.registry import get_template
from ..errors import ConfigError
from ..models.loading import load_tokenizer
from ..models.targets import count_parameters
from ..reporting import Reporter, reporter_or_default
from ..tasks.grpo.data import build_prompt_data
from ..tasks.grpo.rewards import build_rewards
from ..tasks.preference.model import load_policy
from ..training.arguments import build_training_arguments
from ..training.model_card import write_model_card
from ..training.run import TrainingRun, TrainResult, base_model_meta, finite_metrics, total_steps


def train_grpo(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
               extra_callbacks: list | None = None) -> TrainResult:
    functions, weights = build_rewards(cfg.grpo.rewards)
    trainer_class, args_class = _trl_grpo()
    with TrainingRun(cfg, resume=resume, reporter=reporter_or_default(reporter),
                     extra_callbacks=extra_callbacks) as run:
        method, runtime, report = run.method, run.runtime, run.reporter
        report.info(f"tunesmith grpo ({cfg.method.name}) on {cfg.model.name_or_path}; rewards: "
                    + ", ".join(f"{spec.name} x {spec.weight:g}" for spec in cfg.grpo.rewards))
        tokenizer = load_tokenizer(cfg.model)
        template = get_template(cfg.data.template, tokenizer)
        with report.status("preparing data"):
            train_data, stats = build_prompt_data(cfg.data, template, tokenizer, cfg.grpo.max_completion_length)
        report.info(f"data: {stats['train_samples']} prompts; columns for the rewards: "
                    f"{', '.join(stats['columns']) or 'none'}")
        if stats["dropped_long_prompt"]:
            report.warning(f"left out {stats['dropped_long_prompt']} prompts longer than data.max_length - "
                           f"grpo.max_completion_length tokens (raise data.max_length to keep them)")
        # The memory plan at the longest sequence this run can sample: its longest prompt and a full completion.
        run.preflight(seq=stats["longest_prompt"] + cfg.grpo.max_completion_length)
        # Each optimizer step takes batch_size x grad_accum completions: that many / num_generations prompts.
        steps = total_steps(cfg, len(train_data) * cfg.grpo.num_generations)
        with report.status("loading model"):
            model = load_policy(cfg, run, tokenizer, adapter=None, total_steps=steps)
        trainable, total = count_parameters(model)
        report.info(f"trainable parameters: {trainable:,} of {total:,}")

        g = cfg.grpo
        args = build_training_arguments(
            cfg, runtime=runtime, speed=run.speed, args_class=args_class, has_validation=False,
            num_generations=g.num_generations, max_completion_length=g.max_completion_length,
            temperature=g.temperature, beta=g.beta, reward_weights=weights,
            # Prompts are drawn at random; TRL repeats each one num_generations times within a batch itself.
            train_sampling_strategy="random")
        run.write_config()
        trainer = trainer_class(
            model=model, reward_funcs=functions, args=args, train_dataset=train_data, processing_class=tokenizer,
            callbacks=run.callbacks(early_stopping=False, method_callbacks=method.callbacks(model, cfg.method)),
            optimizers=(method.optimizer(model, cfg.method, args), None))
        metrics, facts = run.fit(trainer, model, planned_steps=steps)

        base_config(trainer.model).use_cache = True  # the saved model is for inference
        result = TrainResult(run.run_dir, trainable, total, metrics, stats, facts)
        meta = {"task": "grpo", "artifact": method.artifact, "method": cfg.method.model_dump(mode="json"),
                "base_model": base_model_meta(cfg), "template": template.name, "max_length": cfg.data.max_length,
                "grpo": g.model_dump(mode="json"), "trainable_params": trainable, "total_params": total,
                "data": stats, "metrics": finite_metrics(metrics), **facts}
        run.save(save_weights=lambda folder: method.save(trainer.model, cfg.method, folder), tokenizer=tokenizer,
                 meta=meta, title=f"grpo ({cfg.method.name}) on {cfg.model.name_or_path}",
                 write_card=lambda path, meta, plot: write_model_card(path, cfg, meta, has_plot=plot))
        report.info(f"saved {run.run_dir}  (chat: tunesmith chat {run.run_dir})")
        return result


def _trl_grpo() -> tuple[type, type]:
    try:
        trl = importlib.import_module("trl")
        return trl.GRPOTrainer, trl.GRPOConfig
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task grpo trains with TRL, which is not installed or too old ({exc})", where="task",
                          hint="pip install 'tunesmith[trl]' (trl >= 1.16)") from None
