"""One forward pass on a probe input that leaves the training run as it was.

The trainer's first-batch checks (does the model's logits equal its head's output? does dropping the padding mask
change real tokens?) run the model in training mode, where dropout draws random numbers: those draws must not shift
the run's random state, and no graph may be kept. Nor may the probe leave casts in autocast's weight cache: up to
torch 2.10 at least (2.13 has the fix, pytorch/pytorch#165068) a cast made under no_grad was cached without its
graph, and a training forward later in the same autocast region reused it and lost every gradient through those
weights.
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
        finally:
            # Whatever autocast the model's forward ran under (an outer one, or accelerate's around forward, which
            # turns the cache back on): the next forward casts afresh, with its graph. One cast more, first batch only.
            torch.clear_autocast_cache()
