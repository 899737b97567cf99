"""Find the repeated transformer blocks of any model and their attention / feed-forward parts by structure,
so layer-wise methods work across architectures without per-model tables."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_FEEDFORWARD_NAMES = ("mlp", "feed_forward", "ffn")


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ModuleList of identical blocks (Llama `model.layers`, GPT-2 `transformer.h`, ...)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 \
                and len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ConfigError(f"could not find the transformer blocks of {type(model).__name__}", where="method")
    return best


def block_part(block: nn.Module, kind: str) -> tuple[str, nn.Module]:
    names = _ATTENTION_NAMES if kind == "attention" else _FEEDFORWARD_NAMES
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return name, child
    raise ConfigError(f"{type(block).__name__} has no {kind} sub-module named one of {names}", where="method")


def output_head(model: nn.Module) -> list[nn.Module]:
    """The modules after the last block: final norm and the output projection."""
    head = [model.get_output_embeddings()] if model.get_output_embeddings() is not None else []
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        for parent in (getattr(model, "model", None), getattr(model, "transformer", None), model):
            if parent is not None and isinstance(getattr(parent, name, None), nn.Module):
                head.append(getattr(parent, name))
                break
    return head


def replace_modules(model: nn.Module, replacement_for) -> int:
    """Put `replacement_for(child)` in place of every child module for which it returns a module (in the child's
    train/eval mode); returns how many. All replacements are chosen before the first swap, so none is revisited."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            replacement = replacement_for(child)
            if replacement is not None:
                swaps.append((parent, name, child, replacement))
    for parent, name, child, replacement in swaps:
        replacement.train(child.training)
        setattr(parent, name, replacement)
    return len(swaps)
