"""Exact trainable-parameter counts of every method on a given model (`tunesmith methods --model M`).

Counts come from actually preparing each method on a fresh copy of the model (PEFT wrapping, adapters,
freezing), not from formulas, so they are what training would report. Methods with their own load options
(QLoRA's 4-bit base) get a model loaded with those options. Counts are taken at step 0 with each method's
default options: a staged or progressive schedule trains more later, AdaLoRA prunes ranks as it goes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config.schema import ModelConfig
from ..models.loading import load_model
from ..models.targets import count_parameters
from .registry import all_methods

#: AdaLoRA needs the run length up front; any value gives the same step-0 count.
_NOMINAL_STEPS = 100


@dataclass
class MethodCount:
    name: str
    trainable: int | None = None
    total: int | None = None
    error: str | None = None

    @property
    def percent(self) -> float | None:
        return 100 * self.trainable / self.total if self.total else None


def method_parameter_counts(model_cfg: ModelConfig, names: list[str] | None = None,
                            on_method: Callable[[str], None] | None = None) -> list[MethodCount]:
    """One MethodCount per method (sorted by name); a method that cannot run on this model records why."""
    methods = all_methods()
    base = load_model(model_cfg, dtype=torch.float32)
    counts = []
    for name in names or sorted(methods):
        if on_method:
            on_method(name)
        method = methods[name]
        opts = method.Options(name=name)
        try:
            extra = method.load_kwargs(opts, torch.float32)
            model = load_model(model_cfg, dtype=torch.float32, extra=extra) if extra else copy.deepcopy(base)
            model = method.prepare(model, opts, gradient_checkpointing=False, total_steps=_NOMINAL_STEPS)
            counts.append(MethodCount(name, *count_parameters(model)))
        except Exception as exc:  # noqa: BLE001 — one method failing on this model must not hide the others
            counts.append(MethodCount(name, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:120]))
    return counts
