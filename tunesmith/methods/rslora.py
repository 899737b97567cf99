"""rsLoRA: LoRA scaled by alpha/sqrt(r) so that high ranks keep learning (Kalajdzievski, 2023)."""

from typing import Literal

from .lora import LoraMethod, LoraOptions
from .registry import register


class RsLoraOptions(LoraOptions):
    name: Literal["rslora"] = "rslora"


@register
class RsLoraMethod(LoraMethod):
    name = "rslora"
    description = "Rank-stabilised LoRA: update scaled by alpha/sqrt(r) (PEFT use_rslora)"
    Options = RsLoraOptions
    use_rslora = True
