"""Packed rows (`data.packing`): several samples in one row, told apart only by their restarting position ids.

The attention paths that take packed rows, tunesmith's CPU causal kernel (`cpu/causal_attention.py`) and CUDA's
varlen FlashAttention (`varlen_attention.py`), find the samples here, by the rule transformers' packed-sequence mask
follows, and build the block-diagonal causal mask SDPA would need for them.
"""

from __future__ import annotations

import torch


def segments_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """The segments of packed rows: a sample starts wherever the position id is not the previous one plus one (the
    rule transformers' packed-sequence mask follows)."""
    positions = position_ids.cpu()
    batch, length = positions.shape
    starts = torch.ones(batch, length, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    row, start = starts.nonzero(as_tuple=True)
    flat = row * length + start
    return torch.stack([row, start, torch.cat([flat[1:], flat.new_tensor([batch * length])]) - flat], dim=1)


def packed_causal_mask(segments: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """The boolean [batch, length, length] mask of packed rows: each query sees its own sample's keys up to itself."""
    sample = torch.repeat_interleave(torch.arange(len(segments)), segments[:, 2]).view(batch, length)
    return (sample[:, :, None] == sample[:, None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
