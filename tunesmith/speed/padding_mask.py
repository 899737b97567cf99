"""Right-padded causal-LM batches trained without the padding mask (`speed.switches.skip_padding_mask`).

Why: a causal LM's token attends only to the tokens before it, so in a right-padded row no real token ever sees a
padding token; the padding mask changes nothing but the padding positions' own outputs, which carry no label. Yet
with the mask present the attention kernel must read it and cannot take its causal-only form: torch's CPU flash
kernel adds the mask to every score block (SmolLM2-135M LoRA, 4 x 380 tokens, bf16: a training step 5% faster
without it in a same-process A/B, identical loss), and on CUDA an arbitrary mask keeps SDPA off its FlashAttention
backend. transformers builds the mask whenever `attention_mask` has a zero and has no switch for this, so the trainer
leaves `attention_mask` out of the model's inputs for such batches.

When it applies: training and the evaluation during it, a batch whose every attention-mask row is ones then zeros
(right padding), a model whose attention is "sdpa" or "eager" (FlashAttention-2 and other varlen paths skip padding
outright, so they keep the mask), no router auxiliary loss (MoE models count the tokens the mask marks), and a model that passes the check
below on its first batch. Anything else keeps the mask.
"""

from __future__ import annotations

import torch

from ..compat import attention_implementation
from .cpu.causal_attention import NAME as CAUSAL_KERNEL, sdpa_only
from .probe_forward import probe_forward

_ATTENTION = ("sdpa", "eager", CAUSAL_KERNEL)


def right_padded(attention_mask: torch.Tensor | None) -> bool:
    """Whether some row has padding and every row is ones followed by zeros."""
    if attention_mask is None or attention_mask.dim() != 2 or bool(attention_mask.all()):
        return False
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def eligible_config(config) -> bool:
    """The configuration-level conditions of the module docstring."""
    attention = attention_implementation(config)
    return attention in _ATTENTION and not getattr(config, "output_router_logits", False)


def mask_is_redundant(model: torch.nn.Module, input_ids: torch.Tensor) -> bool:
    """Whether dropping the mask leaves the real tokens' logits unchanged, checked on a probe: the first ids of a
    batch as two rows, the second right-padded. Both forwards start from the same random state (same dropout draws)
    and leave the run's untouched. A model whose attention is not causal (or that reads the mask elsewhere) fails."""
    ids = input_ids[:1, :16]
    if ids.shape[1] < 4:
        return False
    ids = ids.expand(2, -1)
    mask = torch.ones_like(ids)
    real = ids.shape[1] // 2
    mask[1, real:] = 0
    logits = []
    for attention_mask in (mask, None):
        with sdpa_only():  # the same attention both ways: the check is about the model
            probe_logits = getattr(probe_forward(model, input_ids=ids, attention_mask=attention_mask), "logits", None)
        if probe_logits is None:
            return False
        logits.append(probe_logits[1, :real].float())
    return torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)
