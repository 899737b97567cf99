"""Activation memory, measured rather than guessed: one forward pass of the prepared model on the meta device
(no memory, no arithmetic) records every tensor autograd saves for the backward pass.

Hand formulas (e.g. Korthikanti et al. 2022, s*b*h*(34 + 5*a*s/h) per layer) fix one architecture, one attention
kernel and one method; tracing sees what this model, this method (LoRA dropout copies, DoRA's weight norms) and
this attention path really keep. Libraries lack this: accelerate's estimator counts weights only.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

from ..compat import no_packed_sequence_detection
from .meta_autocast import MetaAutocast


@dataclass
class ActivationTrace:
    per_block: list[int]     # bytes autograd keeps inside each transformer block
    outside: int             # embeddings, final norm, output projection input
    vocab: int               # batch x seq x vocabulary tensors kept for the loss (log-softmax output)
    block_input: int         # one block's input hidden state: all that checkpointing keeps per block
    vocab_size: int
    tokens: int
    head: int = 0            # what the output head keeps (its input, autocast's copy of its weight): part of outside

    def saved(self, checkpointing: bool) -> int:
        """Saved tensors alive when backward starts. With (non-reentrant) checkpointing only block inputs are
        kept, and one block's activations are rebuilt at a time during backward."""
        if checkpointing:
            return len(self.per_block) * self.block_input + max(self.per_block, default=0) + self.outside
        return sum(self.per_block) + self.outside


_ORIGINAL_SDPA = F.scaled_dot_product_attention  # torch's own, whatever a trace has patched in at the time


@functools.cache
def cpu_fused_sdpa_reads_shared_kv() -> bool:
    """Whether this torch's CPU SDPA runs grouped-query attention (`enable_gqa`) in its fused kernel, reading the
    shared key/value heads in place. torch 2.9 and later do; 2.8 fell back to the math path, which saves the attention
    matrix. Asked of torch itself, on a two-token problem, rather than read off a version number."""
    query = torch.zeros(1, 2, 2, 8, requires_grad=True)
    shared = torch.zeros(1, 1, 2, 8)
    with torch.autocast("cpu", enabled=False):
        out = _ORIGINAL_SDPA(query, shared, shared, is_causal=True, enable_gqa=True)
    return "FlashAttention" in type(out.grad_fn).__name__


def _fused_sdpa(device_type: str, autocast: MetaAutocast | None):
    """On meta tensors PyTorch's SDPA falls back to the math path, which saves the b*h*s*s attention matrix. On
    real CPUs and GPUs it dispatches to a fused flash-style kernel that keeps only q, k, v, the output and the
    log-sum-exp; route meta calls to that kernel (its meta implementation) so the trace saves what reality does.
    Under (meta) autocast q, k and v are cast first, as autocast casts them for SDPA."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta":
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        if autocast is not None:
            query, key, value = autocast.cast_sdpa(query, key, value)
        grouped = enable_gqa and key.shape[-3] != query.shape[-3]
        if grouped and device_type == "cpu" and not cpu_fused_sdpa_reads_shared_kv():
            # This torch's CPU kernel would take the math path too: trace that, as the real forward runs it.
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=True)
        # Grouped-query attention: the fused kernel reads the shared key/value heads in place (no expanded copy
        # is saved), and so does its meta implementation.
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
        return out[0]

    return mock.patch.object(F, "scaled_dot_product_attention", sdpa)


class _Frozen4bitMatmul(torch.autograd.Function):
    """Stands in for bitsandbytes' MatMul4Bit on meta tensors: like it, it keeps nothing but the (already counted)
    packed weight for backward; it only has to produce tensors of the right shape."""

    @staticmethod
    def forward(ctx, x, out_features: int):
        ctx.in_features = x.shape[-1]
        return x.new_empty(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad):
        return grad.new_empty(*grad.shape[:-1], ctx.in_features), None


def _meta_4bit_linear():
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return contextlib.nullcontext()
    original = Linear4bit.forward

    def forward(self, x):
        if x.device.type != "meta":
            return original(self, x)
        out = _Frozen4bitMatmul.apply(x, self.out_features)
        return out + self.bias if self.bias is not None else out

    return mock.patch.object(Linear4bit, "forward", forward)


def trace_activations(model, batch: int, seq: int, *, device_type: str = "cpu",
                      autocast_dtype: torch.dtype | None = None) -> ActivationTrace:
    """What autograd saves in one training forward of `model` at (batch, seq); `autocast_dtype`: the half
    precision training's autocast computes in (None or float32: no autocast)."""
    from ..models.layers import transformer_blocks

    params = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
    head_module = model.get_output_embeddings()
    weight = getattr(head_module, "weight", None)
    vocab_size = weight.shape[0] if weight is not None else getattr(model.config, "vocab_size", 0)
    saved: dict[StorageWeakRef, tuple[int | None, int, bool]] = {}
    state = {"block": None, "input": 0}

    def pack(tensor):
        if tensor.device.type == "meta":
            ref = StorageWeakRef(tensor.untyped_storage())
            if ref not in params and ref not in saved:
                saved[ref] = (state["block"], tensor.untyped_storage().nbytes(),
                              tensor.dim() > 0 and tensor.shape[-1] == vocab_size)
        return tensor

    def enter(index):
        def hook(module, args, kwargs):
            state["block"] = index
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                state["input"] = hidden.numel() * hidden.element_size()
        return hook

    def leave(module, args, output):
        state["block"] = None

    _, blocks = transformer_blocks(model)
    handles = [b.register_forward_pre_hook(enter(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave) for b in blocks]
    if head_module is not None:
        handles += [head_module.register_forward_pre_hook(lambda module, args: state.update(block="head")),
                    head_module.register_forward_hook(leave)]
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    was_training = model.training
    model.train()
    output = None
    autocast = MetaAutocast(autocast_dtype) if autocast_dtype not in (None, torch.float32) else None
    try:
        with _fused_sdpa(device_type, autocast), no_packed_sequence_detection(), _meta_4bit_linear(), \
                autocast or contextlib.nullcontext(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), contextlib.suppress(StopIteration):
            output = model(input_ids=ids, attention_mask=None, labels=ids)
        # With the output held, a saved tensor whose storage is already gone belonged to a side graph the loss does
        # not depend on (DoRA builds its LoRA weight from an identity matrix for a detached norm): it is freed
        # before backward starts and takes no memory at the peak.
        alive = {ref for ref in saved if not ref.expired()}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    del output
    per_block = [0] * len(blocks)
    outside = vocab = head = 0
    for ref, (block, nbytes, is_vocab) in saved.items():
        if ref not in alive:
            continue
        if block == "head":
            head += nbytes
            outside += nbytes
        elif block is not None:
            per_block[block] += nbytes
        elif is_vocab:
            vocab += nbytes
        else:
            outside += nbytes
    return ActivationTrace(per_block, outside, vocab, state["input"], vocab_size, batch * seq, head)
