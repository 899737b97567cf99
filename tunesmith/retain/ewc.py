"""EWC: λ/2·Σ F·(θ − θ₀)², with F the diagonal Fisher information of the starting model on old-ability data
(Kirkpatrick et al., 2017).

F here is the *empirical* Fisher on the data's own labels: the mean over samples of the squared gradient of each
sample's LM loss (the mean cross-entropy of its trained tokens), F = 1/N Σᵢ (∂ℓᵢ/∂θ)², one sample per backward.
It is computed once, before training, and cached beside the run (`retain/ewc_fisher.safetensors`); a resumed run
reads it back rather than computing it from the partly trained weights.

Only tensors that train need a Fisher. For the LoRA family F is that of each adapted base weight W and the penalty is
over the update ΔW = s·B·A: Σ F ⊙ ΔW². F has no low-rank structure, so ΔW is materialised, one layer at a time
under activation checkpointing (backward recomputes it), never all layers' at once.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from ..reporting import Reporter
from .anchors import TrainableAnchor, lora_base_weight, lora_factors, lora_layers

FISHER_FILE = "ewc_fisher.safetensors"


def fisher_targets(model, distance: str) -> dict[str, torch.nn.Parameter]:
    """The tensors whose Fisher the penalty reads: the trained ones, or the base weight of each LoRA layer."""
    if distance == "low_rank":
        return {name: lora_base_weight(layer) for name, layer in lora_layers(model)}
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


@contextmanager
def _starting_model(model, distance: str, targets: dict[str, torch.nn.Parameter]):
    """The model as the run starts from it, in eval mode (no dropout: the Fisher is deterministic), with gradients
    on the target tensors: for LoRA, adapters disabled and the frozen base weights made to require grad."""
    was_training, frozen = model.training, [p for p in targets.values() if not p.requires_grad]
    model.eval()
    for param in frozen:
        param.requires_grad_(True)
    try:
        if distance == "low_rank":
            with model.disable_adapter():
                yield
        else:
            yield
    finally:
        for param in frozen:
            param.requires_grad_(False)
        model.train(was_training)


def sample_loss(model, row: dict) -> torch.Tensor:
    """A sample's LM loss: the mean cross-entropy of its trained tokens (transformers' causal-LM loss)."""
    device = next(model.parameters()).device
    ids = torch.tensor([row["input_ids"]], device=device)
    labels = torch.tensor([row["labels"]], device=device)
    return model(input_ids=ids, labels=labels).loss


def empirical_fisher(model, rows: list[dict], distance: str, reporter: Reporter) -> dict[str, torch.Tensor]:
    """F[name] = mean over `rows` of the squared gradient of each row's LM loss, for every target tensor (fp32)."""
    targets = fisher_targets(model, distance)
    names, params = list(targets), list(targets.values())
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in targets.items()}
    with _starting_model(model, distance, targets), reporter.progress("EWC: Fisher of the starting model",
                                                                       len(rows)) as advance:
        for row in rows:
            grads = torch.autograd.grad(sample_loss(model, row), params, allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is not None:
                    fisher[name].add_(grad.float().pow(2))
            advance(1)
    return {name: f.div_(len(rows)) for name, f in fisher.items()}


def fisher_rows(rows: list[dict], samples: int, seed: int) -> list[dict]:
    """The `samples` rows the Fisher averages over: all of them, or a seeded draw (the same on every resume)."""
    return rows if len(rows) <= samples else random.Random(seed).sample(rows, samples)


def load_or_compute_fisher(folder: Path, fingerprint: dict, *, reuse: bool, compute) -> dict[str, torch.Tensor]:
    """The cached Fisher in `folder` when `reuse` (a resumed run) and it was computed for `fingerprint`, else
    `compute()`, written there for the next resume."""
    path = folder / FISHER_FILE
    key = json.dumps(fingerprint, sort_keys=True)
    if reuse and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            same = (handle.metadata() or {}).get("fingerprint") == key
        if same:
            return load_file(str(path))
    fisher = compute()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(tmp), metadata={"fingerprint": key})
    tmp.replace(path)
    return fisher


def _masked_update(a, b, fisher, scaling):
    delta = (b.float() @ a.float()) * scaling
    return (fisher * delta.pow(2)).sum()


def ewc_low_rank(model, fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over LoRA layers of Σ F ⊙ (s·B·A)² (without the λ/2)."""
    terms, layers = [], dict(lora_layers(model))
    if set(fisher) - set(layers):  # a penalty over part of the layers would pass silently
        raise RuntimeError(f"retain.ewc: the Fisher has layers the model does not: {sorted(set(fisher) - set(layers))}")
    for name, layer in layers.items():
        f = fisher.get(name)
        for a, b, scaling in lora_factors(layer):
            if f is not None:
                f = f.to(a.device)
                terms.append(checkpoint(_masked_update, a, b, f, scaling, use_reentrant=False))
    return torch.stack(terms).sum() if terms else torch.zeros(())


def ewc_trainable(model, fisher: dict[str, torch.Tensor], anchor: TrainableAnchor) -> torch.Tensor:
    """Σ over the trained tensors of Σ F ⊙ (θ − θ₀)² (without the λ/2)."""
    terms = [(fisher[name].to(delta.device) * delta.pow(2)).sum() for name, delta in anchor.deltas(model)
             if name in fisher]
    return torch.stack(terms).sum() if terms else torch.zeros(())
