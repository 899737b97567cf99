"""L2-SP: λ·Σ‖θ − θ₀‖², a pull towards the starting weights (Li et al., 2018, "Explicit inductive bias for transfer
learning with convolutional networks").

For the LoRA family θ₀ is the base and θ − θ₀ is the update ΔW = s·B·A (s = α/r), so the distance is ‖s·B·A‖_F² per
adapted layer, computed without B·A: ‖BA‖_F² = tr(AᵀBᵀBA) = tr((BᵀB)(AAᵀ)), two r×r products (out·r² + in·r² flops
instead of out·in·r, and no out×in tensor).
"""

from __future__ import annotations

import torch

from .anchors import TrainableAnchor, lora_factors, lora_layers


def low_rank_update_norm(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖scaling · B @ A‖_F² from the r×r Gram matrices; both are symmetric, so the trace of their product is the
    sum of their elementwise product."""
    a, b = a.float(), b.float()
    return scaling ** 2 * ((b.T @ b) * (a @ a.T)).sum()


def l2sp_low_rank(model) -> torch.Tensor:
    """Σ over LoRA layers and active adapters of ‖s·B·A‖_F²."""
    terms = [low_rank_update_norm(a, b, s) for _, layer in lora_layers(model) for a, b, s in lora_factors(layer)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def l2sp_trainable(model, anchor: TrainableAnchor) -> torch.Tensor:
    """Σ over the trained tensors of ‖θ − θ₀‖²."""
    terms = [delta.pow(2).sum() for _, delta in anchor.deltas(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
