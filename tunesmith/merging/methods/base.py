"""The contract between the engine and a merge method, and the registry of methods."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...errors import ConfigError


@dataclass
class TensorParams:
    """Every parameter of one tensor's merge, already resolved for that tensor (filters and gradients applied)."""

    name: str
    weights: list[float]
    densities: list[float]
    options: dict[str, float | bool] = field(default_factory=dict)

    def generator(self, model_index: int) -> torch.Generator:
        """A random stream fixed by (seed, tensor, model): the same merge gives the same bits in any order."""
        # The CPU generator (mt19937) keeps only 32 bits of its seed, so all three parts go into one hash.
        key = zlib.crc32(f"{int(self.options.get('seed', 0))}:{model_index}:{self.name}".encode())
        return torch.Generator().manual_seed(key)


class MergeMethod:
    """Subclasses set the class attributes and implement `merge` on floating-point tensors."""

    name: ClassVar[str]
    summary: ClassVar[str]
    base: ClassVar[str] = "forbidden"  # "required" | "forbidden": whether `base_model` is part of the formula
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    model_params: ClassVar[tuple[str, ...]] = ("weight",)  # per-model parameters the method reads
    options: ClassVar[dict[str, float | bool]] = {}  # global parameters and their defaults

    def merge(self, tensors: list[torch.Tensor], base: torch.Tensor | None, p: TensorParams) -> torch.Tensor:
        raise NotImplementedError


_METHODS: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> dict[str, str]:
    return {name: cls.summary for name, cls in sorted(_METHODS.items())}


def get_method(name: str) -> MergeMethod:
    if name not in _METHODS:
        raise ConfigError(f"unknown merge method '{name}'", where="method",
                          hint=f"choose one of: {', '.join(sorted(_METHODS))} (or lora_to_base, lora_combine)")
    return _METHODS[name]()
