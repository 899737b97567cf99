"""Hybrid PEFT as in the reference: LoRA on attention + bottleneck adapters on the feed-forward blocks + a task
soft prompt, optionally trained in stages (1: prompt only, 2: + LoRA, 3: every PEFT parameter).

Composed from public PEFT APIs — `inject_adapter_in_model` for LoRA, prompt tuning via `get_peft_model` — and
tunesmith's bottleneck adapters. The run folder keeps each part in its own format: `lora/` and `prompt/` are
ordinary PEFT adapter folders, the adapters sit beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from .base import MethodOptions
from .freeze import all_parameters_optimizer
from .peft_method import PromptLearningMethod
from .registry import register

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

PARTS = ("prompt", "lora", "adapter")


class HybridOptions(MethodOptions):
    name: Literal["hybrid"] = "hybrid"
    lora_r: int = Field(8, gt=0)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: str | list[str] = "attention"
    adapter_size: int = Field(32, gt=0)
    adapter_activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    num_virtual_tokens: int = Field(8, gt=0)
    staged: bool = Field(False, description="Train prompt, then + LoRA, then + adapters")
    boundaries: list[float] = Field(default_factory=lambda: [0.2, 0.5], description="Stage 2 and 3 starts")
    unit: Literal["fraction", "steps", "epochs"] = "fraction"

    @model_validator(mode="after")
    def _two_increasing(self):
        if len(self.boundaries) != 2 or self.boundaries[0] > self.boundaries[1]:
            raise ValueError("boundaries needs two increasing values: the starts of stage 2 and stage 3")
        return self


def part_of(parameter_name: str) -> str | None:
    from . import bottleneck_layers as bottleneck

    if "prompt_encoder" in parameter_name:
        return "prompt"
    if "lora_" in parameter_name:
        return "lora"
    if bottleneck.ATTRIBUTE in parameter_name:
        return "adapter"
    return None


def set_stage(model: torch.nn.Module, stage: int) -> None:
    trainable = PARTS[:stage]
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) in trainable)


def _lora_config(model, opts: HybridOptions) -> LoraConfig:
    from peft import LoraConfig

    from ..models.targets import resolve_targets

    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=resolve_targets(model, opts.lora_targets))


@register
class HybridMethod(PromptLearningMethod):
    name = "hybrid"
    description = "LoRA on attention + bottleneck adapters on FFN + soft prompt, optionally staged"
    Options = HybridOptions
    artifact = "hybrid"

    def prepare(self, model, opts: HybridOptions, *, gradient_checkpointing, total_steps=None):
        from peft import PromptTuningConfig, get_peft_model, inject_adapter_in_model

        from . import bottleneck_layers as bottleneck

        lora_config = _lora_config(model, opts)
        model = inject_adapter_in_model(lora_config, model)
        model.tunesmith_lora_config = lora_config  # targets as resolved on the unwrapped model, for saving
        bottleneck.attach(model, size=opts.adapter_size, placement="pfeiffer", activation=opts.adapter_activation)
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM",
                                                         num_virtual_tokens=opts.num_virtual_tokens))
        set_stage(model, 1 if opts.staged else len(PARTS))
        return model

    def callbacks(self, model, opts: HybridOptions):
        from .schedules import StageSchedule

        if not opts.staged:
            return []
        return [StageSchedule(opts.boundaries, opts.unit, lambda stage: set_stage(model, stage))]

    def optimizer(self, model, opts, args):
        return all_parameters_optimizer(model, args) if opts.staged else None

    def save(self, model, opts, path: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        from . import bottleneck_layers as bottleneck

        model.save_pretrained(path / "prompt")
        inner = model.get_base_model()
        lora_dir = path / "lora"
        lora_dir.mkdir(exist_ok=True)
        inner.tunesmith_lora_config.save_pretrained(lora_dir)
        # PEFT's own key layout, so `PeftModel.from_pretrained(base, run/"lora")` loads the LoRA part alone.
        state = {f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(inner).items()}
        save_file(state, str(lora_dir / "adapter_model.safetensors"))
        bottleneck.save(inner, path)

    def load(self, base, run_dir: Path, meta: dict):
        from peft import LoraConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        from . import bottleneck_layers as bottleneck

        config = LoraConfig.from_pretrained(run_dir / "lora")
        model = inject_adapter_in_model(config, base)
        weights = load_file(str(run_dir / "lora" / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, {k.removeprefix("base_model.model."): v for k, v in weights.items()})
        bottleneck.load(model, run_dir)
        return PeftModel.from_pretrained(model, run_dir / "prompt")
