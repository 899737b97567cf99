"""The classification loss: cross-entropy with optional class weights and label smoothing.

Written by hand because the models' own loss is plain cross-entropy and Trainer's `label_smoothing_factor` has
no class weights. It is handed to Trainer as `compute_loss_func` (its documented hook), so no Trainer subclass.

Per sample i with true class y:  loss_i = w_y · [(1 − ε)·(−log p_y) + ε · mean_c(−log p_c)]
The batch loss is Σ loss_i / N, where N is the number of samples in the whole accumulated batch (Trainer's
`num_items_in_batch`), so gradient accumulation gives the same loss as one large batch. The weights multiply
samples (they are not renormalised per batch as torch's weighted mean does); "balanced" weights
n / (k · n_c) average to 1 over the training data, so the loss keeps the scale of plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError


def class_weights(setting: str | list[float], train_counts: Sequence[int]) -> list[float] | None:
    """The weight of each class: None for "none", n / (k · n_c) for "balanced", or the given list."""
    k = len(train_counts)
    if setting == "none":
        return None
    if setting == "balanced":
        n = sum(train_counts)
        return [n / (k * c) if c else 0.0 for c in train_counts]
    if len(setting) != k or any(w < 0 for w in setting):
        raise ConfigError(f"class_weights has {len(setting)} values for {k} classes" if len(setting) != k
                          else "class_weights must not be negative", where="classification.class_weights",
                          hint="give one non-negative weight per class, in label order, or use 'balanced'")
    return [float(w) for w in setting]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, *, weights: torch.Tensor | None = None,
                        smoothing: float = 0.0, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    per_sample = (1 - smoothing) * nll + smoothing * (-log_probs.mean(dim=-1))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)[labels]
    denominator = num_items if num_items is not None else labels.numel()
    return per_sample.sum() / denominator


def make_loss_func(weights: list[float] | None, smoothing: float):
    """`compute_loss_func(outputs, labels, num_items_in_batch)` for transformers' Trainer."""
    weight_tensor = torch.tensor(weights, dtype=torch.float32) if weights is not None else None

    def compute(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return classification_loss(logits, labels, weights=weight_tensor, smoothing=smoothing,
                                   num_items=num_items_in_batch)

    return compute
