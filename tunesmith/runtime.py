"""Where and in what precision a run computes, decided once at its start.

Training, the speed plan, the planner's pre-flight and the run log all read this one object instead of asking torch
about the device and dtype again (an answer asked twice can differ: a method's bf16 safety, a forced dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hardware import native_bf16_cpu
from .models.loading import training_compute_dtype, training_load_dtype


@dataclass(frozen=True)
class Runtime:
    device: str                 # "cuda" or "cpu"
    compute_dtype: torch.dtype  # what matmuls run in (autocast when it is not the load dtype)
    load_dtype: torch.dtype     # what the weights are loaded in
    bf16_unit: str | None       # the CPU flag that makes bf16 matmuls fast (amx_bf16, avx512_bf16), or None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def dtype_name(self) -> str:
        return str(self.compute_dtype).removeprefix("torch.")

    def describe(self) -> str:
        where = torch.cuda.get_device_name() if self.cuda else f"CPU ({self.bf16_unit or 'no native bf16'})"
        return f"{where}: compute {self.dtype_name}, weights loaded in {str(self.load_dtype).removeprefix('torch.')}"


def resolve_runtime(cfg, method) -> Runtime:
    """The device and dtypes of a training run of `cfg` with `method` (its `Method` object)."""
    cuda = torch.cuda.is_available()
    compute = training_compute_dtype(cfg.model.dtype, cuda=cuda, bf16_safe=method.bf16_autocast_safe(cfg.method))
    return Runtime(device="cuda" if cuda else "cpu", compute_dtype=compute,
                   load_dtype=training_load_dtype(method.is_peft, compute, cuda=cuda),
                   bf16_unit=None if cuda else native_bf16_cpu())
