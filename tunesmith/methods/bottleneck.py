"""Bottleneck adapters as a fine-tuning method: Houlsby (after attention and FFN) or Pfeiffer (after FFN)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .base import Method, MethodOptions
from .registry import register


class BottleneckOptions(MethodOptions):
    name: Literal["houlsby", "pfeiffer"]
    size: int = Field(64, gt=0, description="Bottleneck width")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    residual: bool = Field(True, description="Add the adapter's output to its input (identity at step 0)")


class HoulsbyOptions(BottleneckOptions):
    name: Literal["houlsby"] = "houlsby"


class PfeifferOptions(BottleneckOptions):
    name: Literal["pfeiffer"] = "pfeiffer"


class _BottleneckMethod(Method):
    artifact = "bottleneck"

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        from . import bottleneck_layers as bottleneck

        model.requires_grad_(False)
        bottleneck.attach(model, size=opts.size, placement=opts.name, activation=opts.activation,
                          residual=opts.residual)
        if gradient_checkpointing:
            model.enable_input_require_grads()
        return model

    def save(self, model, opts, path: Path) -> None:
        from . import bottleneck_layers as bottleneck

        bottleneck.save(model, path)

    def load(self, base, run_dir: Path, meta: dict):
        from . import bottleneck_layers as bottleneck

        return bottleneck.load(base, run_dir)


@register
class HoulsbyMethod(_BottleneckMethod):
    name = "houlsby"
    description = "Bottleneck adapters after attention and after the FFN of every block (Houlsby)"
    Options = HoulsbyOptions


@register
class PfeifferMethod(_BottleneckMethod):
    name = "pfeiffer"
    description = "Bottleneck adapters after the FFN of every block (Pfeiffer)"
    Options = PfeifferOptions
