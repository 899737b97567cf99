"""Soft-prompt methods: trainable virtual tokens instead of weight updates.

- prefix: prefix tuning (Li & Liang, 2021): key/value prefixes at every layer, produced by a small MLP
  during training (the reparameterisation stabilises optimisation).
- ptuning_v2: P-tuning v2 (Liu et al., 2022): deep prompts at every layer trained directly, no MLP.
- prompt: prompt tuning (Lester et al., 2021): virtual token embeddings at the input only, optionally
  initialised from a text.
"""

from __future__ import annotations

from typing import Literal

from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit
from pydantic import Field

from .base import MethodOptions
from .peft_method import PromptLearningMethod
from .registry import register


class PrefixOptions(MethodOptions):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(16, gt=0)
    encoder_hidden_size: int = Field(256, gt=0, description="Width of the reparameterisation MLP")


class PtuningV2Options(MethodOptions):
    name: Literal["ptuning_v2"] = "ptuning_v2"
    num_virtual_tokens: int = Field(16, gt=0)


class PromptOptions(MethodOptions):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(16, gt=0)
    init_text: str | None = Field(None, description="Initialise the soft prompt from this text's embeddings")


@register
class PrefixMethod(PromptLearningMethod):
    name = "prefix"
    description = "Prefix tuning: per-layer key/value prefixes via an MLP (PEFT prefix tuning)"
    Options = PrefixOptions
    # Under bf16 autocast its gradient is 0.59 off float64's (cosine 0.85; LoRA's: 0.03) and training at lr 1e-2
    # diverged where float32 trained (benchmarks/bf16_gradients.py, docs/methods.md).
    bf16_autocast_safe = False

    def peft_config(self, model, opts: PrefixOptions, total_steps):
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                  prefix_projection=True, encoder_hidden_size=opts.encoder_hidden_size)


@register
class PtuningV2Method(PromptLearningMethod):
    name = "ptuning_v2"
    description = "P-tuning v2: deep prompts at every layer, trained directly (PEFT prefix, no MLP)"
    Options = PtuningV2Options
    # Under bf16 autocast its gradient points away from float64's (relative error 2.3, cosine -0.19).
    bf16_autocast_safe = False

    def peft_config(self, model, opts: PtuningV2Options, total_steps):
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                  prefix_projection=False)


@register
class PromptMethod(PromptLearningMethod):
    name = "prompt"
    description = "Prompt tuning: trainable input embeddings only (PEFT prompt tuning)"
    Options = PromptOptions

    def peft_config(self, model, opts: PromptOptions, total_steps):
        if opts.init_text:
            return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                      prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=opts.init_text,
                                      tokenizer_name_or_path=model.config._name_or_path)
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens)
