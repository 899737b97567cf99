"""Soft-prompt methods: trainable virtual tokens instead of weight updates.

- prefix: prefix tuning (Li & Liang, 2021): key/value prefixes at every layer, produced by a small MLP
  during training (the reparameterisation stabilises optimisation).
- ptuning_v2: P-tuning v2 (Liu et al., 2022): deep prompts at every layer trained directly, no MLP; they start as
  the base model's keys and values for a real text (`init_text`), not PEFT's N(0, 1).
- prompt: prompt tuning (Lester et al., 2021): virtual token embeddings at the input only, optionally
  initialised from a text.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import ConfigError
from .base import MethodOptions
from .peft_method import PromptLearningMethod
from .registry import register


class PrefixOptions(MethodOptions):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(16, gt=0)
    encoder_hidden_size: int = Field(256, gt=0, description="Width of the reparameterisation MLP")


# Any real text serves (training moves the prefixes on); this one is neutral and long enough for the default 16
# virtual tokens (24 tokens with SmolLM2's tokenizer, 91 with stories260K's). With it, SmolLM2's held-out loss after
# 8 steps went from 4.71 (PEFT's random prefixes) to 1.76 (docs/methods.md).
PREFIX_INIT_TEXT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                    "request. Answer helpfully and accurately.")


class PtuningV2Options(MethodOptions):
    name: Literal["ptuning_v2"] = "ptuning_v2"
    num_virtual_tokens: int = Field(16, gt=0)
    init_text: str | None = Field(PREFIX_INIT_TEXT, description="Start the prefixes as the base model's own keys "
                                  "and values for this text's first num_virtual_tokens tokens; null: random, as PEFT")


class PromptOptions(MethodOptions):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(16, gt=0)
    init_text: str | None = Field(None, description="Initialise the soft prompt from this text's embeddings")


@register
class PrefixMethod(PromptLearningMethod):
    name = "prefix"
    description = "Prefix tuning: per-layer key/value prefixes via an MLP (PEFT prefix tuning)"
    Options = PrefixOptions

    def bf16_autocast_safe(self, opts: PrefixOptions) -> bool:
        # SmolLM2-135M under bf16 autocast: its gradient 0.59 off float64's (cosine 0.85; LoRA's: 0.03), and training
        # at lr 1e-2 diverged where float32 trained (benchmarks/bf16_gradients.py, docs/methods.md). Model-dependent
        # (stories260K: 0.03), so conservative for models where bf16 would do.
        return False

    def peft_config(self, model, opts: PrefixOptions, total_steps):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                  prefix_projection=True, encoder_hidden_size=opts.encoder_hidden_size)


@register
class PtuningV2Method(PromptLearningMethod):
    name = "ptuning_v2"
    description = "P-tuning v2: deep prompts at every layer, trained directly (PEFT prefix, no MLP)"
    Options = PtuningV2Options

    def bf16_autocast_safe(self, opts: PtuningV2Options) -> bool:
        # From a text's keys and values its bf16 gradient is 0.02 off float64's; from PEFT's N(0, 1) prefixes it
        # points away from it (relative error 2.3, cosine -0.19) (benchmarks/bf16_gradients.py).
        return opts.init_text is not None

    def peft_config(self, model, opts: PtuningV2Options, total_steps):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                  prefix_projection=False)

    def initialise(self, model, opts: PtuningV2Options, tokenizer) -> None:
        """PEFT's N(0, 1) prefixes are far larger than a model's real keys and values (SmolLM2's loss starts at 6.7
        instead of 1.6, docs/methods.md); starting from the base model's cache for a real text keeps the first step
        where the base model is, as Li and Liang (2021) recommend initialising from real words' activations."""
        if opts.init_text:
            _prefixes_from_text(model, opts, tokenizer)


def _prefixes_from_text(model, opts: PtuningV2Options, tokenizer) -> None:
    from peft import initialize_kv_prefix_from_text

    count = len(tokenizer(opts.init_text)["input_ids"])
    if count < opts.num_virtual_tokens:
        raise ConfigError(f"init_text is {count} tokens; its first {opts.num_virtual_tokens} (num_virtual_tokens) "
                          "become the prefixes", where="method.init_text",
                          hint="give a longer text, lower method.num_virtual_tokens, or set init_text: null for "
                               "random prefixes")
    was_training = model.training
    model.eval()  # a prefill without dropout
    try:
        initialize_kv_prefix_from_text(model, tokenizer, text=opts.init_text, use_chat_template=False)
    except (ValueError, TypeError) as exc:  # a cache layout PEFT's reader does not know (per-layer shapes...)
        raise ConfigError(f"cannot start the prefixes from init_text for this model: {exc}",
                          where="method.init_text", hint="set init_text: null for random prefixes") from None
    finally:
        model.train(was_training)


@register
class PromptMethod(PromptLearningMethod):
    name = "prompt"
    description = "Prompt tuning: trainable input embeddings only (PEFT prompt tuning)"
    Options = PromptOptions

    def peft_config(self, model, opts: PromptOptions, total_steps):
        from peft import PromptTuningConfig, PromptTuningInit

        if opts.init_text:
            return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                      prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=opts.init_text,
                                      tokenizer_name_or_path=model.config._name_or_path)
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens)
