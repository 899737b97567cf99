"""Peak training memory, component by component, per device.

The peak of one training step is reached either when backward starts (every saved activation alive, plus the
loss gradients over the vocabulary) or at the optimizer step (every gradient plus the optimizer's temporaries);
weights and optimizer state are alive throughout. No library models this: accelerate's estimate-memory counts
weights and a fixed Adam multiple, without activations, methods, quantisation or sharding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..speed.chunked_loss import chunk_tokens
from ..speed.cpu.dropout import use_fast_dropout
from .activations import ActivationTrace, trace_activations
from .grpo import GRPO_OUTPUTS, generation_memory
from .optimizers import OPTIMIZERS, optimizer_state_bytes, resolve_optimizer
from .params import ParamCounts, exact_counts, method_options
from .preference import (FUSED_HEAD, PREFERENCE_TASKS, fused_head_memory, has_reference, reference_pass,
                         reference_weights, sequences_per_example)

# Measured, not tuned: the peak RSS of a CPU process that has imported the training stack (torch, transformers,
# peft, bitsandbytes, datasets, tunesmith.training): 547 MiB in one run on the development machine (the "runtime
# baseline" of benchmarks/plan_accuracy.py, which passes its own fresh measurement instead of this constant; it
# varies between runs, 549 to 617 MiB in the runs published in docs/planning.md).
# On CUDA the context and kernel workspaces lie outside max_memory_allocated; 600 MiB is a typical CUDA context plus
# cuBLAS workspace, NOT measured (the one GPU check, on an H200, compared the tensors alone: docs/planning.md).
CPU_RUNTIME_OVERHEAD = 574_095_360
CUDA_RUNTIME_OVERHEAD = 600 * 2 ** 20
PRECISIONS = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PlanRequest:
    method: str = "lora"
    method_options: dict = field(default_factory=dict)
    batch: int = 1
    seq: int = 1024
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    optimizer: str = "auto"
    precision: str = "auto"          # compute dtype: auto = as training resolves it (bf16 on CUDA, native-bf16 CPUs)
    device: str = "cpu"              # cpu | cuda
    devices: int = 1
    zero_stage: int = 0              # 0 none, 1 optimizer, 2 +gradients, 3 (= FSDP full shard) +weights
    attn_implementation: str | None = None
    # Training runs the LM head and the loss only where the next token is trained (speed.loss: supervised or chunked), so
    # the batch x seq x vocabulary buffers scale with the replies' share of tokens; 1.0 (every token) is the bound.
    supervised_share: float = 1.0
    # speed.switches.fast_dropout: on CPU each dropout keeps a one-byte mask for backward instead of torch's float32 noise
    # (on CUDA torch's fused dropout already does; the switch changes nothing there).
    fast_dropout: bool = True
    # speed.switches.fast_rms_norm: on CPU the RMSNorm layers run as one autograd Function. It keeps the tensors autograd
    # keeps for the original, so only the time probe (planning/time.py) swaps it in.
    fast_rms_norm: bool = True
    # speed.switches.cpu_causal_attention: bf16 CPU attention by tunesmith's causal kernel. It keeps what SDPA's flash
    # kernel keeps (inputs, output, log-sum-exp), so again only the time probe swaps it in.
    cpu_causal_attention: bool = True
    # speed.chunked_loss: the head and the loss over chunks of tokens, no tokens x vocabulary logits (when the
    # model has a plain head and takes supervised logits; `plan_memory` checks).
    chunked_loss: bool = True
    # speed.switches.half_frozen_base: on CPU under bf16 autocast an adapter method's frozen linear weights are held in
    # bf16 (training/frozen_base.py); exact_counts applies the same rule to the meta model.
    half_frozen_base: bool = True
    runtime_overhead: int | None = None
    # `task:` of the run: a preference task runs two sequences per pair and/or a reference pass
    # (planning/preference.py); `batch` is then in pairs (or KTO examples), as training.batch_size is.
    task: str = "sft"
    precomputed_reference: bool = False  # preference.precompute_ref_log_probs: no reference model or pass in training
    grpo_reference: bool = False         # task grpo with grpo.beta > 0: a reference forward (planning/grpo.py)
    # retain: which penalties have a weight (l2sp, ewc, kd): their θ₀ copies, Fisher, teacher (tunesmith/retain/).
    retain: tuple[str, ...] = ()

    def compute_dtype(self) -> torch.dtype:
        if self.precision == "auto":
            if self.device == "cuda":
                return torch.bfloat16
            from ..methods.registry import get_method
            from ..models.loading import training_compute_dtype
            from .params import method_options

            safe = get_method(self.method).bf16_autocast_safe(method_options(self.method, self.method_options))
            return training_compute_dtype("auto", cuda=False, bf16_safe=safe)
        return PRECISIONS[self.precision]


@dataclass
class MemoryPlan:
    request: PlanRequest
    counts: ParamCounts
    optimizer: str
    weights: float
    gradients: float
    optimizer_state: float
    activations: float
    logits: float
    step_temporaries: float
    overhead: float
    peak: float
    peak_phase: str
    activation_trace: ActivationTrace | None = None
    notes: list[str] = field(default_factory=list)
    checkpoint_pages: float = 0.0
    reference_weights: float = 0.0  # dpo/kto with a non-PEFT method: the frozen reference copy
    reference_pass: float = 0.0     # dpo/kto: the no_grad reference forward's transient, beside the saved activations
    retain_parts: dict[str, float] = field(default_factory=dict)  # retain: θ₀, Fisher, teacher copy (held throughout)
    retain_pass: float = 0.0        # retain.kd: the teacher's no_grad forward and one chunk of the KL's logits
    generation: float = 0.0         # grpo: sampling's KV cache and logits (a phase of its own, planning/grpo.py)

    @property
    def retain_weights(self) -> float:
        return sum(self.retain_parts.values())

    def components(self) -> dict[str, float]:
        parts = {"weights": self.weights, "gradients": self.gradients, "optimizer state": self.optimizer_state,
                 "activations": self.activations, "logits & loss": self.logits,
                 "optimizer-step temporaries": self.step_temporaries, "runtime overhead": self.overhead}
        if self.checkpoint_pages:
            parts["checkpoint pages read to quantise"] = self.checkpoint_pages
        if self.reference_weights:
            parts["reference model (frozen copy)"] = self.reference_weights
        if self.reference_pass:
            parts["reference forward (transient)"] = self.reference_pass
        parts.update(self.retain_parts)
        if self.retain_pass:
            parts["retain: KD teacher forward (transient)"] = self.retain_pass
        if self.generation:
            parts["generation: KV cache (own phase)"] = self.generation
        return parts

    def peak_at_batch(self, batch: int) -> tuple[float, str]:
        """(peak, phase) at another batch size: activations and logits grow linearly with it, nothing else does.
        The peak is reached when backward starts (every saved activation alive, plus the loss gradients) or at the
        optimizer step (every gradient plus the update's temporaries); with gradient accumulation the previous
        micro-batches' gradients stay alive through the next backward. A reference forward (dpo, kto) runs after the
        policy's, its transient beside the saved activations, and is gone before the loss's buffers exist. GRPO's
        sampling is a third phase, with nothing saved for backward."""
        scale = batch / self.request.batch
        backward_start = (self.activations + max(self.logits, self.reference_pass, self.retain_pass)) * scale + \
            (self.gradients if self.request.grad_accum > 1 else 0)
        optimizer_step = self.gradients + self.step_temporaries
        phases = {"start of backward": backward_start, "optimizer step": optimizer_step,
                  "generation": self.generation * scale}
        phase = max(phases, key=phases.get)
        base = self.overhead + self.checkpoint_pages + self.weights + self.optimizer_state + self.reference_weights + \
            self.retain_weights
        return base + phases[phase], phase


def _shard(value: float, request: PlanRequest, from_stage: int) -> float:
    return value / request.devices if request.zero_stage >= from_stage and request.devices > 1 else value


def weight_memory(counts: ParamCounts, request: PlanRequest) -> float:
    return _shard(counts.trainable_bytes + counts.frozen_bytes, request, 3)


def gradient_memory(counts: ParamCounts, request: PlanRequest) -> float:
    # Gradients take their parameter's dtype (fp32 master weights and PEFT's fp32 adapters).
    return _shard(counts.trainable_bytes, request, 2)


def optimizer_memory(counts: ParamCounts, optimizer: str, request: PlanRequest) -> float:
    return _shard(optimizer_state_bytes(optimizer, counts.trainable, counts.trainable_bytes), request, 1)


def activation_memory(trace: ActivationTrace, request: PlanRequest, chunked: bool = False) -> float:
    """Saved activations; with the chunked loss the head keeps nothing (its input goes straight to the loss)."""
    return trace.saved(request.gradient_checkpointing) - (trace.head if chunked else 0)


def logits_memory(trace: ActivationTrace, request: PlanRequest) -> float:
    """The loss over the vocabulary: log-softmax output kept for backward, then its gradient and the logits'
    gradient (fp32, batch x sequence x vocabulary each) at the top of backward; only at trained positions."""
    return request.supervised_share * (trace.vocab + 2 * trace.tokens * trace.vocab_size * 4)


def chunked_loss_memory(trace: ActivationTrace, request: PlanRequest, head_weight: torch.Tensor) -> float:
    """training/chunked_loss.py at its peak, the last chunk: the chunk's fp32 logits (turned into their gradient in
    place) beside the half-precision logits or logit gradient, the head weight's copy for autocast (kept from step
    to step, and alive here either way), the gradient of every head input (kept for backward) and, when the head
    trains, its weight gradient."""
    tokens = request.supervised_share * trace.tokens
    half = request.compute_dtype() != torch.float32
    vocab, hidden = head_weight.shape
    chunk = min(chunk_tokens(vocab, request.device), tokens)
    cast = 2 * head_weight.numel() if half and head_weight.dtype == torch.float32 else 0
    trained = 4 * head_weight.numel() if head_weight.requires_grad else 0
    return chunk * vocab * (6 if half else 4) + cast + 4 * tokens * hidden + trained


#: Config fields of models that change their logits after the head, for which training keeps the plain loss (it
#: finds out on the first batch; the plan has only the config).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _chunked_loss_applies(model, request: PlanRequest) -> bool:
    from ..speed.logits import plain_head, supports_supervised_logits

    transforms = any(getattr(model.config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    return request.chunked_loss and not transforms and plain_head(model) is not None and \
        supports_supervised_logits(model)


def _preference_loss(trace: ActivationTrace, request: PlanRequest, head_weight: torch.Tensor) -> tuple[float, float]:
    """(activations, logits & loss) of a preference task: how its TRL trainer gets the log-probs (the speed plan's
    loss choice does not apply). Reward: a one-output score head, no vocabulary buffers; dpo, kto: TRL's fused LM
    head, chunked like speed.loss: chunked; orpo, simpo: the full logits."""
    if request.task == "reward":
        return activation_memory(trace, request, chunked=True), 0.0
    if request.task in FUSED_HEAD:
        return (activation_memory(trace, request, chunked=True),
                _fused_head(trace, request, head_weight, backward=True))
    return activation_memory(trace, request), logits_memory(trace, request)


def _fused_head(trace: ActivationTrace, request: PlanRequest, head_weight: torch.Tensor, *, backward: bool,
                outputs: tuple[str, ...] = ("log_probs",)) -> float:
    vocab, hidden = head_weight.shape
    return fused_head_memory(trace.tokens, hidden, vocab, request.compute_dtype(), device=request.device,
                             head_trains=head_weight.requires_grad, backward=backward, outputs=outputs)


def step_temporaries(counts: ParamCounts, optimizer: str, request: PlanRequest) -> float:
    """AdamW's update allocates its denominator. On CPU (for-each kernels are CUDA-only) torch runs one parameter at
    a time, `(exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: the sqrt and the quotient are both alive for
    the largest parameter. CUDA's default for-each path takes one sqrt of every state, then divides in place."""
    if OPTIMIZERS[optimizer].states == 0:
        return 0.0
    per_element = counts.trainable_bytes / counts.trainable if counts.trainable else 4
    if request.device == "cuda":
        return _shard(counts.trainable_bytes, request, 2)
    return 2 * counts.largest_trainable * per_element


def checkpoint_pages(config, counts: ParamCounts, request: PlanRequest) -> float:
    """Loading in 4 bits on CPU: transformers maps the safetensors file and bitsandbytes quantises from it, so every
    source page of the quantised layers is read into this process and stays resident while the mapping lives (the
    unquantised tensors, e.g. the embeddings, still alias it). On CUDA those pages are host memory, not GPU memory."""
    if request.device != "cpu" or not counts.quantized:
        return 0.0
    stored = getattr(config, "dtype", None) or torch.float32
    stored = getattr(torch, stored) if isinstance(stored, str) else stored
    return counts.quantized * torch.empty((), dtype=stored).element_size()


def runtime_overhead(request: PlanRequest) -> float:
    if request.runtime_overhead is not None:
        return request.runtime_overhead
    return CUDA_RUNTIME_OVERHEAD if request.device == "cuda" else CPU_RUNTIME_OVERHEAD


def plan_memory(config, request: PlanRequest) -> MemoryPlan:
    """Predict the peak memory of training `config` as `request` says, per device."""
    opts = method_options(request.method, request.method_options)
    model, counts = exact_counts(config, request.method, opts, compute_dtype=request.compute_dtype(),
                                 attn_implementation=request.attn_implementation, cuda=request.device == "cuda",
                                 half_frozen_base=request.half_frozen_base)
    optimizer = resolve_optimizer(request.optimizer, request.method, request.device)
    # What dropout keeps for backward: training's fast dropout on CPU (uint8), and torch's fused dropout on CUDA
    # (bool), keep a one-byte mask; the meta trace would take torch's unfused path (float32 noise) unless FastDropout
    # stands in.
    if request.device == "cuda" or request.fast_dropout:
        use_fast_dropout(model)
    # Training autocasts whenever it computes in half precision (TrainingArguments bf16/fp16), over fp32 weights or
    # a half-precision base with fp32 adapters alike; the trace does the same (meta_autocast.py).
    # A pair's chosen and rejected sequences run in one batch (TRL concatenates them).
    trace = trace_activations(model, request.batch * sequences_per_example(request.task), request.seq,
                              device_type=request.device, autocast_dtype=request.compute_dtype())
    weights = weight_memory(counts, request)
    gradients = gradient_memory(counts, request)
    state = optimizer_memory(counts, optimizer, request)
    if request.task in PREFERENCE_TASKS:
        activations, logits = _preference_loss(trace, request, model.get_output_embeddings().weight)
    elif request.task == "grpo":
        activations = activation_memory(trace, request, chunked=True)
        logits = _fused_head(trace, request, model.get_output_embeddings().weight, backward=True,
                             outputs=GRPO_OUTPUTS)
    else:
        chunked = _chunked_loss_applies(model, request)
        activations = activation_memory(trace, request, chunked)
        logits = chunked_loss_memory(trace, request, model.get_output_embeddings().weight) if chunked \
            else logits_memory(trace, request)
    temporaries = step_temporaries(counts, optimizer, request)
    overhead = runtime_overhead(request)
    pages = checkpoint_pages(config, counts, request)
    notes = [counts.note] if counts.note else []
    if OPTIMIZERS[optimizer].paged:
        notes.append(f"{optimizer} pages its state to CPU RAM under memory pressure; counted here as on-device")
    if request.compute_dtype() != torch.float32 and request.device == "cuda":
        notes.append("half-precision autocast traced by casting the matmuls' inputs as CPU autocast does (the matmul "
                     "family is cast the same way on CUDA; not validated on a GPU)")
    if request.device == "cpu":
        notes.append("CPU: the peak of live tensors plus the runtime, which the process reaches with "
                     "speed.cpu_allocator: lean; tcmalloc or tbbmalloc (what auto preloads when installed) keep a "
                     "little more, glibc's default settings keep freed memory and their RSS can run up to ~1.7x "
                     "higher (docs/planning.md)")
    if request.zero_stage and request.devices > 1:
        notes.append(f"ZeRO-{request.zero_stage} over {request.devices} devices: figures are per device")
    ref_weights = ref_pass = generation = 0.0
    if request.task == "grpo":
        # TRL samples a whole optimisation step's completions at once (steps_per_generation = grad_accum)
        generation = generation_memory(config, request.batch * request.grad_accum, request.seq, trace.vocab_size,
                                       request.compute_dtype())
        notes.append("grpo: batch in completions of prompt + completion up to seq tokens; sampling's KV cache is its "
                     "own phase" + ("; reference pass counted" if request.grpo_reference else ""))
    if has_reference(request.task, request.precomputed_reference, request.grpo_reference):
        from ..methods.registry import get_method
        from ..models.loading import training_load_dtype

        peft = get_method(request.method).is_peft
        load_dtype = training_load_dtype(peft, request.compute_dtype(), cuda=request.device == "cuda")
        ref_weights = _shard(reference_weights(counts.total, load_dtype, peft), request, 3)
        ref_pass = reference_pass(trace, _fused_head(trace, request, model.get_output_embeddings().weight,
                                                     backward=False))
    if request.task in PREFERENCE_TASKS:
        unit = "pairs, two sequences each" if sequences_per_example(request.task) > 1 else "examples"
        notes.append(f"{request.task}: batch in {unit}" + ("; reference pass counted" if ref_pass else "")
                     + ("; the LM head stands in for the one-output score head" if request.task == "reward" else "")
                     + " (docs/planning.md: preference runs)")
    retain_parts, retain_pass = _retain(model, trace, request)
    plan = MemoryPlan(request, counts, optimizer, weights, gradients, state, activations, logits, temporaries,
                      overhead, 0.0, "", trace, notes, pages, ref_weights, ref_pass, retain_parts, retain_pass,
                      generation)
    plan.peak, plan.peak_phase = plan.peak_at_batch(request.batch)
    return plan


def _retain(model, trace: ActivationTrace, request: PlanRequest) -> tuple[dict[str, float], float]:
    """(what the retain options hold through training, KD's transient teacher pass)."""
    if not request.retain:
        return {}, 0.0
    from ..methods.registry import get_method
    from ..retain.memory import retain_weights, teacher_pass

    on = set(request.retain)
    parts = retain_weights(model, get_method(request.method), l2sp="l2sp" in on, ewc="ewc" in on, kd="kd" in on)
    parts = {name: _shard(value, request, 3) for name, value in parts.items()}
    if "kd" not in on:
        return parts, 0.0
    rows = min(chunk_tokens(trace.vocab_size, request.device), trace.tokens)
    return parts, teacher_pass(max(trace.per_block, default=0), trace.block_input, rows, trace.vocab_size)
