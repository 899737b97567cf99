"""Which models can take the loss paths of the speed plan: logits only at supervised positions (a boolean
`logits_to_keep` mask), and the chunked loss (a plain linear output head). Training and the planner ask the same
questions here."""

from __future__ import annotations

import inspect

import torch

from ..compat import logits_mask_supported


def has_virtual_tokens(model) -> bool:
    """Whether a PEFT prompt-learning method (prefix, prompt, P-tuning) prepends virtual tokens to every sequence."""
    peft_config = getattr(model, "active_peft_config", None)
    return peft_config is not None and getattr(peft_config, "is_prompt_learning", False)


def supports_supervised_logits(model) -> bool:
    """Whether `model` can take a boolean `logits_to_keep` mask whose shape is that of its labels.

    Not for PEFT prompt-learning methods (their virtual tokens lengthen the sequence the mask would index) and
    not for models whose forward has no `logits_to_keep`.
    """
    if not logits_mask_supported():
        return False
    if has_virtual_tokens(model):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def plain_head(model) -> torch.nn.Linear | None:
    """The model's output head when it is a plain nn.Linear (not an adapter layer), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return head if type(head) is torch.nn.Linear else None
