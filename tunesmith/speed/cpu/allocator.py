"""The C allocator for CPU training.

Why by hand: torch allocates CPU tensors with plain malloc, and no library chooses that allocator for a training run.

- glibc's default mmap threshold is dynamic: after the first large block is freed, blocks up to 32 MiB come from the
  heap instead of fresh mappings, and heap memory freed between the forward and the backward pass stays in the
  process. On SmolLM2-135M LoRA (batch 4 x 512) that retention is ~2.6 GB on top of ~4.1 GB of live tensors
  (docs/planning.md).
- `lean` fixes the threshold at glibc's initial 128 KiB (mallopt, glibc's documented interface): every tensor of
  128 KiB or more is its own mapping, returned to the OS when freed, so the process size follows the live tensors
  (what `tunesmith plan` predicts). The price is page faults on fresh mappings: 1.3-1.8x the step time.
- `tcmalloc` (gperftools' libtcmalloc_minimal, the allocator PyTorch's own CPU launcher `torch.backends.xeon.run_cpu`
  preloads) reuses freed blocks without growing the heap the way glibc does: glibc's speed at about lean's memory
  (benchmarks/cpu_allocator.py, docs/benchmarks.md). A process's malloc can only be replaced when it starts, so the
  `tunesmith` command starts itself again with LD_PRELOAD (`preload_tcmalloc`); code that calls `train()` from Python
  gets it by starting Python with LD_PRELOAD set.

`auto` (the default): tcmalloc when it is loaded; else glibc's fast settings while even the worst measured retention
fits in the available RAM, lean otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import sys
from pathlib import Path

from ...errors import ConfigError
from ...hardware import gpu_device_visible

M_MMAP_THRESHOLD = -3     # <malloc.h>
LEAN_MMAP_THRESHOLD = 128 * 1024
# Worst measured ratio of process peak RSS with glibc's defaults to the peak of live tensors (= the lean peak):
# 6,759 / 4,137 MiB, SmolLM2-135M LoRA at batch 4 x 512 (docs/planning.md); rounded up.
DEFAULT_RETENTION = 1.7
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
# Set in the restarted process: what LD_PRELOAD was before (so that the run's own subprocesses don't inherit the
# preload), and a guard against restarting twice.
_PRELOADED = "TUNESMITH_PRELOADED_ALLOCATOR"
_PREVIOUS_PRELOAD = "TUNESMITH_PREVIOUS_LD_PRELOAD"
INSTALL_HINT = "apt install libtcmalloc-minimal4 (Debian/Ubuntu), dnf install gperftools-libs, or conda install gperftools"


def find_tcmalloc() -> str | None:
    """The path (or soname) of an installed libtcmalloc: the active conda/venv prefix first, then the loader's
    search path."""
    for prefix in {os.environ.get("CONDA_PREFIX"), sys.prefix} - {None}:
        for name in TCMALLOC_NAMES:
            found = sorted(glob.glob(os.path.join(prefix, "lib", f"lib{name}.so*")))
            if found:
                return found[0]
    for name in TCMALLOC_NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_loaded() -> bool:
    try:
        return "libtcmalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def preload_tcmalloc(mode: str) -> None:
    """For the `tunesmith` command, before anything heavy is imported: when `speed.cpu_allocator` is `tcmalloc`,
    or `auto` on a Linux machine without a GPU, start this same command again with libtcmalloc preloaded.
    Does nothing when it is already loaded or not installed (`auto`); `tcmalloc` without the library is an error."""
    if os.environ.get(_PRELOADED):  # the restarted process: hide the preload from our own subprocesses
        previous = os.environ.pop(_PREVIOUS_PRELOAD, None)
        os.environ.pop(_PRELOADED)
        if previous:
            os.environ["LD_PRELOAD"] = previous
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    if mode not in ("auto", "tcmalloc") or platform.system() != "Linux" or tcmalloc_loaded():
        return
    if mode == "auto" and gpu_device_visible():
        return
    library = find_tcmalloc()
    if library is None:
        if mode == "tcmalloc":
            raise ConfigError("speed.cpu_allocator: tcmalloc, but no libtcmalloc is installed",
                              where="speed.cpu_allocator", hint=INSTALL_HINT + "; or choose auto")
        return
    previous = os.environ.get("LD_PRELOAD", "")
    env = {**os.environ, "LD_PRELOAD": " ".join(filter(None, [library, previous])), _PRELOADED: library,
           _PREVIOUS_PRELOAD: previous,
           # tcmalloc reports every allocation above 1 GiB on stderr by default: noise for a large logits tensor.
           "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                   str(1 << 40))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def choose_cpu_allocator(mode: str, predicted_peak: float | None, available: float,
                         tcmalloc: bool | None = None) -> str:
    """`auto`: tcmalloc when it is loaded (`tcmalloc`, default: whether it is); else glibc's defaults when the
    predicted peak times the worst retention still fits in `available`, else lean; unknown peak: lean.
    An explicit mode is kept, but `tcmalloc` falls back to `auto` when it is not loaded."""
    tcmalloc = tcmalloc_loaded() if tcmalloc is None else tcmalloc
    if mode in ("auto", "tcmalloc") and tcmalloc:
        return "tcmalloc"
    if mode not in ("auto", "tcmalloc"):
        return mode
    if predicted_peak is None:
        return "lean"
    return "default" if predicted_peak * DEFAULT_RETENTION <= available else "lean"


def glibc_retained_peak(chosen: str, predicted_peak: float | None) -> float | None:
    """When the run keeps glibc's default settings: the predicted peak times the worst retention measured in short
    runs. The planner predicts the live tensors (what lean and tcmalloc stay near); glibc's heap also keeps what
    backward freed, and over whole runs it was seen to keep more than this (docs/planning.md): not a bound."""
    if chosen != "default" or not predicted_peak:
        return None
    return predicted_peak * DEFAULT_RETENTION


def tcmalloc_tip(mode: str, chosen: str) -> str | None:
    """For the run log when `auto`/`tcmalloc` ended up without tcmalloc (Linux only): how to get it."""
    if chosen == "tcmalloc" or mode not in ("auto", "tcmalloc") or platform.system() != "Linux":
        return None
    library = find_tcmalloc()
    how = (f"the tunesmith command preloads it; from Python, start it with LD_PRELOAD={library}" if library
           else INSTALL_HINT)
    return f"with tcmalloc, CPU training keeps this speed at about lean's memory ({how})"


# oneDNN, which runs the bf16 matmuls of CPU autocast, keeps a compiled primitive per matmul shape: up to 1024 in
# its own cache and 1024 in PyTorch's ideep LRU cache, each with buffers of its own. Length-grouped batches bring new
# shapes every step, so under bf16 autocast the demo's process grew from 2.2 to 3.4 GB over 80 steps while the live
# tensors stayed flat (an fp32 run, whose matmuls go to MKL, stayed at 2.2). A step's shapes fit in 32 entries: same
# speed measured, flat memory. Both caches read these variables once, when the first primitive is made.
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
ONEDNN_CACHE_ENTRIES = 32


def limit_onednn_caches() -> None:
    """Keep oneDNN's per-shape caches small in this process (a value the user set wins). Takes effect only
    before the process's first oneDNN matmul: training calls it before the model loads."""
    for name in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(name, str(ONEDNN_CACHE_ENTRIES))


def release_free_memory() -> None:
    """Collect garbage, and have tcmalloc (when loaded) return its free pages to the OS. tcmalloc keeps freed
    blocks for reuse by size; after bf16-autocast training the fp32 model an evaluation loads next could not use
    them, and the demo's process peaked at 2.8 GB instead of 2.3 (gperftools' documented C interface)."""
    import gc

    gc.collect()
    if tcmalloc_loaded():
        ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory()


def configure_cpu_allocator(mode: str) -> str:
    """Apply `speed.cpu_allocator` to this process; returns what was done (for the run log)."""
    if mode == "tcmalloc":
        return "tcmalloc (preloaded): freed blocks reused, little heap growth"
    if mode != "lean":
        return "glibc default (dynamic mmap threshold)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "lean allocator needs glibc (Linux); left as is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD) != 1:
        return "glibc refused the mmap threshold; left as is"
    return f"lean: fixed mmap threshold {LEAN_MMAP_THRESHOLD // 1024} KiB (freed tensors return to the OS)"
