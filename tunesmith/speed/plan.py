"""The speed plan: the run's `speed:` section resolved once, at the start, for the device the run has.

Training (`training/trainer.py`, `speed/apply.py`), the planner's pre-flight (`planning/preflight.py`) and the run
log all read this one object, so a switch is interpreted in one place. Choices that only the model can settle (a
model whose head cannot take the chunked loss, a kernel that cannot be built) are made where the model is known and
logged there; the plan records what was asked and what applies to this device.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from ..errors import ConfigError

LOSS_PATHS = ("full", "supervised", "chunked", "liger")
MODEL_PIECES = ("half_frozen_base", "fast_dropout", "fast_rms_norm", "cpu_causal_attention", "gpu_varlen_attention")
# The model pieces a task's recipe does not swap into its model (speed/apply.py), off in its plan, so that the memory
# plan and the run log describe the model that trains. A classifier (classification, reward) takes the CPU layers
# only; the preference trainers were not measured under the varlen attention; GRPO's trainer, which also samples
# with the model, takes none of them. (The planner once counted a reward model's and a GRPO policy's frozen base in
# half precision that they kept in fp32: 15-24 % under their measured peaks.)
NOT_TAKEN = {
    "classification": ("half_frozen_base", "cpu_causal_attention", "gpu_varlen_attention"),
    "reward": ("half_frozen_base", "cpu_causal_attention", "gpu_varlen_attention"),
    **{task: ("gpu_varlen_attention",) for task in ("dpo", "orpo", "simpo", "kto")},
    "grpo": MODEL_PIECES,
}


@dataclass(frozen=True)
class SpeedPlan:
    device: str
    loss: str                    # one of LOSS_PATHS (auto resolved)
    cpu_threads: int | None      # None on a GPU; else the torch threads to use
    cpu_allocator: str           # as configured; made concrete once the pre-flight's peak is known
    torch_compile: bool
    activation_offload: bool
    # The pieces below apply only where their module says (the CPU ones on CPU runs); wanted = True. The model pieces
    # (MODEL_PIECES) are off for a task whose recipe does not take them (NOT_TAKEN).
    half_frozen_base: bool
    skip_padding_mask: bool
    sdpa_gqa: bool
    fast_dropout: bool
    fast_rms_norm: bool
    cpu_causal_attention: bool
    gpu_varlen_attention: bool

    @property
    def supervised_logits(self) -> bool:
        """The LM head runs only where the next token is trained (`training/trainer.py`)."""
        return self.loss in ("supervised", "chunked")

    @property
    def chunked_loss(self) -> bool:
        return self.loss == "chunked"

    @property
    def liger(self) -> bool:
        return self.loss == "liger"

    def describe(self) -> list[str]:
        """One line per choice, for the run log."""
        cpu_only = ("cpu_threads", "cpu_allocator", "half_frozen_base", "sdpa_gqa", "fast_dropout", "fast_rms_norm",
                    "cpu_causal_attention")
        return [f"speed plan: {key} = {value}" for key, value in asdict(self).items()
                if not (self.device == "cuda" and key in cpu_only)
                and not (self.device != "cuda" and key == "gpu_varlen_attention")]


def resolve_speed_plan(cfg, device: str, *, cpu_threads: int | None = None) -> SpeedPlan:
    """`cfg.speed` for a run on `device` ("cpu" or "cuda"); raises ConfigError for what cannot run there.
    `cpu_threads`: the default thread count (the physical cores) when the config sets none."""
    speed = cfg.speed
    _check(cfg, device)
    loss = "chunked" if speed.loss == "auto" else speed.loss
    not_taken = NOT_TAKEN.get(cfg.task, ())
    return SpeedPlan(
        device=device, loss=loss,
        cpu_threads=None if device == "cuda" else speed.cpu_threads or cpu_threads,
        cpu_allocator=speed.cpu_allocator, torch_compile=speed.torch_compile,
        activation_offload=speed.activation_offload,
        skip_padding_mask=speed.switch("skip_padding_mask"), sdpa_gqa=speed.switch("sdpa_gqa"),
        **{name: speed.switch(name) and name not in not_taken for name in MODEL_PIECES})


def _check(cfg, device: str) -> None:
    speed, cuda = cfg.speed, device == "cuda"
    if speed.loss == "liger" and not cuda:
        raise ConfigError("Liger kernels are Triton GPU kernels and need a CUDA GPU", where="speed.loss",
                          hint="use speed.loss: auto on CPU")
    if speed.loss == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("speed.loss: liger needs the liger-kernel package", where="speed.loss",
                          hint="pip install 'tunesmith[gpu]'")
    if speed.activation_offload and not cuda:
        raise ConfigError("activation offload moves activations from GPU to CPU memory; on CPU there is nowhere "
                          "to offload to", where="speed.activation_offload",
                          hint="set training.gradient_checkpointing: true to save activation memory on CPU")
    if speed.cpu_threads and not cuda:
        from ..hardware import usable_cpus

        if speed.cpu_threads > usable_cpus():
            raise ConfigError(f"{speed.cpu_threads} threads is more than the {usable_cpus()} CPUs this process may "
                              f"use; oversubscribed threads wait on each other", where="speed.cpu_threads",
                              hint="leave it unset (the physical cores) or choose at most the CPU count")
    if cfg.model.attn_implementation == "flex_attention" and not cuda:
        from ..models.loading import CPU_ATTENTION_HINT

        raise ConfigError("FlexAttention has no backward on CPU in torch, so it cannot train here",
                          where="model.attn_implementation", hint=CPU_ATTENTION_HINT)
