"""Causal attention for bf16 CPU training that skips the masked half of the score square
(`speed.switches.cpu_causal_attention`).

Why: below 512 keys torch's CPU flash-attention kernel computes one key block as wide as the sequence, so a causal
mask only masks: the whole square is computed forward and backward (docs/benchmarks.md, "A second machine"). No
library offers a CPU attention that skips it (FlexAttention has no CPU backward), so `causal_attention.cpp` does:
query blocks of 64 rows, each against the keys up to its last row, through torch's own `cpublas::brgemm` (oneDNN's
bf16 micro-kernel). SmolLM2-135M's attention (4 x 9 query heads over 3 key/value heads, head dim 64), forward and
backward: 0.38-0.47x SDPA's time from 128 to 512 tokens on an AVX512-BF16 EPYC, and on packed rows 0.12-0.20x SDPA's
with their block-diagonal mask (`benchmarks/cpu_attention.py`).
For CPUs with AVX512-BF16 and without AMX (see `build_problem`); elsewhere attention stays on SDPA.

It is compiled on first use (`native.py`: a C++ compiler and ninja are needed; about 25 s, once, cached). It is
registered with transformers' `AttentionInterface` under its own name and takes only what it computes exactly: a causal
self-attention with no mask (the padding mask is dropped for right-padded batches, `padding_mask.py`) or with the
block-diagonal causal mask of packed rows (`data.packing`: recognised from the position ids and checked against the
mask; each sample becomes a segment of the kernel, attending only to itself: varlen attention), no dropout,
soft-capping, sliding window or position bias, queries as long as the keys, in bf16 (the autocast dtype). Any other
call (left padding, generation with a cache, fp32) goes to transformers' SDPA function unchanged. Where the kernel
cannot be built, training runs on SDPA and says so.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from ...compat import attention_implementation
from ..packed_rows import packed_causal_mask, segments_from_positions
from .native import Kernel, compiler_problem, platform_problem

NAME = "tunesmith_cpu_causal"
_sdpa_only = False


def build_problem() -> str | None:
    """Why the kernel cannot be used here, or None."""
    from ...hardware import native_bf16_cpu

    problem = platform_problem()
    if problem is not None:
        return problem
    unit = native_bf16_cpu()
    if unit != "avx512_bf16":
        # On AMX oneDNN's micro-kernel wants its own packed operand layout, which the kernel does not write (and
        # no AMX machine was at hand to measure it); CPUs without native bf16 train in fp32 under `auto`.
        return f"for CPUs with AVX512-BF16 and without AMX (this CPU: {unit or 'no native bf16'})"
    return compiler_problem()


# -ffast-math lets the softmax's exp vectorise (glibc declares its SIMD variants only under it).
_KERNEL = Kernel(Path(__file__).with_suffix(".cpp"), ["-ffast-math"], lambda: build_problem())


def load_kernel():
    """The compiled extension (built on first call in this process, from the cache after), or None; the reason for
    None is in `kernel_failure()`."""
    return _KERNEL.load()


def kernel_failure() -> str | None:
    return _KERNEL.failure


class CausalAttention(torch.autograd.Function):
    """softmax(q k^T * scale + causal mask) v for bf16 [batch, heads, length, head_dim] inputs (key/value heads may
    be fewer, grouped-query) within each segment (`segments`: int64 [S, 3] of batch row, start, length, tiling
    every row); returns [batch, length, heads, head_dim]."""

    @staticmethod
    def forward(ctx, query, key, value, scale: float, segments: torch.Tensor):
        out, lse = _KERNEL.module.forward(query, key, value, scale, segments)
        ctx.save_for_backward(query, key, value, out, lse, segments)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, segments = ctx.saved_tensors
        dq, dk, dv = _KERNEL.module.backward(grad_out, query, key, value, out, lse, ctx.scale, segments)
        return dq, dk, dv, None, None


def whole_rows(batch: int, length: int) -> torch.Tensor:
    """The segments of a batch whose rows are one sequence each."""
    return torch.stack([torch.arange(batch), torch.zeros(batch, dtype=torch.long),
                        torch.full((batch,), length)], dim=1)


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     scale: float | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel on bf16 tensors (needs `load_kernel()` to have succeeded); each row one sequence unless
    `segments` splits the rows into packed samples."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    tensors = [t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value)]
    segments = whole_rows(query.shape[0], query.shape[2]) if segments is None else segments
    return CausalAttention.apply(*tensors, scale, segments)


class _PackedMasks:
    """Whether a 4-D mask is exactly the block-diagonal causal mask of packed rows' position ids, and their segments
    if so. transformers builds that mask once per forward and hands the same tensor to every layer, so the answer is
    kept for the last mask seen (checked by identity; a weak reference, so the mask is not kept alive)."""

    def __init__(self):
        self._mask = lambda: None
        self._positions = None
        self._segments = None

    def segments(self, mask: torch.Tensor, position_ids) -> torch.Tensor | None:
        if self._mask() is mask and self._positions is position_ids:
            return self._segments
        self._mask, self._positions = weakref.ref(mask), position_ids
        self._segments = self._check(mask, position_ids)
        return self._segments

    @staticmethod
    def _check(mask: torch.Tensor, position_ids) -> torch.Tensor | None:
        if (not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or mask.dtype != torch.bool
                or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]
                or position_ids.shape[-1] != mask.shape[-1] or position_ids.shape[0] not in (1, mask.shape[0])):
            return None
        batch, length = mask.shape[0], mask.shape[-1]
        segments = segments_from_positions(position_ids.expand(batch, length))
        return segments if torch.equal(mask[:, 0].cpu(), packed_causal_mask(segments, batch, length)) else None


_packed_masks = _PackedMasks()


@contextmanager
def sdpa_only():
    """Calls inside go to SDPA: for checks that compare the model with and without a mask, which must compare the
    model, not SDPA with this kernel (their bf16 roundings differ)."""
    global _sdpa_only
    before, _sdpa_only = _sdpa_only, True
    try:
        yield
    finally:
        _sdpa_only = before


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype | None:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else None


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, position_bias=None, **kwargs):
    """transformers' attention-function signature: the kernel where it computes exactly this call, SDPA otherwise."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = kwargs.get("sliding_window")
    # torch.compile cannot trace the extension (a pybind function, not a registered op): it would break the graph at
    # every layer and recompile until its limit; compiled code attends through SDPA.
    if (_KERNEL.module is not None and not _sdpa_only and not torch.compiler.is_compiling() and causal
            and position_bias is None and not dropout
            and kwargs.get("softcap") is None and not kwargs.get("output_attentions")
            and (window is None or window >= key.shape[2]) and query.device.type == "cpu"
            and query.shape[2] == key.shape[2] > 1 and query.shape[1] % key.shape[1] == 0
            and _compute_dtype(query, key, value) == torch.bfloat16):
        # No mask: causal over whole rows. A mask: only packed rows' block-diagonal one (varlen attention).
        segments = (None if attention_mask is None
                    else _packed_masks.segments(attention_mask, kwargs.get("position_ids")))
        if attention_mask is None or segments is not None:
            with torch.autocast("cpu", enabled=False):
                tensors = (t.to(torch.bfloat16) for t in (query, key, value))
                return causal_attention(*tensors, scaling, segments), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets: none where causal alone suffices


def use_causal_attention_kernel(model: torch.nn.Module) -> str | None:
    """Switch a model that attends with SDPA to the kernel; returns the attention implementation it had (to give
    back with `restore_attention`) or None if nothing changed (not SDPA, or the kernel cannot be built)."""
    before = attention_implementation(model.config)
    if before != "sdpa" or load_kernel() is None:
        return None
    _register()
    model.set_attn_implementation(NAME)
    return before


def restore_attention(model: torch.nn.Module, implementation: str | None) -> None:
    if implementation is not None:
        model.set_attn_implementation(implementation)
