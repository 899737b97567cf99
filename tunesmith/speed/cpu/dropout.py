"""Dropout whose random mask is cheap on a CPU.

Why by hand: on CPU, torch draws dropout's Bernoulli mask one Mersenne-Twister number per element, serially. For
LoRA (PEFT applies an `nn.Dropout` to the input of every adapted layer) that was 14% of a whole SmolLM2-135M
training step (torch profiler, batch 4 x 300 tokens, 120 dropout calls): more than the attention. torch has no
faster CPU generator (its counter-based Philox is CUDA-only), so the mask's random bits come from a counter-based
hash written here in vectorised int32 tensor ops (`_hash_words`): each element's 15 random bits are a function of a
key drawn from torch's default generator and the element's index, as GPU dropout's Philox draws are of a seed and
an offset. Its tensor ops run on every core; the whole mask takes about two thirds of the time of one `random_`
draw of the same bits (the previous version's generator), and forward plus backward is about 3x cheaper than
torch's dropout (`benchmarks/cpu_dropout.py`). A LoRA training step of SmolLM2-135M (4 x 380 tokens, bf16 autocast,
tcmalloc) ran 4-11% faster than with that previous version, in alternating same-process A/Bs.

The mask is made and applied without boolean tensors: on CPU torch's elementwise kernels that read or write `bool`
(comparisons, `where`, a multiply by a mask) ran 3-6x slower than the same pass over uint8 or float32 here (for
example `where(keep, x, 0)` 0.9 ms, `x * m` 0.2 ms for 875k elements). The keep mask is an integer sign trick on the
random bits stored as uint8 (saved for backward: 1 byte per element, as a boolean), and applied as a multiplier
in the input's dtype.

On a CPU where tunesmith's C++ kernels build (`native.py`), `dropout.cpp` makes the same mask (bit for bit) and
applies it in one vectorised pass per tensor, forward and backward: one dropout of a 4 x 380 x 576 float32 input,
forward and backward, 0.45 ms against these tensor ops' 1.15 ms and torch's 5.00 ms (`benchmarks/cpu_dropout.py`,
tcmalloc, 2 cores of an AMD EPYC; table in docs/benchmarks.md). Elsewhere (no compiler, under torch.compile, meta
tensors for the memory planner's trace, non-contiguous inputs) the tensor ops run; both keep the same uint8 mask for
backward, so the memory planner's trace holds for either.

What changes from nn.Dropout: the drop probability is p rounded to a multiple of 1/32768 (0.05 -> 0.049988), and
the kept values are scaled by 1 / (1 - that probability), so the output's expectation is still exactly the input.
A seeded run repeats (the key comes from torch's default generator, so gradient checkpointing's restored RNG state
replays the same masks). On a GPU torch's dropout is already cheap (Philox, boolean mask) and is left alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...models.layers import replace_modules
from .native import Kernel, compiler_problem

_BITS = 15  # random bits per element: 16-bit lanes of the hash words, the sign bit masked off
_LEVELS = 1 << _BITS
# lowbias32, from Chris Wellons' search for integer hashes with low avalanche bias: two multiply-xorshift rounds.
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - (1 << 32))  # as signed int32
_ROW = 1024
_KERNEL = Kernel(Path(__file__).with_suffix(".cpp"), [], lambda: compiler_problem())


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    # torch's >> on int32 is arithmetic; masking off the copied sign bits makes it the hash's logical shift.
    return z.bitwise_right_shift(k).bitwise_and_((1 << (32 - k)) - 1)


def _hash_words(count: int, key: torch.Tensor, device=None) -> torch.Tensor:
    """At least `count` pseudo-random int32 words: lowbias32 of (index * odd + offset), wrapping mod 2^32. The odd
    multiplier and the offset come from `key`, so two keys give unrelated sequences, not one shifted copy of the
    other. The indices are laid out as rows x 1024 and made by one broadcasting add of two short ranges (a full
    `arange` was a quarter of the hash's time). The key stays a tensor (int32 products wrap as the hash needs): as
    Python ints its random values would become constants that torch.compile guards on, one recompile per call."""
    key = key.to(device=device, dtype=torch.int32)
    multiplier, offset = key[0].bitwise_or(1), key[1]
    rows = -(-count // _ROW)
    starts = torch.arange(rows, dtype=torch.int32, device=device).mul_(multiplier * _ROW).add_(offset)
    columns = torch.arange(_ROW, dtype=torch.int32, device=device).mul_(multiplier)
    z = torch.add(starts[:, None], columns[None, :]).view(-1)
    for constant, shift in zip(_MULTIPLIERS, (16, 15)):
        z = z.bitwise_xor_(_shift_right(z, shift)).mul_(constant)
    return z.bitwise_xor_(_shift_right(z, 16))


def _draw_key() -> torch.Tensor:
    # Two signed int32 values from torch's default CPU generator: seeded runs and checkpoint replays repeat.
    return torch.randint(-(1 << 31), 1 << 31, (2,), dtype=torch.int64)


def _threshold(p: float) -> int:
    """An element drops when its 15 random bits are below this: p rounded to a multiple of 1/32768."""
    return round(p * _LEVELS)


def keep_mask(shape: torch.Size, p: float, device=None) -> tuple[torch.Tensor, float]:
    """(uint8 mask, 1 where an element is kept; the probability an element is dropped), 15 random bits each."""
    count = shape.numel()
    words = _hash_words((count + 1) // 2, _draw_key(), device)
    bits = words.view(torch.int16)[:count].view(shape).bitwise_and_(_LEVELS - 1)
    threshold = _threshold(p)
    # bits - threshold is negative exactly when the element drops; >> 15 gives -1 there and 0 elsewhere; + 1 is keep.
    keep = bits.sub_(threshold).bitwise_right_shift_(_BITS).add_(1).to(torch.uint8)
    return keep, threshold / _LEVELS


def load_kernel():
    """The compiled kernel (built on the first call in this process, from the cache after), or None; why not is in
    `kernel_failure()`."""
    return _KERNEL.load()


def kernel_failure() -> str | None:
    return _KERNEL.failure


class _KernelDropout(torch.autograd.Function):
    """The compiled path: mask drawn and applied in one pass, the uint8 mask saved for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        multiplier, offset = _draw_key().tolist()
        threshold = _threshold(p)
        ctx.scale = 1.0 / (1.0 - threshold / _LEVELS)
        out, keep = _KERNEL.module.forward(x, multiplier | 1, offset, threshold, ctx.scale)
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _KERNEL.module.backward(grad.contiguous(), keep, ctx.scale), None


def _kernel_takes(x: torch.Tensor) -> bool:
    return (_KERNEL.module is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous() and not torch.compiler.is_compiling())


class _ScaleKept(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _scale_kept(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _scale_kept(grad, keep, ctx.scale), None, None


def _scale_kept(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # The mask in x's dtype: a multiply that mixes dtypes (or reads a bool mask) runs torch's slow unvectorised path
    # on CPU. The scale comes after, as a scalar (computed in float32): a bf16 copy of 1 / (1 - p) would be rounded.
    return (x * keep.to(x.dtype)).mul_(scale)


class FastDropout(nn.Module):
    """nn.Dropout with the cheap mask above; identity in eval mode and for p = 0."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if _kernel_takes(x):
            return _KernelDropout.apply(x, self.p)
        keep, dropped = keep_mask(x.shape, self.p, x.device)
        return _ScaleKept.apply(x, keep, 1.0 / (1.0 - dropped))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain `nn.Dropout` with 0 < p < 1 in `model` (PEFT's LoRA dropouts, and the base model's own)
    by FastDropout; returns how many. Parameter-free modules: saved adapters and checkpoints are unchanged."""
    return replace_modules(model, lambda child: FastDropout(child.p)
                           if type(child) is nn.Dropout and 0 < child.p < 1 else None)
