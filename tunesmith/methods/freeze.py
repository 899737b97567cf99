"""Freeze tuning and progressive unfreezing: train a chosen part of the model's own weights.

- freeze: only the last N blocks (plus, optionally, the output head) or named modules are trained.
- progressive: the output head first, then the top k blocks, then everything, on a step or epoch schedule
  (ULMFiT-style gradual unfreezing) — the reference's remedy against catastrophic forgetting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:
    import torch


class FreezeOptions(MethodOptions):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int | None = Field(2, gt=0, description="Train the last N transformer blocks")
    trainable_modules: list[str] = Field(default_factory=list,
                                         description="Also train parameters whose name contains one of these")
    train_head: bool = Field(True, description="Train the final norm and output projection too")


class ProgressiveOptions(MethodOptions):
    name: Literal["progressive"] = "progressive"
    top_k: int = Field(2, gt=0, description="Blocks unfrozen in stage 2")
    boundaries: list[float] = Field(default_factory=lambda: [0.25, 0.5],
                                    description="Start of stage 2 and stage 3, in `unit`")
    unit: Literal["fraction", "steps", "epochs"] = "fraction"

    @model_validator(mode="after")
    def _two_increasing(self):
        if len(self.boundaries) != 2 or self.boundaries[0] > self.boundaries[1]:
            raise ValueError("boundaries needs two increasing values: the starts of stage 2 and stage 3")
        return self


def _blocks_from_top(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    from ..models.layers import transformer_blocks

    _, blocks = transformer_blocks(model)
    return list(blocks)[-count:]


def _output_head(model: torch.nn.Module) -> list[torch.nn.Module]:
    from ..models.layers import output_head

    return output_head(model)


def _set_trainable(modules: list[torch.nn.Module]) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(True)


def all_parameters_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """AdamW over every parameter, frozen ones included: a schedule can unfreeze them later, and parameters
    without a gradient are skipped by the optimizer until then. 1-D tensors (norms, biases) get no decay."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate)


@register
class FreezeMethod(Method):
    name = "freeze"
    retain_distance = "trainable"
    description = "Train only the last N blocks / named modules; the rest stays frozen"
    Options = FreezeOptions
    is_peft = False
    artifact = "full"

    def prepare(self, model, opts: FreezeOptions, *, gradient_checkpointing, total_steps=None):
        model.requires_grad_(False)
        if opts.trainable_layers:
            _set_trainable(_blocks_from_top(model, opts.trainable_layers))
        if opts.train_head:
            _set_trainable(_output_head(model))
        for name, param in model.named_parameters():
            if any(key in name for key in opts.trainable_modules):
                param.requires_grad_(True)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("freeze leaves nothing to train", where="method.trainable_modules")
        if gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would cut the gradient path otherwise
        return model


@register
class ProgressiveMethod(Method):
    name = "progressive"
    description = "Progressive unfreezing: output head, then the top k blocks, then all, on a schedule"
    Options = ProgressiveOptions
    is_peft = False
    artifact = "full"

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        model.requires_grad_(False)
        _set_trainable(_output_head(model))
        if gradient_checkpointing:
            model.enable_input_require_grads()
        return model

    def callbacks(self, model, opts: ProgressiveOptions):
        from .schedules import StageSchedule

        def enter(stage: int) -> None:
            model.requires_grad_(stage >= 3)
            _set_trainable(_output_head(model))
            if stage == 2:
                _set_trainable(_blocks_from_top(model, opts.top_k))

        return [StageSchedule(opts.boundaries, opts.unit, enter)]

    def optimizer(self, model, opts, args):
        return all_parameters_optimizer(model, args)
