"""The Trainer tunesmith trains with: transformers' Trainer, projecting onto the vocabulary only where it learns.

A causal LM's loss needs logits only at positions whose *next* token is supervised; the prompt, padding and
packing separators need none. Transformers' models accept `logits_to_keep` as a boolean (batch, seq) mask and then
run the LM head on those positions alone (`slice_logits_to_keep`); transformers has no switch that derives that
mask from the labels, so this subclass does, through the Trainer's public hooks (`compute_loss_func` and
`compute_loss`). The loss is the same summed cross-entropy over the supervised tokens divided by the same
`num_items_in_batch`, so what is learned does not change; the LM head (vocabulary x hidden, the largest single
matmul of a small model) and the float32 logits shrink to the supervised share of the tokens.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data.encoding import IGNORE_INDEX

log = logging.getLogger(__name__)


def next_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """True at the positions whose next token is supervised: the only logits the loss reads."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def supervised_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the kept logits (in mask order) against the next tokens; summed over the supervised
    tokens and divided by the tokens of the whole accumulated batch, as transformers' causal-LM loss does."""
    targets = labels[:, 1:][next_token_mask(labels)[:, :-1]].to(outputs.logits.device)
    loss = F.cross_entropy(outputs.logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        return loss / max(targets.numel(), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def supports_supervised_logits(model) -> bool:
    """Whether `model` can take a boolean `logits_to_keep` mask whose shape is that of its labels.

    Not for PEFT prompt-learning methods (their virtual tokens lengthen the sequence the mask would index) and
    not for models whose forward has no `logits_to_keep`.
    """
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401  (the mask-aware slicing)
    except ImportError:
        return False
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class TunesmithTrainer(Trainer):
    """`Trainer` with `supervised_logits=True`: logits only where the loss reads them (see the module docstring)."""

    def __init__(self, *args, supervised_logits: bool = False, activation_offload: bool = False, **kwargs):
        if supervised_logits and kwargs.get("compute_loss_func") is None:
            kwargs["compute_loss_func"] = supervised_loss
        super().__init__(*args, **kwargs)
        self.supervised_logits = supervised_logits
        self.activation_offload = activation_offload
        self._checked = False

    def compute_loss_context_manager(self):
        # Activation offload: tensors saved for backward during the forward pass wait in (pinned) CPU memory;
        # with gradient checkpointing those are only the layer inputs. Trainer has no option for it; torch's
        # save_on_cpu is the maintained mechanism.
        stack = super().compute_loss_context_manager()
        if self.activation_offload and self.model.training:
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        return stack

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.supervised_logits or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        masked = {**inputs, "logits_to_keep": next_token_mask(inputs["labels"])}
        if self._checked:
            return super().compute_loss(model, masked, return_outputs, num_items_in_batch)
        # First batch: make sure this model's forward really slices with the mask (flat logits); otherwise
        # go back to full logits and transformers' own loss for the rest of the run.
        try:
            loss, outputs = super().compute_loss(model, masked, True, num_items_in_batch)
            if outputs.logits.dim() != 2:
                raise ValueError(f"logits of shape {tuple(outputs.logits.shape)}")
        except (IndexError, ValueError, RuntimeError) as exc:
            log.warning("logits only at supervised positions is not possible with %s (%s); computing all of them",
                        type(model).__name__, exc)
            self.supervised_logits, self.compute_loss_func = False, None
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._checked = True
        return (loss, outputs) if return_outputs else loss
