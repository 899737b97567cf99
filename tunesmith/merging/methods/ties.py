"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge of task vectors.

1. Trim: keep the k = density·n largest-magnitude entries of each task vector δᵢ = θᵢ − θ_base, zero the rest.
2. Elect: per parameter, γ = sign(Σ wᵢ δ̂ᵢ), the sign with the larger total (weighted) magnitude.
3. Disjoint merge: average only the entries that agree with γ — Σ wᵢ δ̂ᵢ [sign δ̂ᵢ = γ] / Σ wᵢ [sign δ̂ᵢ = γ].
   Trimmed entries are zero and never agree, so they do not dilute the mean (the reference sketch averages over
   them). θ = θ_base + λ · merged.
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorParams, register


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the max(1, ⌊density·n⌋) largest |δ| (in place). Ties at the threshold are all kept."""
    if density >= 1 or delta.numel() == 0:
        return delta
    if density <= 0:
        return delta.zero_()
    flat = delta.reshape(-1)
    k = max(1, int(density * flat.numel()))
    magnitude = flat.abs()
    tau = kth_largest(magnitude, k)
    # keep = 1 where |δ| ≥ τ, else 0, as floats: `threshold` keeps values strictly above its bound, so the
    # bound is the float just below τ. Float ops run vectorised; boolean masks (masked_fill, where) are
    # several times slower on CPU, and this runs over every parameter of every model.
    below_tau = float(torch.nextafter(tau, torch.zeros_like(tau)))
    keep = torch.nn.functional.threshold_(magnitude, below_tau, 0.0).sign_()
    return delta.mul_(keep.view_as(delta))


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest of a flat tensor.

    A selection over tens of millions of entries (kthvalue; sorting is worse) dominates a TIES merge, so for big
    tensors a sample brackets the answer and the exact selection runs only inside that narrow band, after
    counting what lies above it. If the sample misses (vanishingly rare), the full selection runs.
    """
    n = values.numel()
    if n < 1_000_000:
        return torch.kthvalue(values, n - k + 1).values
    sample = values[torch.randint(n, (65536,), generator=torch.Generator().manual_seed(0))]
    q = 1 - k / n
    low, high = torch.quantile(sample, torch.tensor([max(0.0, q - 0.01), min(1.0, q + 0.01)]))
    in_band = values.ge(low)
    at_least_low = int(torch.count_nonzero(in_band))
    band = values[in_band.logical_and_(values.le(high))]
    need = k - (at_least_low - band.numel())  # how many band entries belong to the top k
    if 0 < need <= band.numel():
        return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(values, n - k + 1).values


def disjoint_merge(deltas: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """Steps 2 and 3 on already sparsified task vectors (shared with DARE-TIES); consumes `deltas`.

    With e = sign(Σ wᵢδᵢ) the elected sign, an entry agrees when wᵢδᵢ·e > 0, so relu(wᵢδᵢ·e) is its magnitude
    where it agrees and 0 elsewhere (trimmed zeros never count), and sign() of that is the agreement indicator.
    Where Σ wᵢδᵢ is exactly 0, e = 0 and the entry stays at the base, as sgn(0) = 0 in the paper (mergekit
    elects + there instead; exact cancellation is the only case where the two differ). All float arithmetic,
    for the reason given in `trim`.
    """
    weighted = [d if w == 1 else d.mul_(w) for d, w in zip(deltas, weights)]
    elected = weighted[0].clone()
    for d in weighted[1:]:
        elected.add_(d)
    elected.sign_()
    merged = divisor = None
    for delta, weight in zip(weighted, weights):
        agreeing = delta.mul_(elected).relu_()  # |wᵢδᵢ| where it agrees with e, else 0
        if merged is None:
            merged = agreeing.clone() if normalize else agreeing
        else:
            merged.add_(agreeing)
        if normalize:
            indicator = agreeing.sign_()
            divisor = indicator.mul_(weight) if divisor is None else divisor.add_(indicator, alpha=weight)
    merged.mul_(elected)
    if normalize:
        merged.div_(torch.where(divisor == 0, 1.0, divisor))
    return merged


@register
class Ties(MergeMethod):
    name = "ties"
    summary = "TIES: keep top-density magnitudes of each task vector, elect signs, average the agreeing entries"
    base = "required"
    model_params = ("weight", "density")
    options = {"scale": 1.0, "normalize": True}

    def merge(self, tensors, base, p: TensorParams) -> torch.Tensor:
        deltas = [trim(t.sub_(base), d) for t, d in zip(tensors, p.densities)]
        merged = disjoint_merge(deltas, p.weights, bool(p.options["normalize"]))
        return merged.mul_(float(p.options["scale"])).add_(base)
