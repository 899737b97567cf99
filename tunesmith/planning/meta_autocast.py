"""Autocast for the meta-device activation trace.

Why by hand: `torch.autocast` does not act on meta tensors (its dispatch keys exist for real devices only), so a
trace of an fp32 model that trains under bf16 autocast kept fp32 activations and missed the half-precision weight
copies autocast makes for every matmul and keeps for backward: frozen weights are not in autocast's cast cache, so
each layer holds its own copy (268 MiB for SmolLM2-135M; the plan was 16% short at sequence length 128).

Here a TorchFunctionMode casts the floating inputs of the functions autocast runs in half precision, as autocast
does, before they reach autograd: the casts are recorded, and what backward keeps is what training keeps. Which
functions autocast casts is asked of torch itself (on 2x2 CPU tensors), not copied from its C++ op lists; every
other op sees the dtypes those casts produce and promotes as it does in training.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _square(*shape: int) -> torch.Tensor:
    return torch.ones(*shape)


_SDPA = F.scaled_dot_product_attention
# The matmul family that transformer layers reach through torch's public API, with a call on small fp32 tensors.
_CANDIDATES = {
    F.linear: lambda: F.linear(_square(2, 2), _square(2, 2)),
    torch.matmul: lambda: torch.matmul(_square(2, 2), _square(2, 2)),
    torch.Tensor.matmul: lambda: _square(2, 2).matmul(_square(2, 2)),
    torch.Tensor.__matmul__: lambda: _square(2, 2) @ _square(2, 2),
    torch.mm: lambda: torch.mm(_square(2, 2), _square(2, 2)),
    torch.bmm: lambda: torch.bmm(_square(1, 2, 2), _square(1, 2, 2)),
    torch.addmm: lambda: torch.addmm(_square(2, 2), _square(2, 2), _square(2, 2)),
    torch.baddbmm: lambda: torch.baddbmm(_square(1, 2, 2), _square(1, 2, 2), _square(1, 2, 2)),
    _SDPA: lambda: _SDPA(
        _square(1, 1, 2, 2), _square(1, 1, 2, 2), _square(1, 1, 2, 2)),
}


@functools.cache
def autocast_functions(dtype: torch.dtype) -> frozenset:
    """The candidates whose output CPU autocast to `dtype` gives in `dtype`. CUDA's list casts the same matmul
    family; without a GPU here it is not asked."""
    cast = set()
    for func, call in _CANDIDATES.items():
        with torch.autocast("cpu", dtype=dtype):
            if call().dtype == dtype:
                cast.add(func)
    return frozenset(cast)


class MetaAutocast(TorchFunctionMode):
    """Within it, meta-tensor calls of `autocast_functions(dtype)` get their float32 tensor arguments cast to
    `dtype` first (autocast leaves float64 alone); other calls pass through unchanged."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.functions = autocast_functions(dtype)
        # The function itself, held since import: during the trace F's attribute is the trace's stand-in.
        self.casts_sdpa = _SDPA in self.functions

    def _cast(self, value):
        if isinstance(value, torch.Tensor) and value.device.type == "meta" and value.dtype == torch.float32:
            return value.to(self.dtype)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.functions:
            # The matmul family takes its tensors flat, as positional or keyword arguments.
            args = tuple(self._cast(a) for a in args)
            kwargs = {name: self._cast(value) for name, value in kwargs.items()}
        return func(*args, **kwargs)

    def cast_sdpa(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For the trace's stand-in for scaled_dot_product_attention, which calls its kernel directly."""
        if not self.casts_sdpa:
            return tensors
        return tuple(self._cast(t) for t in tensors)

