"""The C allocator's settings for CPU training.

Why by hand: torch allocates CPU tensors with plain malloc, and glibc's default mmap threshold is dynamic. After the
first large block is freed, blocks up to 32 MiB come from the heap instead of fresh mappings, and heap memory freed
between the forward and the backward pass stays in the process. On SmolLM2-135M LoRA (batch 4 x 512) that retention
is ~2.6 GB on top of ~4.1 GB of live tensors (docs/planning.md). A fixed threshold (glibc's initial 128 KiB) makes
every tensor of 128 KiB or more its own mapping, returned to the OS when freed, so the process size follows the live
tensors, which is also what `tunesmith plan` predicts. The price is page faults on fresh mappings: steps measured
31% (fp32) to 76% (bf16 autocast) slower on the 2-core development machine (benchmarks/cpu_allocator.py,
docs/benchmarks.md). So `auto` (the default) keeps glibc's fast settings while even the worst measured retention
fits in the available RAM, and goes lean only when memory is tight. No library exposes this; glibc's mallopt is the documented interface (the
MALLOC_MMAP_THRESHOLD_ environment variable does the same from outside).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_MMAP_THRESHOLD = -3     # <malloc.h>
LEAN_MMAP_THRESHOLD = 128 * 1024
# Worst measured ratio of process peak RSS with glibc's defaults to the peak of live tensors (= the lean peak):
# 6,759 / 4,137 MiB, SmolLM2-135M LoRA at batch 4 x 512 (docs/planning.md); rounded up.
DEFAULT_RETENTION = 1.7


def choose_cpu_allocator(mode: str, predicted_peak: float | None, available: float) -> str:
    """`auto`: glibc's defaults when the predicted peak times the worst retention still fits in `available`,
    else lean; unknown peak: lean. An explicit mode is kept."""
    if mode != "auto":
        return mode
    if predicted_peak is None:
        return "lean"
    return "default" if predicted_peak * DEFAULT_RETENTION <= available else "lean"


def configure_cpu_allocator(mode: str) -> str:
    """Apply `training.cpu_allocator` to this process; returns what was done (for the run log)."""
    if mode != "lean":
        return "glibc default (dynamic mmap threshold)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "lean allocator needs glibc (Linux); left as is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD) != 1:
        return "glibc refused the mmap threshold; left as is"
    return f"lean: fixed mmap threshold {LEAN_MMAP_THRESHOLD // 1024} KiB (freed tensors return to the OS)"
