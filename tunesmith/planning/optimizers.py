"""Optimizer state per trainable parameter, by optimizer kind. A table, because the rule is one number each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerKind:
    states: int            # state tensors per parameter
    state_bytes: float     # bytes per state element; None-like 0 means "same as the parameter's own dtype"
    paged: bool = False    # bitsandbytes paged state: lives in unified memory and can spill to CPU RAM
    note: str = ""


OPTIMIZERS: dict[str, OptimizerKind] = {
    # torch AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype (fp32 adapters/master weights: 8 B).
    "adamw": OptimizerKind(2, 0, note="exp_avg + exp_avg_sq in the parameter dtype"),
    # bitsandbytes 8-bit blockwise states (Dettmers et al. 2022): 1 byte each plus one fp32 scale per 2048.
    "adamw_8bit": OptimizerKind(2, 1 + 4 / 2048, note="8-bit blockwise states"),
    "paged_adamw_8bit": OptimizerKind(2, 1 + 4 / 2048, paged=True, note="8-bit states, paged to CPU under pressure"),
    "paged_adamw_32bit": OptimizerKind(2, 4, paged=True, note="fp32 states, paged to CPU under pressure"),
    # transformers' "sgd" is torch SGD without momentum: no state at all.
    "sgd": OptimizerKind(0, 0, note="no momentum, no state"),
}


def resolve_optimizer(name: str, method: str, device: str) -> str:
    """The optimizer a run would use, following tunesmith.training.arguments.choose_optimizer."""
    if name == "auto":
        return "paged_adamw_32bit" if method == "qlora" and device == "cuda" else "adamw"
    return name


def optimizer_state_bytes(name: str, trainable: int, trainable_bytes: float) -> float:
    kind = OPTIMIZERS[name]
    per_element = kind.state_bytes or (trainable_bytes / trainable if trainable else 4)
    return kind.states * per_element * trainable
