"""What a GRPO run (`task: grpo`, TRL 1.16's GRPOTrainer) adds to the memory plan (docs/planning.md):

- generation: before each optimisation step the policy samples that step's completions at once (batch x grad_accum:
  TRL's steps_per_generation defaults to the accumulation steps) under no_grad with a KV cache, which at its
  largest holds keys and values of every layer for all of them at the plan's seq (the pre-flight passes the
  longest prompt + max_completion_length), beside the last position's logits. Nothing is saved for backward then,
  so this is a phase of its own, compared with the backward's peak rather than added to it;
- the log-probs: the training forward scores the completion tokens through TRL's fused LM head, asking for the
  entropy too (a metric, and the high-entropy mask): the head's working set is traced with that output
  (planning/preference.py `fused_head_memory`);
- the reference: only with `grpo.beta` > 0, a no_grad forward as DPO's (the base through the same weights for a PEFT
  policy).
"""

from __future__ import annotations

import torch

GRPO_OUTPUTS = ("log_probs", "entropy")  # what GRPOTrainer asks its fused head for (trl 1.16)


def kv_cache_bytes(config, batch: int, tokens: int, dtype: torch.dtype) -> float:
    """Keys and values of every layer for `batch` sequences of `tokens` (transformers' DynamicCache: one tensor
    each per layer, in the dtype the projections produce)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    element = torch.empty((), dtype=dtype).element_size()
    return float(2 * text.num_hidden_layers * batch * tokens * heads * head_dim * element)


def generation_memory(config, batch: int, tokens: int, vocab: int, dtype: torch.dtype) -> float:
    """The sampling phase's transient: the full KV cache, and one position's logits per sequence in fp32 with the
    sampler's softmax copy."""
    return kv_cache_bytes(config, batch, tokens, dtype) + 3 * batch * vocab * 4
