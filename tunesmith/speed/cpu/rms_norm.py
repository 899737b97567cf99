"""RMSNorm with a short backward pass, for CPU training (`speed.switches.fast_rms_norm`).

Why by hand: transformers' RMSNorm modules are a chain of small ops (square, mean, rsqrt, two products), and autograd
runs each one's backward separately, then adds the two gradients that reach the input: about ten passes over the
hidden states. On CPU, where no fused kernel exists (Liger's is Triton, for CUDA), that was 4.3 ms of backward per
norm for SmolLM2 at 4 x 380 tokens (61 norms a step) with glibc's allocator. Written as one autograd Function the
backward is four passes (1.4 ms): with h = x * rstd and u = w * grad, grad_x = rstd * (u - h * mean(u * h)). A LoRA
step gained 7% with glibc; with tcmalloc, which already makes the many small temporaries cheap, 1-6% (in-process
A/B; not measurable between whole processes: docs/benchmarks.md).

Only modules whose output the Function reproduces are swapped: each candidate (a class named ...RMSNorm with a
vector weight and an epsilon) is run on a probe row and compared with the Function, for `w * h` (Llama, Qwen,
Mistral, ...) and for `(1 + w) * h` (Gemma); anything else keeps its own forward. The forward runs the same ops in
the same order as Llama's (bit-identical there); inputs that are not float32 go to the module's own forward. The
tensors kept for backward are those autograd keeps for the original (x and rstd; h as well when the weight
trains), so the memory planner's trace holds.
"""

from __future__ import annotations

import torch
from torch import nn

from ...models.layers import replace_modules


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        h = x * rstd
        scale = weight + offset if offset else weight
        ctx.offset = offset
        ctx.save_for_backward(x, weight, rstd, h if ctx.needs_input_grad[1] else None)
        return scale * h

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd, h = ctx.saved_tensors
        if h is None:
            h = x * rstd
        scale = weight + ctx.offset if ctx.offset else weight
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * h).reshape(-1, h.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            scaled = grad * scale
            mean = torch.linalg.vecdot(scaled, h, dim=-1).unsqueeze(-1)
            grad_x = torch.addcmul(scaled, h, mean, value=-1.0 / x.shape[-1]).mul_(rstd)
        return grad_x, grad_weight, None, None


class CPURMSNorm(nn.Module):
    """Stands in for an RMSNorm module: the same `weight` Parameter (state-dict keys unchanged), the Function above
    for float32 inputs, the original module's forward otherwise."""

    def __init__(self, original: nn.Module, eps: float, offset: float):
        super().__init__()
        self.weight = original.weight
        self.eps, self.offset = eps, offset
        self._original = (original,)  # a tuple: not registered as a submodule, so no second copy of `weight`

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return self._original[0](hidden_states)
        return _RMSNormFunction.apply(hidden_states, self.weight, self.eps, self.offset)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, offset={self.offset}"


def _epsilon(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _matching_offset(module: nn.Module, eps: float) -> float | None:
    """0 or 1 when the Function reproduces `module` on a probe input with that offset, else None."""
    weight = module.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[0], generator=generator)
    with torch.no_grad():
        try:
            expected = module(probe)
        except Exception:  # noqa: BLE001 - a module that cannot take the probe keeps its own forward
            return None
        for offset in (0.0, 1.0):
            ours = _RMSNormFunction.apply(probe, weight, eps, offset)
            if expected.shape == ours.shape and expected.dtype == ours.dtype and \
                    torch.allclose(expected, ours, rtol=1e-5, atol=1e-6):
                return offset
    return None


def _replacement(child: nn.Module) -> CPURMSNorm | None:
    weight, eps = getattr(child, "weight", None), _epsilon(child)
    if not (type(child).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and eps is not None):
        return None
    offset = _matching_offset(child, eps)
    return CPURMSNorm(child, eps, offset) if offset is not None else None


def use_cpu_rms_norm(model: nn.Module) -> int:
    """Swap each RMSNorm module of `model` that the Function reproduces (see the module docstring); returns how
    many. The swap keeps the Parameters, so adapters, checkpoints and saved models are unchanged."""
    return replace_modules(model, _replacement)

