"""Task arithmetic (Ilharco et al. 2023): θ = θ_base + λ · Σ wᵢ (θᵢ − θ_base).

A negative weight subtracts a task vector, removing the behaviour it taught. `normalize` divides by Σ wᵢ.
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorParams, register
from .linear import weighted_sum


def combine_deltas(deltas: list[torch.Tensor], base: torch.Tensor, p: TensorParams) -> torch.Tensor:
    """base + λ · Σ wᵢ δᵢ (÷ Σ wᵢ when normalize): the final step shared by task arithmetic and DARE."""
    mixed = weighted_sum(deltas, p.weights)
    if p.options["normalize"]:
        total = sum(p.weights)
        mixed /= total if abs(total) > 1e-8 else 1.0
    return mixed.mul_(float(p.options["scale"])).add_(base)


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + scale · Σ weight · (model − base); negative weights remove a behaviour"
    base = "required"
    options = {"scale": 1.0, "normalize": False}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        return combine_deltas([t.sub_(base) for t in tensors], base, p)
