"""Training time: a few real steps of the planned configuration on this machine calibrate tokens per second.

Throughput depends on kernels, memory bandwidth and contention that no formula knows, so it is measured. The probe
trains a randomly initialised copy of the model built from its config (no download) with the method applied;
QLoRA is probed as LoRA (a 4-bit base cannot be built from a config without weights), which is noted. The probe
runs the model as training does: training's load-dtype rule with autocast to the compute dtype (an fp32 base under
bf16 autocast on CPU), and on CPU the fast dropout that `speed.switches.fast_dropout` (`PlanRequest.fast_dropout`) swaps in
and the RMSNorm of `speed.switches.fast_rms_norm` (`PlanRequest.fast_rms_norm`), and under bf16 the causal attention
kernel of `speed.switches.cpu_causal_attention` where it runs (`PlanRequest.cpu_causal_attention`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..methods.registry import get_method
from ..models.loading import training_load_dtype
from ..speed.frozen_base import hold_for_training
from ..speed.cpu.causal_attention import use_causal_attention_kernel
from ..speed.cpu.layers import use_cpu_layers
from .memory import PlanRequest
from .params import apply_method, method_options


@dataclass
class Throughput:
    tokens_per_second: float
    steps: int
    note: str = ""

    def seconds_for(self, tokens: float) -> float:
        return tokens / self.tokens_per_second


def probe_throughput(config, request: PlanRequest, *, steps: int = 3, progress=None) -> Throughput:
    from transformers import AutoModelForCausalLM

    method, note = request.method, ""
    if method == "qlora":
        method, note = "lora", "qlora probed as lora on an unquantised base (expect QLoRA to be slower)"
    device = torch.device(request.device)
    compute_dtype = request.compute_dtype()
    dtype = training_load_dtype(get_method(method).is_peft, compute_dtype, cuda=device.type == "cuda")
    autocast = compute_dtype != torch.float32  # as the Trainer does with bf16/fp16 set
    torch.manual_seed(0)

    def build():
        with device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.config.use_cache = False
        return model

    model, _ = apply_method(build, method, method_options(method, request.method_options), compute_dtype)
    hold_for_training(model, get_method(method), compute_dtype, cuda=device.type == "cuda",
                      enabled=request.half_frozen_base)
    if device.type == "cpu":
        use_cpu_layers(model, dropout=request.fast_dropout, rms_norm=request.fast_rms_norm)
        if compute_dtype == torch.bfloat16 and request.cpu_causal_attention:
            use_causal_attention_kernel(model)
    if request.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] or [torch.zeros(1)], lr=1e-5)
    ids = torch.randint(3, config.vocab_size, (request.batch, request.seq), device=device)
    timings = []
    for step in range(steps + 1):  # the first step warms up kernels and allocates state; not timed
        if progress:
            progress(step, steps + 1)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=compute_dtype, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    per_step = sum(timings[1:]) / steps
    return Throughput(request.batch * request.seq / per_step, steps, note)
