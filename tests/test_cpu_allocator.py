"""training.cpu_allocator: with `lean`, memory freed by torch goes back to the OS instead of staying in the heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tunesmith.training.cpu_memory import configure_cpu_allocator

# In a fresh process: raise glibc's dynamic threshold (free one 4 MiB mapping), then fill the heap with 512 KiB
# tensors, keep only the last one (it pins the heap top, so glibc cannot trim below it) and read the resident size.
PROBE = r"""
import sys, torch
from tunesmith.training.cpu_memory import configure_cpu_allocator
configure_cpu_allocator(sys.argv[1])
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = torch.zeros(4 << 20, dtype=torch.uint8)
del big
before = rss()
blocks = [torch.ones(512 << 10, dtype=torch.uint8) for _ in range(400)]
last = blocks[-1]
del blocks
print(rss() - before)
"""


def _retained(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_lean_allocator_returns_freed_tensors_to_the_os():
    assert configure_cpu_allocator("default").startswith("glibc default")  # "lean" only in the subprocess
    retained_default, retained_lean = _retained("default"), _retained("lean")
    # 400 x 512 KiB = 200 MiB were freed; glibc's default keeps them in the heap, lean returns them.
    assert retained_default > 150 << 20
    assert retained_lean < 20 << 20


def test_auto_goes_lean_only_when_memory_is_tight():
    from tunesmith.training.cpu_memory import DEFAULT_RETENTION, choose_cpu_allocator

    gib = 2 ** 30
    assert choose_cpu_allocator("auto", 4 * gib, 20 * gib) == "default"
    assert choose_cpu_allocator("auto", 4 * gib, 4 * DEFAULT_RETENTION * gib - 1) == "lean"
    assert choose_cpu_allocator("auto", None, 20 * gib) == "lean"  # no prediction: stay safe
    assert choose_cpu_allocator("lean", 1, 20 * gib) == "lean" and choose_cpu_allocator("default", 30 * gib, 1) == "default"
