"""Padding-free attention on CUDA through torch's own varlen FlashAttention (`speed.switches.gpu_varlen_attention`).

Why: packed rows (`data.packing`) cost no padding only if attention computes each packed sample alone. transformers
does that through the flash-attn package or a hub kernel, which a machine often lacks (flash-attn is built from
source; the hub may be out of reach); its SDPA path computes each packed row's whole square under a block-diagonal
mask. torch ships FlashAttention's varlen kernel itself (`torch.nn.attention.varlen.varlen_attn`), which transformers
does not call, so this module registers it with transformers' `AttentionInterface` (its public extension point)
under its own name, as `cpu/causal_attention.py` does for the CPU.

It takes causal self-attention on CUDA in bf16 or fp16 (the autocast dtype), queries as long as the keys (training:
no cache), no dropout, soft-capping, sliding window or position bias:
- packed rows (no mask): the samples start where the position ids restart (transformers' own rule), or where a
  collator's `cu_seq_lens_q` says;
- padded rows: the 2-D padding mask names each row's tokens (FlashAttention's unpadding);
- rows that are one sequence each: SDPA with `is_causal`, which is FlashAttention already.
Any other call goes to transformers' SDPA function with the mask that SDPA would have had, so a run is never wrong,
only slower; the run log says when the kernel is missing.
"""

from __future__ import annotations

import inspect
import math
import weakref
from functools import lru_cache

import torch

from ..compat import attention_implementation
from .packed_rows import packed_causal_mask, segments_from_positions

NAME = "tunesmith_varlen"
DEVICES = ("cuda",)  # where the kernel runs; tests add "cpu" with a reference kernel in `_kernel`


def _kernel():
    """torch's varlen FlashAttention, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def unavailable_reason() -> str | None:
    """Why the varlen path cannot run here, or None."""
    if _kernel() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if "cuda" in DEVICES and not torch.cuda.is_available():
        return "no CUDA GPU"
    if "cuda" in DEVICES and torch.cuda.get_device_capability()[0] < 8:
        return "FlashAttention needs a GPU of compute capability 8.0 or newer"
    return None


@lru_cache(maxsize=None)
def _call_style(kernel) -> tuple[str, bool, bool]:
    """How this torch's varlen_attn asks for causality, grouped-query heads and a scale: its signature changed
    between releases (`is_causal` became `window_size`; `enable_gqa` and `scale` were added)."""
    params = inspect.signature(kernel).parameters
    causal = "window_size" if "window_size" in params else "is_causal"
    return causal, "enable_gqa" in params, "scale" in params


def _varlen(query, key, value, cu_seqlens, max_len: int, scale: float) -> torch.Tensor:
    """[tokens, heads, head_dim] in, the same out: each segment of `cu_seqlens` attends causally within itself."""
    kernel = _kernel()
    causal, gqa, takes_scale = _call_style(kernel)
    kwargs = {"window_size": (-1, 0)} if causal == "window_size" else {"is_causal": True}
    if query.shape[1] != key.shape[1]:
        if gqa:
            kwargs["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if takes_scale:
        kwargs["scale"] = scale
    elif not math.isclose(scale, 1 / math.sqrt(query.shape[-1])):
        query = query * (scale * math.sqrt(query.shape[-1]))  # the kernel's own scale is 1/sqrt(head_dim)
    return kernel(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


class _PackedSegments:
    """The samples of packed rows (`packed_rows.py`) as varlen FlashAttention takes them: their segments, the
    cumulative offsets on the rows' device and the longest; None where no row restarts. transformers hands every
    layer the same position-id tensor, so the answer (one device-to-host copy) is kept for the last tensor seen, by
    identity."""

    def __init__(self):
        self._positions = lambda: None
        self._answer = None

    def __call__(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        if self._positions() is not position_ids:
            self._positions, self._answer = weakref.ref(position_ids), self._find(position_ids)
        return self._answer

    @staticmethod
    def _find(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        segments = segments_from_positions(position_ids)
        if len(segments) == position_ids.shape[0]:  # no restart inside a row: one sequence per row
            return None
        lengths = segments[:, 2]
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(device=position_ids.device, dtype=torch.int32)
        return segments, cu, int(lengths.max())


_packed_segments = _PackedSegments()


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    kind = query.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else query.dtype


def _takes(module, query, key, attention_mask, dropout, kwargs) -> bool:
    window = kwargs.get("sliding_window")
    return (query.device.type in DEVICES and _kernel() is not None and not torch.compiler.is_compiling()
            and getattr(module, "is_causal", True) and kwargs.get("is_causal") is not False
            and kwargs.get("position_bias") is None and not dropout and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions") and (window is None or window >= key.shape[2])
            and query.shape[2] == key.shape[2] and query.shape[1] % key.shape[1] == 0
            and (attention_mask is None or attention_mask.dim() == 2)
            and _compute_dtype(query) in (torch.bfloat16, torch.float16))


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: [batch, heads, length, head_dim] in, [batch, length, heads,
    head_dim] out. Varlen FlashAttention where it computes exactly this call; SDPA otherwise."""
    scale = scaling if scaling is not None else 1 / math.sqrt(query.shape[-1])
    position_ids = kwargs.get("position_ids")
    if _takes(module, query, key, attention_mask, dropout, kwargs):
        batch, heads, length, dim = query.shape
        dtype = _compute_dtype(query)
        rows = [t.transpose(1, 2).to(dtype).reshape(batch * length, t.shape[1], dim) for t in (query, key, value)]
        if attention_mask is not None:  # padded rows: only each row's real tokens
            keep = attention_mask.flatten().bool()
            index = keep.nonzero().flatten()
            lengths = attention_mask.sum(dim=1, dtype=torch.int32)
            cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            out = _varlen(*(t.index_select(0, index) for t in rows), cu, int(lengths.max()), scale)
            full = out.new_zeros(batch * length, heads, dim).index_copy(0, index, out)
            return full.view(batch, length, heads, dim), None
        packed = _given_segments(kwargs)
        if packed is None and isinstance(position_ids, torch.Tensor) and position_ids.shape == (batch, length):
            found = _packed_segments(position_ids)
            packed = found and found[1:]  # the offsets and the longest
        if packed is not None:
            out = _varlen(*rows, *packed, scale)
            return out.view(batch, length, heads, dim), None
    return _sdpa(module, query, key, value, attention_mask, dropout, scaling, position_ids, kwargs)


