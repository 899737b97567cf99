"""Weighted average of the models' parameters: Σ wᵢ θᵢ, divided by Σ wᵢ when `normalize` (the default)."""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorParams, register


def weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ wᵢ tᵢ, accumulated in place in the first tensor (methods own their inputs)."""
    out = tensors[0] if weights[0] == 1 else tensors[0].mul_(weights[0])
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor, alpha=weight)
    return out


@register
class Linear(MergeMethod):
    name = "linear"
    summary = "weighted average of the models (model soup); weights normalised to sum 1 unless normalize: false"
    options = {"normalize": True}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        out = weighted_sum(tensors, p.weights)
        if p.options["normalize"]:
            total = sum(p.weights)
            out /= total if abs(total) > 1e-8 else 1.0
        return out
