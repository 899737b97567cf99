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
  preloads) and `tbbmalloc` (oneTBB's scalable allocator, which its `libtbbmalloc_proxy` puts in place of malloc;
  the `tbb` wheel on PyPI ships it, so pip installs it with tunesmith on Linux x86-64) reuse freed blocks without
  growing the heap the way glibc does: glibc's speed at about lean's memory (benchmarks/cpu_allocator.py,
  docs/benchmarks.md). A process's malloc can only be replaced when it starts, so the `tunesmith` command starts
  itself again with LD_PRELOAD (`preload_allocator`); code that calls `train()` from Python gets it by starting
  Python with LD_PRELOAD set.

`auto` (the default): tcmalloc when installed, else tbbmalloc when installed (both preloaded); else glibc's fast
settings while even the worst measured retention fits in the available RAM, lean otherwise.
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
# Worst measured ratio with tbbmalloc when the model's own weights train: 3,628 / 3,057 MiB, SmolLM2-135M full
# fine-tuning at seq 512, bf16 autocast (benchmarks/plan_accuracy.py --allocator tbbmalloc; 1.12-1.19 over the four
# full rows).
# Not its cache: cleaning tbbmalloc's buffers after every optimizer step moved that peak by under 1%. Adapter runs
# stayed within 10% of the plan, as under lean.
TBBMALLOC_FULL_RETENTION = 1.2
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
# oneTBB's proxy replaces malloc; it needs its allocator library, which it finds only on the loader's path, so both
# are preloaded (the proxy last).
TBBMALLOC_LIBRARIES = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")
PRELOADABLE = ("tcmalloc", "tbbmalloc")  # speed.cpu_allocator values that replace malloc (auto tries them in order)
# Set in the restarted process: what LD_PRELOAD was before (so that the run's own subprocesses don't inherit the
# preload), and a guard against restarting twice.
_PRELOADED = "TUNESMITH_PRELOADED_ALLOCATOR"
_PREVIOUS_PRELOAD = "TUNESMITH_PREVIOUS_LD_PRELOAD"
INSTALL_HINT = "apt install libtcmalloc-minimal4 (Debian/Ubuntu), dnf install gperftools-libs, or conda install gperftools"
TBB_INSTALL_HINT = "pip install tbb (Linux x86-64)"


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


def find_tbbmalloc() -> list[str] | None:
    """The paths of oneTBB's allocator and its malloc proxy, as pip (the `tbb` wheel: PREFIX/lib) or conda installs
    them; None when either is missing."""
    import site

    prefixes = [os.environ.get("CONDA_PREFIX"), sys.prefix, getattr(site, "USER_BASE", None)]
    for prefix in dict.fromkeys(p for p in prefixes if p):
        paths = [os.path.join(prefix, "lib", name) for name in TBBMALLOC_LIBRARIES]
        if all(os.path.exists(path) for path in paths):
            return paths
    return None


def _libraries(allocator: str) -> list[str] | None:
    if allocator == "tcmalloc":
        library = find_tcmalloc()
        return [library] if library else None
    return find_tbbmalloc()


