"""Which models can take the loss paths of the speed plan: logits only at supervised positions (a boolean
`logits_to_keep` mask), and the chunked loss (a plain linear output head). Training and the planner ask the same
questions here."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..compat import logits_mask_supported
from ..data.encoding import IGNORE_INDEX


def next_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """True at the positions whose next token is supervised: the only logits the loss reads."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


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


class HeadInput:
    """Within it (a context), the output head's input is kept in `hidden` and the head runs on none of its rows,
    outside autocast (training's chunked loss and the retain options' teacher pass read it): autocast would still
    cast the whole (frozen, fp32) head weight for that empty matmul, ~30 ms a step for SmolLM2 on CPU."""

    def __init__(self, head: torch.nn.Module):
        self.head, self.hidden, self._handles, self._no_autocast = head, None, [], None

    def _take(self, module, args):
        self.hidden = args[0]
        self._no_autocast = torch.autocast(args[0].device.type, enabled=False)
        self._no_autocast.__enter__()
        # Detached, so the empty call keeps nothing for backward; in the weight's dtype, as autocast would have
        # matched them.
        return (args[0][:0].detach().to(module.weight.dtype), *args[1:])

    def _done(self, module, args, output):
        if self._no_autocast is not None:
            self._no_autocast.__exit__(None, None, None)
            self._no_autocast = None

    def __enter__(self):
        self._handles = [self.head.register_forward_pre_hook(self._take),
                         self.head.register_forward_hook(self._done, always_call=True)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


@dataclass
class HeadRows:
    """A model's next-token scores at the trained positions (in mask order), as the loss path had them: the head's
    input and the head (chunked loss: no logits exist), or the logits themselves ((tokens, vocab), or (batch, seq,
    vocab) when every position was computed)."""

    hidden: torch.Tensor | None = None
    head: torch.nn.Linear | None = None
    logits: torch.Tensor | None = None

    def at(self, keep: torch.Tensor) -> HeadRows:
        """Only the rows at `keep` (batch x seq, bool) when this holds every position, else itself."""
        if self.logits is not None and self.logits.dim() == 3:
            return HeadRows(logits=self.logits[keep])
        if self.hidden is not None and self.hidden.dim() == 3:
            return HeadRows(hidden=self.hidden[keep], head=self.head)
        return self

    @property
    def raw(self) -> torch.Tensor:
        """The rows as held: logits, or the head's input."""
        return self.logits if self.logits is not None else self.hidden

    def rows(self) -> int:
        return self.raw.shape[0]

    def logits_of(self, raw: torch.Tensor) -> torch.Tensor:
        """The fp32 logits of some of `raw`'s rows (through the head when they are its input)."""
        if self.logits is not None:
            return raw.float()
        bias = self.head.bias.float() if self.head.bias is not None else None
        return torch.nn.functional.linear(raw.float(), self.head.weight.float(), bias)

    def scores(self, start: int, stop: int) -> torch.Tensor:
        """The fp32 logits of rows start:stop."""
        return self.logits_of(self.raw[start:stop])
