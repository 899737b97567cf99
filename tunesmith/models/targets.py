"""Which modules LoRA-style methods adapt, detected from the model itself rather than a per-architecture table.

A table goes stale with every new architecture; walking the module tree works for Llama, Qwen2, Mistral, Gemma
(`q_proj`...), GPT-2 (`Conv1D` `c_attn`...) and BERT (`query`/`value`) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

_ATTENTION_WORDS = ("attn", "attention")
# Output heads and classifiers are never adapted by default: LoRA on the vocabulary projection is costly and
# rarely helps; users who want it name it explicitly.
_HEAD_NAMES = ("lm_head", "embed_out", "output", "classifier", "score", "pooler", "cls")


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # transformers' GPT-2 Conv1D and bitsandbytes' Linear4bit/Linear8bitLt are linear layers too.
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_module_names(model: nn.Module) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not name or not _is_linear(module) or ".lora_" in name:
            continue
        name = name.removesuffix(".base_layer")  # already wrapped by PEFT: target the wrapper's name
        parts = name.split(".")
        if parts[-1] in _HEAD_NAMES or any(p in _HEAD_NAMES for p in parts[:-1] if p != "output"):
            continue
        names.append(name)
    return names


def resolve_targets(model: nn.Module, spec: str | list[str]) -> list[str]:
    """Return PEFT `target_modules` suffixes for 'all-linear', 'attention', 'mlp' or an explicit list."""
    linear = linear_module_names(model)
    if isinstance(spec, list):
        missing = [t for t in spec if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
        if missing:
            raise ConfigError(f"target modules not found in the model: {missing}", where="method.target_modules",
                              hint=f"linear layers in this model end with: {sorted(_suffixes(linear))}")
        return list(spec)
    if spec == "all-linear":
        chosen = linear
    elif spec == "attention":
        chosen = [n for n in linear if any(w in n.lower() for w in _ATTENTION_WORDS)]
    elif spec == "mlp":
        chosen = [n for n in linear if not any(w in n.lower() for w in _ATTENTION_WORDS)]
    else:
        raise ConfigError(f"unknown target_modules '{spec}'", where="method.target_modules",
                          hint="use all-linear, attention, mlp, or a list of module names")
    if not chosen:
        raise ConfigError(f"no '{spec}' linear layers found in this model", where="method.target_modules")
    return sorted(_suffixes(chosen))


def _suffixes(names: list[str]) -> set[str]:
    # Two components ("self_attn.q_proj", "attn.c_proj") keep GPT-2's attention c_proj apart from its MLP c_proj
    # while still matching every layer through PEFT's suffix matching.
    return {".".join(n.split(".")[-2:]) for n in names}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights are counted by their logical size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if hasattr(param, "quant_state") and param.quant_state is not None:
            n = int(torch.Size(param.quant_state.shape).numel())
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