def _given_segments(kwargs) -> tuple[torch.Tensor, int] | None:
    """A collator's own segment boundaries (transformers' flash-attention keyword arguments)."""
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    return None if cu is None or longest is None else (cu.to(torch.int32), int(longest))


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, position_ids, kwargs):
    """transformers' SDPA function with the mask it would have made: the causal mask over each row, of each packed
    sample (from the position ids), or within a row's real tokens (from the 2-D padding mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask
    length = query.shape[2]
    if mask is None and isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 \
            and query.shape[2] == key.shape[2]:
        batch = query.shape[0]
        # The same tensor every layer gets (the cache is by identity), unless its rows must be repeated.
        found = _packed_segments(position_ids if position_ids.shape[0] == batch else position_ids.expand(batch, -1))
        if found is not None:
            mask = packed_causal_mask(found[0], batch, length).to(query.device)[:, None]
    elif mask is not None and mask.dim() == 2:
        causal = torch.ones(length, key.shape[2], dtype=torch.bool, device=query.device).tril(key.shape[2] - length)
        mask = mask.bool()[:, None, None, :] & causal
    kwargs = {k: v for k, v in kwargs.items() if k != "is_causal"}
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                  is_causal=mask is None and length > 1, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, attention_forward)
    # FlashAttention's masks: none for packed or unpadded rows, the 2-D padding mask otherwise (no L x L tensor).
    AttentionMaskInterface.register(NAME, flash_attention_mask)


def use_varlen_attention(model: torch.nn.Module) -> str | None:
    """Switch a model that attends with SDPA to varlen FlashAttention; returns the implementation it had (to give
    back with `restore_attention`), or None if nothing changed (not SDPA, or no kernel here)."""
    before = attention_implementation(model.config)
    if before != "sdpa" or unavailable_reason() is not None:
        return None
    _register()
    model.set_attn_implementation(NAME)
    return before
