"""tunesmith's C++ CPU kernels (`causal_attention.cpp`, `dropout.cpp`): built on first use with torch's C++
extension builder and cached.

Why compiled: each does in one pass over memory what torch's CPU ops need many passes (or twice the arithmetic) for,
and nothing in torch or the libraries it builds on offers it (each source file says why). The build needs a C++
compiler and ninja and takes about 25 s per kernel, once: it is cached under the tunesmith cache root, keyed by the
source, the torch version and this CPU's features (it compiles with -march=native, so a cache shared between
machines must not hand one CPU another's instructions). Where a kernel cannot be built, its caller falls back to
torch ops and says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


def platform_problem() -> str | None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for Linux x86-64 only (this is {platform.system()} {platform.machine()})"
    return None


def compiler_problem() -> str | None:
    """Why no kernel can be built here, or None."""
    problem = platform_problem()
    if problem is not None:
        return problem
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found (install g++)"
    if shutil.which("ninja") is None:
        return "ninja not found (install ninja-build, or pip install ninja into the PATH)"
    return None


class Kernel:
    """One compiled kernel of a module: built at most once per process, on the first `load()`. `problem` says why it
    cannot be used on this machine (None: build it); `failure` holds that reason or the build's error."""

    def __init__(self, source: Path, cflags: list[str], problem: Callable[[], str | None]):
        self.source, self.cflags, self.problem = source, cflags, problem
        self.module = None
        self.failure: str | None = None

    def load(self):
        """The compiled extension, or None (why: `failure`)."""
        if self.module is None and self.failure is None:
            self.failure = self.problem()
            if self.failure is None:
                self.module, self.failure = build(self.source, self.cflags)
        return self.module


# A build takes about 25 s (minutes on a loaded machine); a lock this old was left by a build that was killed.
STALE_LOCK_S = 15 * 60


def clear_stale_lock(folder: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build lock a killed build left behind. Why by hand: torch's builder waits on that file (its
    FileBaton) without end, so one interrupted first build would hang every later run. Returns whether it did."""
    import time

    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s:
        return False
    lock.unlink(missing_ok=True)
    log.warning("removed a stale kernel build lock (%s, %.0f min old: an interrupted build)", lock, age / 60)
    return True


def build(source: Path, cflags: list[str]):
    """(the compiled extension, None) or (None, why not). Built once per source, torch and CPU; loaded from the
    cache after. The caller checks `compiler_problem()` first."""
    from torch.utils.cpp_extension import load

    from ...hardware import cpu_flags
    from ...models.pypi_models import default_cache_root

    machine = " ".join([torch.__version__, *cpu_flags(), *cflags]).encode()
    name = f"tunesmith_{source.stem}_{hashlib.sha256(source.read_bytes() + machine).hexdigest()[:12]}"
    folder = default_cache_root() / "kernels" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(folder)
        return load(name=name, sources=[str(source)], build_directory=str(folder),
                    extra_cflags=["-O3", "-march=native", "-fopenmp", *cflags], extra_ldflags=["-fopenmp"],
                    verbose=False), None
    except Exception as error:  # no cache folder, a compiler or a linker problem: the caller uses torch ops
        last_line = (str(error).strip().splitlines() or [""])[-1][:200]
        failure = f"could not be built ({type(error).__name__}: {last_line})"
        log.warning("%s kernel %s", source.stem, failure)
        return None, failure
