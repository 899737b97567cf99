"""The layers a CPU training run swaps into the model: cheap dropout masks (`dropout.py`, `training.fast_dropout`)
and RMSNorm with a short backward (`rms_norm.py`, `training.fast_rms_norm`). On a GPU torch's own are fast
already and nothing is swapped."""

from __future__ import annotations

import torch
from torch import nn

from .dropout import use_fast_dropout
from .rms_norm import use_cpu_rms_norm


def use_cpu_layers(model: nn.Module, *, dropout: bool, rms_norm: bool) -> dict[str, int]:
    """Swap in the CPU layers asked for, whatever device this process has (the time planner probes a CPU plan
    with them); returns how many of each."""
    return {"dropout": use_fast_dropout(model) if dropout else 0,
            "rms_norm": use_cpu_rms_norm(model) if rms_norm else 0}


def apply_cpu_layers(cfg, model: nn.Module, console=None) -> dict[str, int]:
    """Swap the layers `cfg.training` asks for on a CPU run; returns how many of each."""
    if torch.cuda.is_available():
        return {}
    swaps = use_cpu_layers(model, dropout=cfg.training.fast_dropout, rms_norm=cfg.training.fast_rms_norm)
    if console is not None and swaps["dropout"]:
        console.print(f"fast dropout: {swaps['dropout']} dropout layers draw cheap CPU masks (training.fast_dropout)")
    if console is not None and swaps["rms_norm"]:
        console.print(f"CPU RMSNorm: {swaps['rms_norm']} norm layers with a four-pass backward "
                      "(training.fast_rms_norm)")
    return swaps
