"""QLoRA: LoRA over a frozen 4-bit NF4 base with double-quantised constants (Dettmers et al., 2023)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..errors import ConfigError
from .lora import LoraMethod, LoraOptions
from .registry import register

if TYPE_CHECKING:
    import torch


class QLoraOptions(LoraOptions):
    name: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (~0.4 bit/param saved)")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    use_dora: bool = Field(False, description="DoRA on the quantised base (QDoRA)")


@register
class QLoraMethod(LoraMethod):
    name = "qlora"
    description = "LoRA on a 4-bit NF4 double-quantised frozen base (bitsandbytes)"
    Options = QLoraOptions

    def validate(self, opts, full_config):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("qlora needs bitsandbytes", where="method.name",
                              hint="pip install 'tunesmith[qlora]'")
        if full_config.model.gguf_file:
            raise ConfigError("qlora quantises an HF checkpoint; a GGUF file is already quantised",
                              where="model.gguf_file", hint="convert the GGUF to an HF folder first, or use lora")

    def load_kwargs(self, opts: QLoraOptions, compute_dtype: torch.dtype):
        import torch
        from transformers import BitsAndBytesConfig

        dtype = compute_dtype if opts.compute_dtype == "auto" else getattr(torch, opts.compute_dtype)
        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=opts.quant_type,
            bnb_4bit_use_double_quant=opts.double_quant, bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=["lm_head"],
        )}

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        from peft import get_peft_model, prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_trainable_layout(model)
        config = self.peft_config(model, opts, total_steps)
        config.use_dora = opts.use_dora
        return get_peft_model(model, config)


def keep_trainable_layout(model: torch.nn.Module) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes (0.49 onwards; 0.50.2 checked) repacks a 4-bit weight for its
    inference kernel the first time the layer runs in eval mode without grad, as Trainer's evaluation does, and keeps
    it repacked until a checkpoint's save undoes it. A repacked layer passes no gradient to its input through the
    base weight, so the adapters below it got wrong gradients (or none) in the steps between an evaluation and the
    next save, silently; and the repacking fails outright for widths it cannot tile (not a multiple of 32). The
    layer's own switch for that path is turned off for training."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
