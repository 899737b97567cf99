"""The layers a CPU training run swaps into the model: cheap dropout masks (`dropout.py`, `training.fast_dropout`)
and RMSNorm with a short backward (`rms_norm.py`, `training.fast_rms_norm`). On a GPU torch's own are fast
already and nothing is swapped."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from . import dropout as fast_dropout
from .rms_norm import use_cpu_rms_norm


def use_cpu_layers(model: nn.Module, *, dropout: bool, rms_norm: bool) -> dict[str, int]:
    """Swap in the CPU layers asked for, whatever device this process has (the time planner probes a CPU plan
    with them); returns how many of each. Swapped dropouts get their compiled kernel (built here on first use)."""
    swaps = {"dropout": fast_dropout.use_fast_dropout(model) if dropout else 0,
             "rms_norm": use_cpu_rms_norm(model) if rms_norm else 0}
    if swaps["dropout"]:
        fast_dropout.load_kernel()
    return swaps


def apply_cpu_layers(cfg, model: nn.Module, console=None) -> dict[str, int]:
    """Swap the layers `cfg.training` asks for on a CPU run; returns how many of each."""
    if torch.cuda.is_available():
        return {}
    status = nullcontext() if console is None else console.status(
        "CPU layers (the dropout kernel is compiled on first use, about 25 s)")
    with status:
        swaps = use_cpu_layers(model, dropout=cfg.training.fast_dropout, rms_norm=cfg.training.fast_rms_norm)
    if console is not None and swaps["dropout"]:
        how = ("one compiled pass each" if fast_dropout.kernel_failure() is None
               else f"tensor ops: the kernel {fast_dropout.kernel_failure()}")
        console.print(f"fast dropout: {swaps['dropout']} dropout layers draw cheap CPU masks ({how}; "
                      "training.fast_dropout)")
    if console is not None and swaps["rms_norm"]:
        console.print(f"CPU RMSNorm: {swaps['rms_norm']} norm layers with a four-pass backward "
                      "(training.fast_rms_norm)")
    return swaps
