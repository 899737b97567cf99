"""The LM head and its cross-entropy over chunks of tokens, with the gradients computed on the way.

Why by hand: the plain loss of a causal LM materialises tokens x vocabulary logits in fp32, keeps their
log-softmax for backward and, at the top of backward, holds two more gradients of that size. For SmolLM2-135M
(49k vocabulary) at 4 x 512 tokens that is about 1 GiB, the largest tensors of a LoRA step. Liger's fused linear
cross-entropy avoids it with Triton kernels (CUDA only; used when `speed.loss` is liger); nothing does on
CPU. Here the head and the loss run over chunks of tokens, and each chunk's logit gradient (softmax minus one-hot)
becomes the hidden-state gradient (and the head's weight gradient, when the head trains) at once, so only one
chunk's logits ever exist. The FLOPs are the plain path's (nothing is recomputed); under autocast every matmul runs
in the dtype autocast would give it, and a frozen head's weight is cast once for the whole run (`FrozenCast`) rather
than once per chunk or step.
"""

from __future__ import annotations

import torch

#: Logit elements per chunk on CPU: 16M (64 MiB in fp32), e.g. 341 tokens of a 49k vocabulary. Each chunk reads the
#: whole head weight twice, so smaller chunks cost speed (170 tokens: +10% for the head and loss on CPU).
CHUNK_ELEMENTS = 1 << 24
#: On a GPU: 64M (256 MiB in fp32, 512 tokens of a 128k vocabulary), in whole tiles of cuBLAS's 128 rows. The CPU size
#: gave 130 rows for Llama-3's vocabulary, two row tiles of which one is nearly empty, so the head's matmuls did about
#: twice their work (benchmarks/head_loss.py measures the sizes against each other, HF's loss and Liger's).
CUDA_CHUNK_ELEMENTS, CUDA_ROW_TILE = 1 << 26, 128


def chunk_tokens(vocab_size: int, device_type: str = "cpu") -> int:
    """Tokens per chunk for a head of `vocab_size` rows on a device of `device_type` ("cpu", "cuda", ...)."""
    vocab_size = max(vocab_size, 1)
    if device_type != "cuda":
        return max(1, CHUNK_ELEMENTS // vocab_size)
    rows = CUDA_CHUNK_ELEMENTS // vocab_size
    return rows // CUDA_ROW_TILE * CUDA_ROW_TILE or max(1, rows)


def head_compute_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """What autocast runs the head's matmul in: `dtype` (or the ambient autocast's) over fp32 weights, else the
    weights' own dtype."""
    if weight.dtype != torch.float32:
        return weight.dtype
    device = weight.device.type
    if dtype is None and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    return dtype or weight.dtype


class FrozenCast:
    """A frozen weight's copy in the compute dtype, made once and reused while the weight stays unchanged.

    Why: autocast's own cache keeps only weights that require grad and lives for one forward, so a frozen head
    (usually tied to the input embedding, which must stay fp32) was cast at every step: 49k x 576 for SmolLM2, ~30 ms
    a step on 2 CPU cores. The copy is alive at the loss either way, where the step peaks, so keeping it adds nothing
    to the peak. A weight that trains, or is already in the compute dtype, gets no copy (None: cast per call)."""

    def __init__(self):
        self._key, self._copy = None, None

    def get(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if weight.requires_grad or weight.dtype == dtype:
            return None
        # _version counts in-place writes (loading a state dict, a manual edit): a changed weight is cast again.
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.device, dtype)
        if key != self._key:
            self._key, self._copy = None, None  # the old copy goes before the new one exists
            self._copy = weight.detach().to(dtype)
            self._key = key
        return self._copy

    def clear(self) -> None:
        self._key, self._copy = None, None


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, out: torch.Tensor) -> torch.Tensor:
    """F.linear into `out`."""
    if b is None:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(b, h, w.t(), out=out)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over tokens of cross_entropy(hidden @ weight.T + bias, targets); gradients for hidden, weight and bias
    are computed in the forward pass and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, dtype: torch.dtype, weight_cast):
        want_weight = ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight_cast if weight_cast is not None else weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
            total = hidden.new_zeros((), dtype=torch.float32)
            # One buffer per dtype, reused by every chunk: fresh 64 MiB tensors per chunk cost page faults.
            rows = min(chunk, hidden.shape[0])
            logits_buffer = hidden.new_empty((rows, w.shape[0]), dtype=torch.float32)
            low_buffer = hidden.new_empty((rows, w.shape[0]), dtype=dtype) if dtype != torch.float32 else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(dtype)
                t = targets[start:start + chunk]
                logits = logits_buffer[:h.shape[0]]
                if low_buffer is None:
                    _linear(h, w, b, out=logits)
                else:
                    logits.copy_(_linear(h, w, b, out=low_buffer[:h.shape[0]]))
                target = logits.gather(1, t[:, None]).squeeze(1)
                # The softmax in place over the logits (no log-softmax copy; 2.5x faster than
                # torch.logsumexp on CPU): loss = max + log(sum(exp(logits - max))) - target logit.
                peak = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(peak).exp_()
                norm = probs.sum(dim=-1, keepdim=True)
                total += (peak + norm.log()).sum() - target.sum()
                if grad_hidden is None and grad_weight is None and grad_bias is None:
                    del logits, probs
                    continue
                # d(sum of losses)/d(logits) = softmax - one_hot.
                grad_logits = probs.div_(norm)
                grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1
                grad_low = grad_logits if low_buffer is None else low_buffer[:h.shape[0]].copy_(grad_logits)
                if grad_hidden is not None:
                    grad_hidden[start:start + chunk] = grad_low @ w
                if grad_weight is not None:
                    grad_weight += (grad_low.T @ h).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                del logits, probs, grad_logits, grad_low
        # Kept on ctx, not saved tensors: backward scales them in place (no second copy of a vocabulary x hidden
        # weight gradient) and hands them over, so a second backward through this graph is refused.
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("chunked_linear_cross_entropy: backward ran twice through the same graph")
        (grad_hidden, grad_weight, grad_bias), ctx.grads = ctx.grads, None
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_total.float()
        if grad_hidden is not None:
            grad_hidden.mul_(scale.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(scale).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 targets: torch.Tensor, *, chunk: int | None = None,
                                 dtype: torch.dtype | None = None,
                                 frozen_cast: FrozenCast | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden` (tokens x hidden size) through the head (`weight`: vocabulary x hidden
    size, optional `bias`) against `targets` (tokens,), without the tokens x vocabulary logits. `dtype`: the
    half precision training's autocast runs matmuls in (default: the ambient autocast's, if any). `frozen_cast`:
    where a frozen weight's copy in that dtype is kept between calls."""
    if hidden.shape[0] == 0:
        return hidden.float().sum() * 0.0  # still part of the graph: backward runs as for any batch
    dtype = head_compute_dtype(weight, dtype)
    weight_cast = frozen_cast.get(weight, dtype) if frozen_cast is not None else None
    chunk = chunk or chunk_tokens(weight.shape[0], hidden.device.type)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, dtype, weight_cast)
