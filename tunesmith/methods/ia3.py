"""IA3: learned vectors that rescale keys, values and feed-forward activations (Liu et al., 2022)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MethodOptions
from .lora import peft_task_type
from .peft_method import PeftMethod
from .registry import register

# Keys/values and the feed-forward output projection, as in the IA3 paper, by module suffix per family.
_KEY_VALUE = ("k_proj", "v_proj", "c_attn", "key", "value", "query_key_value")
_FEEDFORWARD_OUT = ("down_proj", "mlp.c_proj", "fc2", "output.dense", "dense_4h_to_h")


class Ia3Options(MethodOptions):
    name: Literal["ia3"] = "ia3"
    target_modules: str | list[str] | None = Field(None, description="default: keys, values, FFN output")
    feedforward_modules: list[str] | None = Field(None, description="which targets scale inputs (FFN)")


@register
class Ia3Method(PeftMethod):
    name = "ia3"
    retain_distance = "trainable"
    description = "Learned rescaling vectors for keys, values and FFN activations (PEFT IA3)"
    Options = Ia3Options

    def peft_config(self, model, opts: Ia3Options, total_steps):
        from peft import IA3Config

        from ..models.targets import resolve_targets

        if opts.target_modules is not None:
            targets = resolve_targets(model, opts.target_modules)
            feedforward = opts.feedforward_modules or []
        else:
            linear = resolve_targets(model, "all-linear")
            targets = [t for t in linear if t.endswith(_KEY_VALUE) or t.endswith(_FEEDFORWARD_OUT)]
            feedforward = [t for t in targets if t.endswith(_FEEDFORWARD_OUT)]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=peft_task_type(model))
