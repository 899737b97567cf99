"""LoRA+: the B matrices learn with a larger learning rate than A (Hayou et al., 2024), via PEFT's optimizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .lora import LoraMethod, LoraOptions
from .registry import register


class LoraPlusOptions(LoraOptions):
    name: Literal["loraplus"] = "loraplus"
    lr_ratio: float = Field(16.0, gt=0, description="learning rate of B / learning rate of A")


@register
class LoraPlusMethod(LoraMethod):
    name = "loraplus"
    description = "LoRA with a larger learning rate for the B matrices (PEFT LoRA+ optimizer)"
    Options = LoraPlusOptions

    def optimizer(self, model, opts: LoraPlusOptions, args):
        import torch
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.learning_rate,
                                         loraplus_lr_ratio=opts.lr_ratio, weight_decay=args.weight_decay)
