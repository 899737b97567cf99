"""One forward pass on a probe input that leaves the training run as it was.

The trainer's first-batch checks (does the model's logits equal its head's output? does dropping the padding mask
change real tokens?) run the model in training mode, where dropout draws random numbers: those draws must not shift
the run's random state, and no graph may be kept.
"""

from __future__ import annotations

import torch


def probe_forward(model: torch.nn.Module, **inputs):
    """The model's outputs for `inputs`, or None when it cannot run them; no gradients, and the random state of the
    CPU and of the inputs' CUDA device restored afterwards."""
    device = inputs["input_ids"].device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            return model(**inputs)
        except Exception:  # noqa: BLE001 - a model a check cannot run fails the check; training goes on
            return None
