"""What the penalties measure against: the starting model's trained tensors, or its LoRA updates (zero at start).

Taken when the recipe sets the run up, before the Trainer loads a checkpoint to resume from: the model then is
still the model the run starts from, so a resumed run gets the same θ₀ as the run it continues.
"""

from __future__ import annotations

import torch


def lora_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every PEFT LoRA layer of `model` (embedding LoRA included only where it has factors)."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def lora_factors(layer) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, scaling) of each active adapter of a LoRA layer: its update is scaling · B @ A."""
    return [(layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name])
            for name in layer.active_adapters if name in layer.lora_A]


def lora_base_weight(layer) -> torch.nn.Parameter:
    """The frozen weight W a LoRA layer adapts (W + scaling · B @ A)."""
    return layer.get_base_layer().weight


class TrainableAnchor:
    """θ₀ of the tensors that train: a frozen copy of each (only of those), or, when a frozen copy of the whole
    starting model already exists (retain.kd's teacher for full tuning), that copy's tensors, so θ₀ costs nothing
    more."""

    def __init__(self, model: torch.nn.Module, source: torch.nn.Module | None = None):
        names = [name for name, param in model.named_parameters() if param.requires_grad]
        if source is not None:
            theirs = dict(source.named_parameters())
            self.start = {name: theirs[name].detach() for name in names}
        else:
            self.start = {name: param.detach().clone() for name, param in model.named_parameters()
                          if param.requires_grad}

    def deltas(self, model) -> list[tuple[str, torch.Tensor]]:
        """(name, θ − θ₀) of every trained tensor, in fp32 (differentiable in θ)."""
        out = []
        for name, param in model.named_parameters():
            start = self.start.get(name)
            if start is not None:
                out.append((name, param.float() - start.to(param.device, torch.float32)))
        if len(out) != len(self.start):  # a penalty over part of the model would pass silently
            missing = sorted(set(self.start) - {name for name, _ in out})
            raise RuntimeError(f"retain: {len(missing)} trained tensors of the starting model are gone from the "
                               f"model in training (e.g. {missing[0]})")
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.start.values())
