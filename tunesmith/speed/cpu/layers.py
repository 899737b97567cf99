"""The layers a CPU training run swaps into the model: cheap dropout masks (`dropout.py`, `speed.switches.fast_dropout`)
and RMSNorm with a short backward (`rms_norm.py`, `speed.switches.fast_rms_norm`). On a GPU torch's own are fast
already and nothing is swapped."""

from __future__ import annotations

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
