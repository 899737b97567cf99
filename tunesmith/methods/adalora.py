"""AdaLoRA: LoRA whose rank budget is re-allocated during training by importance (Zhang et al., 2023).

PEFT provides the layers and the allocator; the training loop must call `update_and_allocate` after every
optimizer step and before gradients are cleared, and the schedule needs the total step count up front.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MethodOptions
from .lora import peft_task_type
from .peft_method import PeftMethod
from .registry import register


class AdaLoraOptions(MethodOptions):
    name: Literal["adalora"] = "adalora"
    init_r: int = Field(12, gt=0, description="Starting rank of every adapted layer")
    target_r: int = Field(4, gt=0, description="Average rank the budget shrinks to")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    tinit: float = Field(0.1, ge=0, lt=1, description="Share of steps before pruning starts (warm-up)")
    tfinal: float = Field(0.2, ge=0, lt=1, description="Share of steps at the end with the final budget")
    delta_t: int = Field(1, gt=0, description="Steps between two re-allocations")
    orth_reg_weight: float = Field(0.5, ge=0)


@register
class AdaLoraMethod(PeftMethod):
    name = "adalora"
    description = "LoRA with importance-driven rank re-allocation during training (PEFT AdaLoRA)"
    Options = AdaLoraOptions

    def validate(self, opts, full_config):
        super().validate(opts, full_config)
        from ..errors import ConfigError

        if opts.target_r > opts.init_r:
            raise ConfigError("target_r must not exceed init_r", where="method.target_r")

    def peft_config(self, model, opts: AdaLoraOptions, total_steps):
        from peft import AdaLoraConfig

        from ..models.targets import resolve_targets

        total = max(total_steps or 1, 3)
        tinit, tfinal = int(opts.tinit * total), int(opts.tfinal * total)
        if tinit + tfinal >= total:  # PEFT needs a budgeting phase; short runs get at least one step of it
            tinit, tfinal = 0, max(total // 4, 0)
        return AdaLoraConfig(
            init_r=opts.init_r, target_r=opts.target_r, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
            target_modules=resolve_targets(model, opts.target_modules), total_step=total, tinit=tinit,
            tfinal=tfinal, deltaT=opts.delta_t, orth_reg_weight=opts.orth_reg_weight,
            task_type=peft_task_type(model))

    def callbacks(self, model, opts):
        from .schedules import AllocateRankBudget

        return [AllocateRankBudget(model)]