def preloaded_allocator() -> str | None:
    """Which malloc replacement this process runs with: tcmalloc, tbbmalloc or None (glibc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return "tcmalloc" if "libtcmalloc" in maps else "tbbmalloc" if "libtbbmalloc_proxy" in maps else None


def restarted_with_allocator() -> bool:
    """Whether this is the process `preload_allocator` started again (and has not yet been called in)."""
    return bool(os.environ.get(_PRELOADED))


def preload_allocator(mode: str) -> None:
    """For the `tunesmith` command, before anything heavy is imported: when `speed.cpu_allocator` is `tcmalloc` or
    `tbbmalloc`, or `auto` on a Linux machine without a GPU, start this same command again with that allocator
    preloaded (auto: tcmalloc, else tbbmalloc). Does nothing when one is already loaded, or, for `auto`, when none is
    installed; a named allocator that is not installed is an error."""
    if os.environ.get(_PRELOADED):  # the restarted process: hide the preload from our own subprocesses
        previous = os.environ.pop(_PREVIOUS_PRELOAD, None)
        os.environ.pop(_PRELOADED)
        if previous:
            os.environ["LD_PRELOAD"] = previous
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    if mode not in ("auto", *PRELOADABLE) or platform.system() != "Linux" or preloaded_allocator():
        return
    if mode == "auto" and gpu_device_visible():
        return
    candidates = PRELOADABLE if mode == "auto" else (mode,)
    chosen = next(((name, libs) for name in candidates if (libs := _libraries(name))), None)
    if chosen is None:
        if mode != "auto":
            raise ConfigError(f"speed.cpu_allocator: {mode}, but it is not installed", where="speed.cpu_allocator",
                              hint=(INSTALL_HINT if mode == "tcmalloc" else TBB_INSTALL_HINT) + "; or choose auto")
        return
    name, libraries = chosen
    previous = os.environ.get("LD_PRELOAD", "")
    env = {**os.environ, "LD_PRELOAD": " ".join(filter(None, [*libraries, previous])), _PRELOADED: name,
           _PREVIOUS_PRELOAD: previous,
           # tcmalloc reports every allocation above 1 GiB on stderr by default: noise for a large logits tensor.
           "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                   str(1 << 40))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def choose_cpu_allocator(mode: str, predicted_peak: float | None, available: float, *, loaded: str | None) -> str:
    """`auto`, `tcmalloc`, `tbbmalloc`: the malloc replacement this process runs with, if any (`loaded`:
    `preloaded_allocator()`); else glibc's defaults when the predicted peak times the worst retention still fits in
    `available`, else lean; unknown peak: lean. `lean` and `default` are kept."""
    if mode not in ("auto", *PRELOADABLE):
        return mode
    if loaded:
        return loaded
    if predicted_peak is None:
        return "lean"
    return "default" if predicted_peak * DEFAULT_RETENTION <= available else "lean"


def retained_peak(chosen: str, predicted_peak: float | None, *, trains_base_weights: bool) -> float | None:
    """What the process may hold beyond the plan's live tensors under the allocator the run got: with glibc's
    default settings the predicted peak times the worst retention measured in short runs (over whole runs glibc was
    seen to keep more: docs/planning.md; not a bound); with tbbmalloc, when the model's own weights train (full,
    freeze; measured for full), its measured worst ratio. None where the plan holds (lean, tcmalloc, tbbmalloc with
    an adapter) or there is no plan."""
    if not predicted_peak:
        return None
    if chosen == "default":
        return predicted_peak * DEFAULT_RETENTION
    if chosen == "tbbmalloc" and trains_base_weights:
        return predicted_peak * TBBMALLOC_FULL_RETENTION
    return None


def allocator_tip(mode: str, chosen: str) -> str | None:
    """For the run log when `auto` (or a named allocator) ended up with glibc (Linux only): how to do better."""
    if chosen in PRELOADABLE or mode not in ("auto", *PRELOADABLE) or platform.system() != "Linux":
        return None
    installed = next((name for name in PRELOADABLE if _libraries(name)), None)
    if installed:
        how = (f"the tunesmith command preloads it; from Python, start it with "
               f"LD_PRELOAD={':'.join(_libraries(installed))}")
        return f"with {installed}, CPU training keeps this speed at about lean's memory ({how})"
    return (f"with tcmalloc or tbbmalloc, CPU training keeps this speed at about lean's memory ({TBB_INSTALL_HINT}; "
            f"or {INSTALL_HINT})")


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
    """Collect garbage, and have tcmalloc or tbbmalloc (when loaded) return their free pages to the OS. They keep
    freed blocks for reuse by size; after bf16-autocast training the fp32 model an evaluation loads next could not
    use them, and the demo's process peaked at 2.8 GB instead of 2.3 with tcmalloc (gperftools' and oneTBB's
    documented C interfaces)."""
    import gc

    gc.collect()
    loaded = preloaded_allocator()
    if loaded == "tcmalloc":
        ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory()
    elif loaded == "tbbmalloc":
        ctypes.CDLL(None).scalable_allocation_command(0, None)  # TBBMALLOC_CLEAN_ALL_BUFFERS


def configure_cpu_allocator(mode: str) -> str:
    """Apply `speed.cpu_allocator` to this process; returns what was done (for the run log)."""
    if mode in PRELOADABLE:
        return f"{mode} (preloaded): freed blocks reused, little heap growth"
    if mode != "lean":
        return "glibc default (dynamic mmap threshold)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "lean allocator needs glibc (Linux); left as is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD) != 1:
        return "glibc refused the mmap threshold; left as is"
    return f"lean: fixed mmap threshold {LEAN_MMAP_THRESHOLD // 1024} KiB (freed tensors return to the OS)"
