"""The `distributed:` section: how several processes share one run (docs/distributed.md).

Nothing here starts a process: `tunesmith train --nproc N` (or `torchrun` / `accelerate launch`) starts them, and
transformers' Trainer with accelerate runs the strategy (DDP, FSDP2, DeepSpeed ZeRO). This section only says which
strategy and with what options; a single process ignores `ddp` and runs FSDP / DeepSpeed over one rank.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel

# Methods whose trained weights are plain tensors of the model, which FSDP / ZeRO can shard and gather back into a
# standard artifact (a PEFT adapter or a full model). Bottleneck adapters, the hybrid method and prompt methods keep
# their own modules and files that the engines' state-dict gathering does not know; PiSSA and OLoRA convert their
# saved adapter against the initial one, which a gathered state dict does not carry.
SHARDABLE_METHODS = ("full", "lora", "qlora", "dora", "rslora", "loraplus", "ia3", "vera")


class FsdpConfig(StrictModel):
    sharding: Literal["full", "hybrid"] = Field(
        "full", description="full: weights, gradients and optimizer state sharded over every rank; hybrid: sharded "
                            "within a machine, replicated across machines (FSDP2 on a 2-D mesh)")
    cpu_offload: bool = Field(False, description="keep sharded parameters and gradients in CPU memory between uses")
    wrap: Literal["decoder_layer"] = Field(
        "decoder_layer", description="one FSDP unit per decoder layer (the model's own _no_split_modules)")
    reshard_after_forward: bool = Field(True, description="free gathered weights after forward (less memory, one "
                                                          "more all-gather in backward)")


class DeepSpeedConfig(StrictModel):
    stage: Literal[2, 3] = Field(3, description="ZeRO stage: 2 shards optimizer state and gradients, 3 also weights")
    offload_optimizer: bool = Field(False, description="optimizer state and step on the CPU (ZeRO-Offload)")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters in CPU memory between uses")
    config_file: str | None = Field(None, description="your own DeepSpeed JSON; used as is, the fields above then "
                                                      "must stay at their defaults")

    @model_validator(mode="after")
    def _offload_needs_stage3(self):
        if self.offload_params and self.stage != 3:
            from ..errors import ConfigError

            raise ConfigError("parameter offload needs ZeRO stage 3", where="distributed.deepspeed.offload_params",
                              hint="set distributed.deepspeed.stage: 3, or offload_optimizer only")
        return self


class DistributedConfig(StrictModel):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per rank; fsdp: FSDP2 sharding; deepspeed: ZeRO-2/3")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on GPUs, gloo on CPUs")
    timeout_minutes: int = Field(30, gt=0, description="how long a rank waits for the others at a collective "
                                                       "before the run fails")
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)


def check_distributed_config(cfg) -> None:
    """Combinations of the `distributed` section with the rest of a run config that no process count makes work.
    What depends on the processes actually started (their number, the device, an installed DeepSpeed) is checked
    when the run starts (`training/distributed.py`)."""
    from ..errors import ConfigError

    dist = cfg.distributed
    strategy = dist.strategy
    if strategy != "deepspeed" and dist.deepspeed != DeepSpeedConfig():
        raise ConfigError(f"distributed.deepspeed is set, but distributed.strategy is {strategy}",
                          where="distributed.deepspeed", hint="set distributed.strategy: deepspeed, or remove it")
    if strategy != "fsdp" and dist.fsdp != FsdpConfig():
        raise ConfigError(f"distributed.fsdp is set, but distributed.strategy is {strategy}",
                          where="distributed.fsdp", hint="set distributed.strategy: fsdp, or remove it")
    if strategy == "ddp":
        return
    method = cfg.method.name
    if method not in SHARDABLE_METHODS:
        raise ConfigError(f"method {method} cannot be sharded with {strategy}: its trained modules are saved in a "
                          f"format the engine's weight gathering does not produce", where="distributed.strategy",
                          hint=f"use strategy: ddp with {method}, or one of {', '.join(SHARDABLE_METHODS)}")
    if cfg.task != "sft":
        raise ConfigError(f"strategy {strategy} is wired for task: sft only, not task: {cfg.task}",
                          where="distributed.strategy", hint="use strategy: ddp")
    if cfg.retain is not None and cfg.retain.active():
        raise ConfigError(f"retain penalties read whole weight tensors, which {strategy} shards over the ranks",
                          where="retain", hint="use strategy: ddp with retain, or remove the retain section")
    if cfg.eval.general:
        raise ConfigError(f"eval.general scores the trained model in one process; under {strategy} its weights are "
                          f"sharded over the ranks", where="eval.general",
                          hint="use strategy: ddp, or run `tunesmith eval RUN` after training")
    if method == "qlora" and strategy == "fsdp":
        # FSDP shards a flat group of parameters of one dtype; bitsandbytes stores 4-bit weights as uint8 unless its
        # quant storage is the float dtype of the rest, which the qlora method does not set (and FSDP with
        # bitsandbytes needs CUDA in any case).
        raise ConfigError("qlora with fsdp needs bitsandbytes' 4-bit quant storage in the compute dtype, which "
                          "tunesmith's qlora does not set", where="distributed.strategy",
                          hint="use strategy: ddp or deepspeed (stage 2) with qlora")
    if method == "qlora" and strategy == "deepspeed" and dist.deepspeed.stage == 3:
        raise ConfigError("qlora with ZeRO-3 would shard 4-bit weights stored as uint8, which ZeRO-3 cannot gather "
                          "into the compute dtype", where="distributed.deepspeed.stage",
                          hint="use distributed.deepspeed.stage: 2 with qlora")
    if strategy == "deepspeed" and dist.deepspeed.config_file is not None:
        custom = dist.deepspeed.model_dump(exclude={"config_file"}) != DeepSpeedConfig().model_dump(
            exclude={"config_file"})
        if custom:
            raise ConfigError("distributed.deepspeed.config_file is used as is; the stage and offload fields would "
                              "be ignored", where="distributed.deepspeed.config_file",
                              hint="put them in the JSON file, or drop config_file")
