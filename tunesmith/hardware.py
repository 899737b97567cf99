"""Facts about the machine a run is on: CPUs this process may use, physical cores, native bf16 units, GPU devices."""

from __future__ import annotations

import glob
import os
import platform
from pathlib import Path


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads share one core's vector units, so more torch
    threads than physical cores only add contention."""
    available = usable_cpus()
    try:
        import psutil  # a dependency of accelerate

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(available, physical))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty off Linux)."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    return next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])


def native_bf16_cpu(cpuinfo: str | None = None) -> str | None:
    """The CPU flag that makes bf16 matmuls fast (AMX or AVX512-BF16), or None (also off Linux)."""
    flags = cpu_flags(cpuinfo)
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its native bf16 unit, e.g. "AMD EPYC (avx512_bf16)", for benchmark conditions: speed
    ratios move between CPU families (AMX, AVX512-BF16, neither), so a table names the one it ran on."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                "") or platform.processor() or platform.machine()
    return f"{name} ({native_bf16_cpu(cpuinfo) or 'no native bf16'})"


def gpu_device_visible() -> bool:
    """Whether an NVIDIA or ROCm device node exists, without importing torch (the tcmalloc restart runs first)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")
