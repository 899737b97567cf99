"""Frozen base weights held in the autocast dtype while adapters train on CPU (`speed.switches.half_frozen_base`).

Under bf16 autocast every matmul rounds its fp32 weight to bf16. For a frozen weight autocast makes that copy at
each forward (its cache keeps only leaf tensors that require grad) and autograd keeps it for backward, so at the
top of backward a bf16 twin of every frozen matrix is alive beside the fp32 original. Holding the frozen
`nn.Linear` weights in bf16 gives the same matmuls bit for bit (they are the values autocast would have made),
halves their storage and keeps no twins: SmolLM2-135M LoRA at 4 x 512 tokens peaked ~400 MiB lower.

Where it applies (`frozen_linear_dtype`): CPU, half-precision autocast, an fp32 base, and a method whose artifact
never holds the base (PEFT adapters, bottleneck adapters, hybrid; not full or freeze fine-tuning) and whose frozen
weights enter nothing but their own layer's matmul (`Method.frozen_weights_in_matmuls_only`; DoRA also reads them for its weight norm). On a GPU a PEFT base
is already loaded in the compute dtype (`models.loading.training_load_dtype`).

After training the weights go back to fp32 (`release`), with the values training multiplied with, because inference
and evaluation may run without autocast, where an fp32 input cannot meet a bf16 weight.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch


def frozen_linear_dtype(method, compute_dtype: torch.dtype, *, cuda: bool, enabled: bool = True) -> torch.dtype | None:
    """The dtype frozen linear weights are held in during training, or None to leave them as loaded. On CPU
    training loads the base in fp32 (`models.loading.training_load_dtype`); only fp32 weights are held."""
    if not enabled or cuda or compute_dtype == torch.float32 or method.artifact == "full":
        return None
    return compute_dtype if method.frozen_weights_in_matmuls_only else None


def hold_for_training(model: torch.nn.Module, method, compute_dtype: torch.dtype, *, cuda: bool,
                      enabled: bool = True) -> list[torch.nn.Linear]:
    """`hold_frozen_linears` where `frozen_linear_dtype` says it applies (training, the planner and the benchmarks
    all call this, so they hold the same weights); returns the layers changed."""
    dtype = frozen_linear_dtype(method, compute_dtype, cuda=cuda, enabled=enabled)
    return hold_frozen_linears(model, dtype) if dtype is not None else []


def _head_and_embedding_weights(model) -> set[int]:
    # The output head stays in the loaded dtype: the chunked loss casts it once for the run, and it is often the
    # input embedding too (tied), which must not round the residual stream.
    found = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        module = getattr(model, getter)() if hasattr(model, getter) else None
        if getattr(module, "weight", None) is not None:
            found.add(id(module.weight))
    return found


def hold_frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.nn.Linear]:
    """Store every frozen fp32 `nn.Linear` weight of `model` in `dtype`; returns the layers changed.

    The other frozen tensors that lie in a mapped checkpoint are copied out of it: transformers maps a checkpoint
    stored in the load dtype and its tensors alias that mapping, which stays resident as long as any one of them
    still points into it. And each original's pages are let go as soon as its copy exists (`_MappedPages`): every
    page the cast reads stays resident until the mapping goes, so a 360M-parameter model's hold peaked at 2.8 GB,
    above its training."""
    keep = _head_and_embedding_weights(model)
    held = [module for module in model.modules()
            if type(module) is torch.nn.Linear and not module.weight.requires_grad
            and module.weight.dtype == torch.float32 and id(module.weight) not in keep]
    mapped = _MappedPages()
    _store_weights(held, dtype, mapped)
    if held:
        for param in model.parameters():
            if not param.requires_grad and mapped.holds(param.data):
                original = param.data
                param.data = original.clone()  # the Parameter object (and any tie to it) stays the same
                mapped.let_go(original)
    return held


class _MappedPages:
    """Drops from this process the pages of a tensor that lies in a file mapping (a checkpoint), once the tensor is
    no longer used. Why by hand: neither torch nor safetensors unmaps part of a mapping, and its pages count in the
    process's memory until all of it goes. madvise(MADV_DONTNEED) on a file's pages only drops them (they would be
    read again from the file), and only pages wholly inside the tensor are touched, so no other tensor's are.
    Linux only (/proc/self/maps); elsewhere nothing is dropped."""

    MADV_DONTNEED = 4

    def __init__(self):
        self.ranges: list[tuple[int, int]] | None = None  # read at the first CPU tensor (the planner's are meta)

    def _read_maps(self) -> list[tuple[int, int]]:
        self.ranges = []
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
            self.madvise = ctypes.CDLL(None, use_errno=True).madvise
            self.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            return self.ranges
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and fields[4] != "0":  # backed by a file
                start, end = (int(x, 16) for x in fields[0].split("-"))
                self.ranges.append((start, end))
        self.page = os.sysconf("SC_PAGE_SIZE")
        return self.ranges

    def _extent(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        """The tensor's bytes when they lie in a file mapping (the planner's meta tensors, and copies, do not)."""
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            return None
        if not (self.ranges if self.ranges is not None else self._read_maps()):
            return None
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        return (start, end) if any(low <= start and end <= high for low, high in self.ranges) else None

    def holds(self, tensor: torch.Tensor) -> bool:
        return self._extent(tensor) is not None

    def let_go(self, tensor: torch.Tensor) -> None:
        extent = self._extent(tensor)
        if extent is None:
            return
        start, end = extent
        first = -(-start // self.page) * self.page
        last = end // self.page * self.page
        if last > first:
            self.madvise(first, last - first, self.MADV_DONTNEED)


def release(held: list[torch.nn.Linear]) -> None:
    """Back to fp32 after training (the values are those training used)."""
    _store_weights(held, torch.float32)


def _store_weights(layers: list[torch.nn.Linear], dtype: torch.dtype, mapped: _MappedPages | None = None) -> None:
    """Give each layer a frozen copy of its weight in `dtype`; the originals' mapped pages are let go."""
    replaced = {}
    for module in layers:
        weight = module.weight
        if id(weight) not in replaced:  # a weight shared by two layers stays one tensor
            replaced[id(weight)] = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            if mapped is not None:
                mapped.let_go(weight)
        module.weight = replaced[id(weight)]
