"""Translate a tunesmith TrainingConfig into transformers' TrainingArguments."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments

from ..config.schema import RunConfig
from ..errors import ConfigError
from ..runtime import Runtime
from ..speed.plan import SpeedPlan
from .checkpoints import CHECKPOINT_DIR
from .distributed import current_world, trainer_arguments

_OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
               "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd"}


def choose_optimizer(cfg: RunConfig, cuda: bool) -> str:
    name = cfg.training.optimizer
    if name == "auto":
        # Paged optimizers move state to CPU under memory pressure: the QLoRA recipe, but only meaningful on CUDA.
        if cfg.method.name == "qlora" and cuda:
            return "paged_adamw_32bit"
        name = "adamw"
    if name.startswith("paged") and not cuda:
        raise ConfigError(f"optimizer '{name}' needs a CUDA GPU", where="training.optimizer",
                          hint="use adamw (or auto) on CPU")
    # On a GPU torch's fused AdamW updates every tensor in one kernel (transformers' own default there).
    return "adamw_torch_fused" if name == "adamw" and cuda else _OPTIMIZERS[name]


def build_training_arguments(cfg: RunConfig, *, runtime: Runtime, speed: SpeedPlan, has_validation: bool,
                             args_class: type[TrainingArguments] = TrainingArguments,
                             **task_options) -> TrainingArguments:
    """The run's TrainingArguments; a recipe whose trainer has its own subclass (TRL's DPOConfig, ...) passes it as
    `args_class`, with that trainer's options (`task_options`, which win over the shared settings)."""
    t = cfg.training
    cuda, compute_dtype = runtime.cuda, runtime.compute_dtype
    if compute_dtype == torch.float16 and not cuda:
        raise ConfigError("float16 training needs a GPU", where="model.dtype", hint="use float32 (or auto) on CPU")
    eval_steps = t.eval_steps or t.save_steps
    early = t.early_stopping_patience is not None
    if early and t.save_steps % eval_steps:
        raise ConfigError("with early stopping, save_steps must be a multiple of eval_steps",
                          where="training.eval_steps", hint=f"e.g. eval_steps: {t.save_steps}")
    return args_class(**{**dict(
        output_dir=str(Path(t.output_dir) / CHECKPOINT_DIR),
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        num_train_epochs=t.num_epochs, max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay,
        optim=choose_optimizer(cfg, cuda), seed=t.seed, data_seed=t.seed,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        # On CPU, bf16 autocast runs matmuls on AMX / AVX512-BF16 units where the CPU has them.
        bf16=compute_dtype == torch.bfloat16, fp16=cuda and compute_dtype == torch.float16,
        use_cpu=not cuda and compute_dtype == torch.bfloat16,  # transformers autocasts on CPU only when told
        logging_strategy="steps", logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_validation else "no", eval_steps=eval_steps if has_validation else None,
        load_best_model_at_end=early and has_validation, metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        train_sampling_strategy="group_by_length" if t.group_by_length and cfg.data.packing is not True else "random",
        # A packed row holds no padding, and "non_padding" would drop every token equal to the pad id, which for
        # tokenizers whose pad is their EOS is each sample's last token.
        length_column_name="length", include_num_input_tokens_seen="all" if cfg.data.packing is True else "non_padding",
        remove_unused_columns=False, disable_tqdm=True, report_to="none", dataloader_num_workers=0,
        dataloader_pin_memory=cuda, use_liger_kernel=speed.liger, torch_compile=speed.torch_compile,
    ), **trainer_arguments(cfg, current_world(), cuda=cuda), **task_options})
