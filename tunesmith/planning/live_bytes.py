"""The peak of memory a piece of library code allocates, found by running it on fake tensors (no data, no
arithmetic) and counting the storages its operators create while they are alive.

Used where a library's working set is too intricate to restate as a formula that stays true across its versions:
TRL's fused log-prob head on CPU (planning/preference.py) keeps a changing set of full-tile fp32 temporaries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_leaves

from ..compat import dispatch_mode


class _LiveBytes(dispatch_mode()):
    """After every operator: add the storages of its outputs, drop those no longer referenced, keep the maximum."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                self.live.setdefault(ref.cdata, (ref, storage.nbytes()))
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


def peak_allocated(fn: Callable[[], object]) -> int:
    """Bytes of the storages `fn` creates that are alive at once, at most (its inputs not counted). Call it inside
    `compat.fake_cpu_tensors()` with fake inputs: nothing is allocated for real."""
    mode = _LiveBytes()
    with mode:
        fn()
    return mode.peak
