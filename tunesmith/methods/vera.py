"""VeRA: frozen random low-rank matrices shared by all layers, with tiny trainable scaling vectors
(Kopiczko et al., 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MethodOptions
from .lora import peft_task_type
from .peft_method import PeftMethod
from .registry import register


class VeraOptions(MethodOptions):
    name: Literal["vera"] = "vera"
    r: int = Field(256, gt=0, description="Rank of the shared random matrices (large: they are frozen)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "attention"
    d_initial: float = Field(0.1, gt=0, description="Initial value of the d scaling vector")
    seed: int = Field(0, description="Seed of the shared random projections (saved with the adapter)")


@register
class VeraMethod(PeftMethod):
    name = "vera"
    description = "Shared frozen random projections + trainable scaling vectors (PEFT VeRA)"
    Options = VeraOptions

    def peft_config(self, model, opts: VeraOptions, total_steps):
        from peft import VeraConfig

        from ..models.targets import resolve_targets

        return VeraConfig(r=opts.r, vera_dropout=opts.dropout, d_initial=opts.d_initial,
                          projection_prng_key=opts.seed, save_projection=True,
                          target_modules=resolve_targets(model, opts.target_modules),
                          task_type=peft_task_type(model))
