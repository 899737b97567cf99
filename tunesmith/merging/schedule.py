"""Resolve a parameter value (number, gradient over layers, or name filters) for one tensor."""

from __future__ import annotations

import re

from ..errors import ConfigError
from .config import Conditional

# Transformer blocks are numbered under one of these names in every common architecture.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_positions(names: list[str]) -> dict[str, float]:
    """Each tensor's place along the depth, 0 (first block) … 1 (last block).

    Tensors outside the blocks (embeddings, final norm, head) take position 0, and the only block of a
    one-block model position 1, as mergekit does, so a gradient means the same thing in both tools.
    """
    indices = {name: layer_index(name) for name in names}
    count = max((i for i in indices.values() if i is not None), default=0) + 1
    return {name: 0.0 if i is None else (i / (count - 1) if count > 1 else 1.0) for name, i in indices.items()}


def resolve(value, tensor: str, position: float, field: str):
    if isinstance(value, (bool, int, float)):
        return value
    if value and all(isinstance(v, (int, float)) for v in value):
        scaled = position * (len(value) - 1)
        low = int(scaled)
        high = min(low + 1, len(value) - 1)
        frac = scaled - low
        return (1 - frac) * value[low] + frac * value[high]
    for entry in value:
        entry = entry if isinstance(entry, Conditional) else Conditional(**entry)
        if entry.filter in (None, "*") or entry.filter in tensor:
            return resolve(entry.value, tensor, position, field)
    raise ConfigError(f"no entry applies to tensor '{tensor}'", where=field,
                      hint="add a last entry without `filter` as the default value")
