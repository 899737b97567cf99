"""The planner inside `train`: predict the peak from the config before any weight loads, warn if it won't fit."""

from __future__ import annotations

import logging
import os

import torch

from ..reporting import Reporter, reporter_or_default
from .units import human

log = logging.getLogger(__name__)


def device_memory(device: str) -> int:
    """CUDA: the GPU's total memory. CPU: the RAM available now (what a training process can still get)."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def sharding_stage(cfg) -> int:
    """`distributed.strategy` as the ZeRO stage the planner models (memory.py): what each rank holds a 1/N share
    of. DDP keeps a whole copy per rank (0); FSDP full or hybrid shards weights, gradients and optimizer state (3,
    over the shard group); DeepSpeed its stage. CPU offload is not modelled: the figures are then an upper bound."""
    dist = cfg.distributed
    return {"ddp": 0, "fsdp": 3, "deepspeed": dist.deepspeed.stage}[dist.strategy]


def request_from_config(cfg, device: str, speed=None, *, devices: int = 1, seq: int | None = None):
    """The planner's request for a training run of `cfg` on `device`, with its speed plan (`speed`; resolved from
    `cfg.speed` when not given); `devices`: the ranks the strategy shards over (the figures are then per rank)."""
    from ..speed.plan import resolve_speed_plan
    from .memory import PlanRequest

    t = cfg.training
    speed = speed or resolve_speed_plan(cfg, device)
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "auto")
    return PlanRequest(method=cfg.method.name, method_options=cfg.method.model_dump(exclude={"name"}),
                       batch=t.batch_size, seq=seq or cfg.data.max_length, grad_accum=t.grad_accum,
                       gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer, precision=precision,
                       device=device, devices=devices, zero_stage=sharding_stage(cfg),
                       attn_implementation=cfg.model.attn_implementation,
                       fast_dropout=speed.fast_dropout, fast_rms_norm=speed.fast_rms_norm,
                       cpu_causal_attention=speed.cpu_causal_attention, half_frozen_base=speed.half_frozen_base,
                       # Liger's fused linear cross-entropy keeps no full logits either: counted alike.
                       chunked_loss=speed.loss in ("chunked", "liger"),
                       task=cfg.task, precomputed_reference=cfg.preference.precompute_ref_log_probs,
                       grpo_reference=cfg.task == "grpo" and cfg.grpo.beta > 0,
                       retain=tuple(name for name in (cfg.retain.active() if cfg.retain else ())
                                    if name != "replay"))


def preflight(cfg, model_config=None, memory: int | None = None, *, reporter: Reporter | None = None, speed=None,
              devices: int = 1, seq: int | None = None):
    """Tell the user the predicted peak of this run and warn when it exceeds the device's memory. Never fails
    training: a planning problem goes to the log and the run goes on. `devices`: the ranks the run's strategy
    shards over; the prediction is then per rank. `seq`: the longest sequence the run can have, when its data says
    it is shorter than data.max_length (GRPO: the longest prompt + the completion). Returns the plan (or None)."""
    from .memory import plan_memory
    from .params import load_model_config

    reporter = reporter_or_default(reporter)
    device = speed.device if speed is not None else "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if model_config is None:
            from ..models.loading import source_kwargs

            ref, _ = source_kwargs(cfg.model)
            model_config = load_model_config(ref, trust_remote_code=cfg.model.trust_remote_code)
        plan = plan_memory(model_config, request_from_config(cfg, device, speed, devices=devices, seq=seq))
    except Exception as exc:  # noqa: BLE001 - the pre-flight is advice, never a reason to stop
        log.info("pre-flight: no memory prediction (%s: %s)", type(exc).__name__, exc)
        return None
    available = memory if memory is not None else device_memory(device)
    what = "GPU memory" if device == "cuda" else "available RAM"
    per_rank = f" per rank ({cfg.distributed.strategy} over {devices})" if devices > 1 else ""
    reporter.info(f"pre-flight: predicted peak {human(plan.peak)}{per_rank} ({plan.peak_phase}); {what} "
                  f"{human(available)}")
    if plan.peak > available:
        reporter.warning(f"the predicted peak exceeds {what}; expect an out-of-memory error. Try "
                         f"training.gradient_checkpointing: true, a smaller training.batch_size (with grad_accum), "
                         f"a shorter data.max_length, or method qlora; `tunesmith plan --budget` proposes settings")
    return plan
