"""Spherical interpolation between two models, tensor by tensor (Shoemake 1985).

With Ω the angle between the two tensors seen as flat vectors, slerp(t) = sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b:
t = 0 gives the first model, t = 1 the second. The coefficients come from the directions, and are applied to
the tensors themselves (so their norms interpolate too). When the directions are nearly parallel (or opposite),
sin Ω → 0 and the formula is ill-conditioned, so it falls back to linear interpolation.
"""

from __future__ import annotations

import math

import torch

from .base import MergeMethod, TensorParams, register

PARALLEL = 0.9995  # |cos Ω| above this: interpolate linearly


def slerp(t: float, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    norm_a, norm_b = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    dot = float(torch.sum(a * b)) / ((norm_a if norm_a > eps else 1.0) * (norm_b if norm_b > eps else 1.0))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > PARALLEL:
        coef_a, coef_b = 1.0 - t, t
    else:
        omega = math.acos(dot)
        coef_a, coef_b = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    out = a * coef_a
    return out.add_(b, alpha=coef_b)


@register
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation between two models; t per tensor (0 = first model), gradients and filters"
    min_models = max_models = 2
    model_params = ()
    options = {"t": 0.5}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        return slerp(float(p.options["t"]), tensors[0], tensors[1])
