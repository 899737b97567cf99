"""LoRA: a trainable low-rank update B·A beside each frozen linear layer (Hu et al., 2021), via PEFT."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .base import MethodOptions
from .peft_method import PeftMethod
from .registry import register

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig


def peft_task_type(model: torch.nn.Module) -> str:
    """PEFT's task type decides which head stays trainable (e.g. a classifier) and how inputs are routed."""
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


class LoraOptions(MethodOptions):
    name: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update (task sft, unset: 8-64 by the data's supervised "
                                         "tokens, docs/planning.md)")
    alpha: float = Field(32, gt=0, description="Scale numerator: the update is scaled by alpha/r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="all-linear | attention | mlp | [names]")
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] = Field(default_factory=list, description="Extra modules trained in full")


@register
class LoraMethod(PeftMethod):
    name = "lora"
    retain_distance = "low_rank"
    description = "Low-rank adapters on frozen weights (PEFT LoRA)"
    Options = LoraOptions
    use_dora = False
    use_rslora = False
    init_lora_weights: bool | str = True

    def peft_config(self, model: torch.nn.Module, opts: LoraOptions, total_steps: int | None = None) -> LoraConfig:
        from peft import LoraConfig

        from ..models.targets import resolve_targets

        return LoraConfig(
            r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, bias=opts.bias,
            target_modules=resolve_targets(model, opts.target_modules),
            modules_to_save=opts.modules_to_save or None, task_type=peft_task_type(model),
            use_dora=self.use_dora, use_rslora=self.use_rslora, init_lora_weights=self.init_lora_weights,
        )
