"""DoRA: LoRA on the direction of each weight plus a trainable magnitude vector (Liu et al., 2024)."""

from typing import Literal

from .lora import LoraMethod, LoraOptions
from .registry import register


class DoraOptions(LoraOptions):
    name: Literal["dora"] = "dora"


@register
class DoraMethod(LoraMethod):
    name = "dora"
    retain_distance = None  # the weight is re-normalised: its change is not (α/r)·B·A
    description = "Weight-decomposed LoRA: magnitude + low-rank direction (PEFT use_dora)"
    Options = DoraOptions
    use_dora = True
    frozen_weights_in_matmuls_only = False  # the weight norm reads the base weight itself
