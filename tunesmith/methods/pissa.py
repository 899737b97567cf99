"""PiSSA and OLoRA: LoRA initialised from the weight itself (principal singular vectors, resp. a QR
decomposition) instead of zeros (Meng et al., 2024; Büyükakyüz, 2024).

Both move the initial update out of the base weight, so the trained adapter only fits the *modified* base.
At save time PEFT converts it into an ordinary LoRA (of rank 2r) that applies to the original base, which is
what users load later; that needs the initial adapter, kept from the start of training.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from .lora import LoraMethod, LoraOptions
from .registry import register

_INITIAL = "_tunesmith_initial_adapter"


# The adapter starts out holding a large part of the weight (its principal, resp. leading QR, component), so dropout
# on the adapter's input is dropout on that part of the base layer: the model's training output no longer matches
# the base model (OLoRA on stories260K started at loss 9.1 instead of 2.8). Off by default, as in the PiSSA paper.
NO_DROPOUT = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input: 0, because the adapter starts "
                                                "with part of the weight, and dropout there perturbs the base model")


class PissaOptions(LoraOptions):
    name: Literal["pissa"] = "pissa"
    dropout: float = NO_DROPOUT


class OloraOptions(LoraOptions):
    name: Literal["olora"] = "olora"
    dropout: float = NO_DROPOUT


class _WeightInitialisedLora(LoraMethod):
    retain_distance = None  # the base weight itself is moved at the start: B·A is not the change
    adapters_off_is_start = False

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        model = super().prepare(model, opts, gradient_checkpointing=gradient_checkpointing, total_steps=total_steps)
        initial = Path(tempfile.mkdtemp(prefix="tunesmith-init-adapter-"))
        atexit.register(shutil.rmtree, initial, True)
        # Saved before any step: PEFT's conversion subtracts this from the trained adapter.
        model.save_pretrained(initial)
        setattr(model, _INITIAL, initial)
        return model

    def save(self, model, opts, path):
        initial = getattr(model, _INITIAL, None)
        if initial is None:
            raise RuntimeError(f"{self.name}: the initial adapter was not recorded at prepare time")
        model.save_pretrained(path, path_initial_model_for_weight_conversion=str(initial))


@register
class PissaMethod(_WeightInitialisedLora):
    name = "pissa"
    description = "LoRA initialised from the principal singular vectors of each weight (PEFT PiSSA)"
    Options = PissaOptions
    init_lora_weights = "pissa"


@register
class OloraMethod(_WeightInitialisedLora):
    name = "olora"
    description = "LoRA initialised from an orthonormal QR basis of each weight (PEFT OLoRA)"
    Options = OloraOptions
    init_lora_weights = "olora"
