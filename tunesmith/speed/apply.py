"""What a speed plan does to the training process and its model, and undoes after training.

The process (CPU runs): torch's threads, oneDNN's caches, grouped-query SDPA, the allocator. The model: the CPU
layers swapped in (`cpu/layers.py`), the frozen base held in the autocast dtype (`frozen_base.py`), the causal
attention kernel (`cpu/causal_attention.py`). What is chosen, and why a piece did not apply, goes to the run log;
the user's console is not told about internal choices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..compat import attention_implementation
from ..reporting import Reporter
from .cpu import dropout as fast_dropout
from .cpu.allocator import (allocator_tip, choose_cpu_allocator, configure_cpu_allocator, limit_onednn_caches,
                            preloaded_allocator)
from .cpu.causal_attention import kernel_failure, restore_attention, use_causal_attention_kernel
from .cpu.layers import use_cpu_layers
from .cpu.sdpa_gqa import grouped_query_sdpa
from .frozen_base import hold_for_training, release
from .plan import SpeedPlan
from .varlen_attention import unavailable_reason as varlen_unavailable
from .varlen_attention import use_varlen_attention

log = logging.getLogger(__name__)


def configure_process(plan: SpeedPlan) -> None:
    """CPU runs: oneDNN's per-shape caches kept small (before the first matmul), masked grouped-query SDPA and
    torch's intra-op threads. Nothing on a GPU."""
    if plan.device == "cuda":
        return
    limit_onednn_caches()
    grouped_query_sdpa(plan.sdpa_gqa)
    torch.set_num_threads(plan.cpu_threads)
    log.info("CPU threads: %d", plan.cpu_threads)


def configure_allocator(plan: SpeedPlan, predicted_peak: float | None, available: float) -> str | None:
    """CPU runs: the allocator for the predicted peak (`cpu/allocator.py`), logged with how to do better; returns
    the allocator chosen (None on a GPU)."""
    if plan.device == "cuda":
        return None
    allocator = choose_cpu_allocator(plan.cpu_allocator, predicted_peak, available, loaded=preloaded_allocator())
    log.info("CPU allocator: %s", configure_cpu_allocator(allocator))
    tip = allocator_tip(plan.cpu_allocator, allocator)
    if tip:
        log.info("tip: %s", tip)
    return allocator


@dataclass
class ModelSpeedups:
    """What was done to a model, to undo after training (`undo`)."""

    swaps: dict[str, int] = field(default_factory=dict)
    held: list = field(default_factory=list)
    attention_before: str | None = None
    packed_attention: str | None = None  # the attention swapped in, which computes packed samples alone


    def undo(self, model) -> None:
        release(self.held)
        restore_attention(model, self.attention_before)
        self.held, self.attention_before, self.packed_attention = [], None, None


def apply_to_model(plan: SpeedPlan, model, method, compute_dtype: torch.dtype, reporter: Reporter) -> ModelSpeedups:
    """Swap the plan's pieces into `model` (a prepared training model): those its task takes (plan.NOT_TAKEN)."""
    done = ModelSpeedups()
    if plan.device == "cuda":
        done.attention_before = _varlen_attention(plan, model)
        done.packed_attention = "torch's varlen FlashAttention" if done.attention_before else None
        return done
    if plan.fast_dropout or plan.fast_rms_norm:
        with reporter.status("CPU layers (the dropout kernel is compiled on first use, about 25 s)"):
            done.swaps = use_cpu_layers(model, dropout=plan.fast_dropout, rms_norm=plan.fast_rms_norm)
        _log_layers(done.swaps)
    if plan.half_frozen_base:  # a task that does not take it (a classifier) is not shown a status for it
        with reporter.status("preparing the frozen base for training"):
            done.held = hold_for_training(model, method, compute_dtype, cuda=False)
    if done.held:
        log.info("frozen base: %d linear weights held in %s for training, the values autocast multiplies with "
                 "(speed.switches.half_frozen_base)", len(done.held), str(done.held[0].weight.dtype)[6:])
    done.attention_before = _causal_attention(plan, model, compute_dtype, reporter)
    done.packed_attention = "the CPU causal kernel" if done.attention_before else None
    return done


def _varlen_attention(plan: SpeedPlan, model) -> str | None:
    """CUDA runs attend through torch's varlen FlashAttention, which takes packed rows (`varlen_attention.py`);
    returns the attention to restore after training (None: unchanged)."""
    if not plan.gpu_varlen_attention or attention_implementation(model.config) != "sdpa":
        return None
    if plan.torch_compile:  # compiled graphs attend through SDPA (the kernel's segments need a host sync)
        log.info("varlen FlashAttention: not under speed.torch_compile; attention runs on SDPA")
        return None
    before = use_varlen_attention(model)
    _log_swap(before, "varlen FlashAttention", "gpu_varlen_attention", varlen_unavailable,
              "varlen FlashAttention: packed samples and padded rows attend on torch's FlashAttention varlen kernel")
    return before


def _log_layers(swaps: dict[str, int]) -> None:
    if swaps.get("dropout"):
        failure = fast_dropout.kernel_failure()
        how = "one compiled pass each" if failure is None else f"tensor ops: the kernel {failure}"
        log.info("fast dropout: %d dropout layers draw cheap CPU masks (%s; speed.switches.fast_dropout)",
                 swaps["dropout"], how)
    if swaps.get("rms_norm"):
        log.info("CPU RMSNorm: %d norm layers with a four-pass backward (speed.switches.fast_rms_norm)",
                 swaps["rms_norm"])


def _causal_attention(plan: SpeedPlan, model, compute_dtype: torch.dtype, reporter: Reporter) -> str | None:
    """bf16 CPU runs attend through the causal kernel; returns the attention to restore after training (None:
    unchanged). Not under torch.compile, whose graphs attend through SDPA (the kernel is not traceable), so that
    `data.packing: auto` does not pack for a kernel that will not run."""
    if compute_dtype != torch.bfloat16 or not plan.cpu_causal_attention:
        return None
    if plan.torch_compile:
        log.info("CPU causal attention kernel: not under speed.torch_compile (it cannot be traced); attention "
                 "runs on SDPA")
        return None
    if attention_implementation(model.config) != "sdpa":
        return None
    with reporter.status("CPU causal attention kernel (compiled on first use, about 25 s)"):
        before = use_causal_attention_kernel(model)
    _log_swap(before, "CPU causal attention kernel", "cpu_causal_attention", kernel_failure,
              "CPU causal attention: query blocks meet only the keys before them")
    return before


def _log_swap(before: str | None, kernel: str, switch: str, failure, done: str) -> None:
    """The run log's line for an attention swap: `done` when it happened (`before` is the attention it replaced),
    else why not (`failure()`)."""
    if before is None:
        log.info("%s: %s; attention runs on SDPA (speed.switches.%s)", kernel, failure(), switch)
    else:
        log.info("%s (speed.switches.%s)", done, switch)
