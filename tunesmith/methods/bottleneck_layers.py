"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) for any transformer with repeated blocks.

PEFT has no bottleneck adapters, so they are written here: a down-projection, a non-linearity and an
up-projection added to a sub-layer's output, `h + up(act(down(h)))`. The up-projection starts at zero, so a
freshly attached model computes exactly what the base model does.

They attach through forward hooks (public torch API): the base model's modules and state-dict names stay
untouched, and the adapters live in one `BottleneckAdapters` module registered on the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.layers import block_part, transformer_blocks

ATTRIBUTE = "tunesmith_bottleneck"
WEIGHTS = "bottleneck_adapters.safetensors"
CONFIG = "bottleneck_config.json"
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, size: int, activation: str, residual: bool):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        self.residual = residual
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.act(self.down(hidden.to(self.down.weight.dtype)))).to(hidden.dtype)
        return hidden + delta if self.residual else delta


class BottleneckAdapters(nn.Module):
    """All adapters of a model, keyed `<block index>_<attention|feedforward>`."""

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = settings
        self.adapters = nn.ModuleDict()


def _hook(adapter: Bottleneck):
    def apply(module, inputs, output):
        if isinstance(output, tuple):  # attention returns (hidden, weights, ...)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return apply


def attach(model: nn.Module, *, size: int, placement: str, activation: str = "relu",
           residual: bool = True) -> BottleneckAdapters:
    """placement "houlsby": after attention and after the feed-forward block; "pfeiffer": after the FFN only."""
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    settings = {"size": size, "placement": placement, "activation": activation, "residual": residual,
                "hidden_size": hidden}
    container = BottleneckAdapters(settings)
    parts = ("attention", "feedforward") if placement == "houlsby" else ("feedforward",)
    weight = next(model.parameters())
    _, blocks = transformer_blocks(model)
    for index, block in enumerate(blocks):
        for part in parts:
            adapter = Bottleneck(hidden, size, activation, residual).to(device=weight.device)
            container.adapters[f"{index}_{part}"] = adapter
            block_part(block, part)[1].register_forward_hook(_hook(adapter))
    model.add_module(ATTRIBUTE, container)
    return container


def adapters_of(model: nn.Module) -> BottleneckAdapters:
    return getattr(model, ATTRIBUTE)


def save(model: nn.Module, path: Path) -> None:
    container = adapters_of(model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in container.adapters.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps(container.settings, indent=2) + "\n", encoding="utf-8")


def load(model: nn.Module, path: Path) -> nn.Module:
    settings = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    container = attach(model, size=settings["size"], placement=settings["placement"],
                       activation=settings["activation"], residual=settings["residual"])
    container.adapters.load_state_dict(load_file(str(path / WEIGHTS)))
    return model
