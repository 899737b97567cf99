"""DARE (Yu et al. 2024, "Language Models are Super Mario"): drop and rescale task vectors, then combine.

Each entry of δᵢ = θᵢ − θ_base is dropped with probability p = 1 − density and the survivors are multiplied by
1/(1 − p), so E[δ̃ᵢ] = δᵢ. The sparse vectors are then combined by task arithmetic (`dare_linear`) or by TIES'
sign election and disjoint mean (`dare_ties`). The drop mask is seeded per (seed, model, tensor).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorParams, register
from .task_arithmetic import combine_deltas
from .ties import disjoint_merge


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return delta.mul_(keep).div_(density)


class _Dare(MergeMethod):
    base = "required"
    model_params = ("weight", "density")

    def dropped(self, tensors, base, p: TensorParams) -> list[torch.Tensor]:
        return [drop_and_rescale(t.sub_(base), d, p.generator(i))
                for i, (t, d) in enumerate(zip(tensors, p.densities))]


@register
class DareLinear(_Dare):
    name = "dare_linear"
    summary = "DARE: drop task-vector entries with p = 1 − density, rescale by 1/density, then task arithmetic"
    options = {"scale": 1.0, "normalize": False, "seed": 0}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        return combine_deltas(self.dropped(tensors, base, p), base, p)


@register
class DareTies(_Dare):
    name = "dare_ties"
    summary = "DARE drop-and-rescale, then TIES sign election and disjoint mean"
    options = {"scale": 1.0, "normalize": True, "seed": 0}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        merged = disjoint_merge(self.dropped(tensors, base, p), p.weights, bool(p.options["normalize"]))
        return merged.mul_(float(p.options["scale"])).add_(base)
