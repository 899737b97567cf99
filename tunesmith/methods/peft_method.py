"""Methods that PEFT implements: build a PEFT config, wrap the model, save and load in PEFT's own format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Method

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig


class PeftMethod(Method):
    def peft_config(self, model: torch.nn.Module, opts: Any, total_steps: int | None) -> PeftConfig:
        raise NotImplementedError

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, opts, total_steps))


class PromptLearningMethod(PeftMethod):
    """Virtual tokens prepended to every sequence (prefix, prompt and P-tuning)."""

    retain_kd = False  # virtual tokens lengthen the student's sequence; retain.kd compares token by token

    def validate(self, opts, full_config):
        super().validate(opts, full_config)
        if full_config.task == "classification":
            # PEFT builds them as causal-LM adapters (generation-time prompt handling), which a sequence
            # classifier lacks: training failed with an AttributeError.
            raise ConfigError(f"{self.name} is for causal-LM fine-tuning, not task: classification",
                              where="method.name", hint="use lora, another adapter method or full")
        if full_config.data.packing is True:
            raise ConfigError(f"{self.name} prepends virtual tokens to each sequence, so it cannot train on packed "
                              f"sequences", where="data.packing", hint="set data.packing: false")
