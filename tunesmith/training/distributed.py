"""One run in several processes: which process this is, and what the Trainer is told (docs/distributed.md).

tunesmith writes no distributed loop. A launcher (`tunesmith train --nproc N`, `torchrun`, `accelerate launch`)
starts the processes and sets RANK / WORLD_SIZE / LOCAL_RANK; transformers' Trainer with accelerate then runs the
strategy of `distributed.strategy`: DDP, FSDP2 (accelerate's FSDP plugin, from TrainingArguments' fsdp fields) or
DeepSpeed ZeRO (TrainingArguments' deepspeed field), and shards each epoch's batches over the ranks. What is left for
tunesmith is what depends on the process count around the Trainer: one rank writes the run folder, data is tokenised
once, each rank gets its share of the CPU threads, and the combinations that cannot work are refused up front.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..hardware import usable_cpus


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes, as the launcher set it in the environment."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    launched: bool = False  # started by a launcher (even with one process: FSDP and DeepSpeed need its rendezvous)

    @property
    def is_main(self) -> bool:
        """The one process that writes the run folder and talks to the user."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(self.local_size, 1))

    def shard_group(self, cfg) -> int:
        """The ranks that share one copy of the model: all of them, but one machine's under hybrid FSDP."""
        hybrid = cfg.distributed.strategy == "fsdp" and cfg.distributed.fsdp.sharding == "hybrid"
        return self.local_size if hybrid else self.size

    def describe(self) -> str:
        return (f"process {self.rank} of {self.size} ({self.nodes} machine{'s' * (self.nodes > 1)}, "
                f"{self.local_size} per machine)")


def current_world() -> World:
    """The world the launcher described; a plain `python` / `tunesmith train` process is a world of one."""
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return World()
    size = int(env["WORLD_SIZE"])
    return World(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", env["RANK"])), size=size,
                 local_size=int(env.get("LOCAL_WORLD_SIZE", size)), launched=True)


def backend(cfg, *, cuda: bool) -> str:
    chosen = cfg.distributed.backend
    if chosen == "auto":
        return "nccl" if cuda else "gloo"
    if chosen == "nccl" and not cuda:
        raise ConfigError("the nccl backend needs CUDA GPUs", where="distributed.backend",
                          hint="use backend: gloo (or auto) on CPUs")
    return chosen


def check_nproc(cfg, nproc: int, *, cuda: bool) -> None:
    """`--nproc N` on this machine: at least one process, and no more than the devices that can each hold one."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, not {nproc}", where="--nproc")
    if cuda:
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc} asks for more processes than this machine's {gpus} GPUs",
                              where="--nproc", hint=f"--nproc {gpus} (one process per GPU)")
    elif nproc > usable_cpus():
        # Each CPU process needs at least one core of its own; more processes than cores only time-slice.
        raise ConfigError(f"--nproc {nproc} asks for more processes than this machine's {usable_cpus()} CPUs",
                          where="--nproc", hint=f"--nproc {usable_cpus()} or fewer")
    check_strategy(cfg, World(size=nproc, local_size=nproc, launched=True), cuda=cuda)


#: Tasks that train in several processes, each checked against one process with the same global batch
#: (tests/test_distributed.py). sft tokenises once for all ranks; dpo's rows are rendered the same on every rank
#: and TRL tokenises them in memory on each (no cache files to race on; small next to training). The other TRL
#: tasks (kto: its KL term is taken within each rank's batch; grpo: sampling per rank) and classification have
#: not been run with several.
MULTI_PROCESS_TASKS = ("sft", "dpo")


def check_strategy(cfg, world: World, *, cuda: bool) -> None:
    """What the processes actually started (their number, the device, the installed engines) allow; the
    combinations no world allows are refused when the config loads (`config/distributed.py`)."""
    strategy = cfg.distributed.strategy
    backend(cfg, cuda=cuda)
    if world.size > 1 and cfg.task not in MULTI_PROCESS_TASKS:
        raise ConfigError(f"several processes train task: {' or '.join(MULTI_PROCESS_TASKS)} so far, not task: "
                          f"{cfg.task}", where="task", hint="train this task in one process (no --nproc)")
    if strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed.strategy: deepspeed needs the deepspeed package, which is not installed",
                              where="distributed.strategy",
                              hint="pip install deepspeed (on a CUDA machine), or use strategy: fsdp or ddp")
        if not cuda:
            raise ConfigError("DeepSpeed ZeRO trains on GPUs; this machine has no CUDA device",
                              where="distributed.strategy", hint="use strategy: ddp or fsdp on CPUs")
    if strategy in ("fsdp", "deepspeed") and not world.launched:
        raise ConfigError(f"strategy {strategy} runs under a launcher, even on one device (it needs the process "
                          f"group the launcher's rendezvous sets up)", where="distributed.strategy",
                          hint="tunesmith train CONFIG --nproc N (or torchrun / accelerate launch: "
                               "docs/distributed.md)")
    if strategy == "fsdp" and not cuda:
        # accelerate (1.16) turns on FSDP for accelerator processes only; CPU processes would silently train as DDP,
        # with every rank holding the whole model (tried: tests/test_distributed.py, docs/distributed.md).
        raise ConfigError("FSDP runs on GPUs: accelerate does not shard CPU processes (they would silently train "
                          "as DDP)", where="distributed.strategy", hint="use strategy: ddp on CPUs")


def deepspeed_config(cfg) -> dict | str:
    """The DeepSpeed JSON: the user's file as is, or one built from `distributed.deepspeed`. Batch size, gradient
    accumulation, clipping and precision stay "auto": transformers fills them from the TrainingArguments, so the run
    trains the same batches whichever engine runs it."""
    ds = cfg.distributed.deepspeed
    if ds.config_file is not None:
        return ds.config_file
    zero: dict = {"stage": ds.stage, "overlap_comm": True, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.stage == 3:
        # The saved weights are whole tensors in one file (not ZeRO shards): the run folder loads without DeepSpeed.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": zero, "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


def trainer_arguments(cfg, world: World, *, cuda: bool) -> dict:
    """TrainingArguments fields for the strategy; none for a world of one without a launcher."""
    if not world.launched:
        return {}
    dist = cfg.distributed
    args: dict = {"ddp_backend": backend(cfg, cuda=cuda), "ddp_timeout": dist.timeout_minutes * 60}
    if not cuda:
        # accelerate counts CPU processes as one distributed world only when told it runs on the CPU; otherwise each
        # rank believes it is alone (no gathered token counts, the loss scaled by the world size twice).
        args["use_cpu"] = True
    if dist.strategy == "ddp":
        # Every trained tensor takes part in each step; DDP's search for unused ones (its default for PEFT models)
        # costs a graph walk per step and trips over tensors the fused loss differentiates itself.
        args["ddp_find_unused_parameters"] = False
    elif dist.strategy == "fsdp":
        fsdp = dist.fsdp
        # TRANSFORMER_BASED_WRAP with no class names wraps each of the model's `_no_split_modules`: its decoder layer.
        config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_offload": fsdp.cpu_offload,
                  "reshard_after_forward": fsdp.reshard_after_forward, "state_dict_type": "FULL_STATE_DICT"}
        if cfg.training.gradient_checkpointing:
            # FSDP's own checkpointing per wrapped layer; the Trainer's would all-gather each layer once more.
            config["activation_checkpointing"] = True
            args["activation_checkpointing"] = False
            args["activation_checkpointing_kwargs"] = None
        args.update(fsdp=True, fsdp_config=config)
        if fsdp.sharding == "hybrid" and world.nodes > 1:
            from accelerate.parallelism_config import ParallelismConfig

            # Sharded within each machine (fast links), replicated across machines.
            args["parallelism_config"] = ParallelismConfig(dp_replicate_size=world.nodes,
                                                           dp_shard_size=world.local_size)
    elif dist.strategy == "deepspeed":
        args["deepspeed"] = deepspeed_config(cfg)
    return args


def join_process_group(cfg, world: World, *, cuda: bool) -> None:
    """Join the launcher's process group now, before the data step needs it (`main_process_first`); the Trainer's
    accelerate state later reuses it."""
    if not world.launched:
        return
    if cfg.distributed.strategy == "deepspeed":
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate then lets DeepSpeed set the group up
    from accelerate import PartialState

    if not world.is_main:  # rank 0's bars (model loading) are the ones the user sees
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    PartialState(cpu=not cuda, backend=backend(cfg, cuda=cuda),
                 timeout=timedelta(minutes=cfg.distributed.timeout_minutes))


def main_process_first(world: World):
    """Rank 0 runs the block first (tokenises and writes the data cache); the others wait, then run it and read
    the cache rank 0 wrote."""
    if world.size == 1:
        return nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def barrier(world: World) -> None:
    if world.size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


@contextmanager
def only_main(world: World) -> Iterator[bool]:
    """Yields whether this process writes; every rank leaves together, so no rank reads before the writer wrote."""
    try:
        yield world.is_main
    finally:
        barrier(world)


# --- resuming with another number of processes ------------------------------------------------------------------

def global_batch(cfg, world: World) -> int:
    """Examples per optimizer step over all ranks (every strategy here is data-parallel)."""
    return cfg.training.batch_size * cfg.training.grad_accum * world.size


def process_record(cfg, world: World):
    """A callback that writes the process count and the global batch into each checkpoint's trainer_state.json
    (transformers' stateful callbacks), for `check_resume_world`."""
    from transformers.trainer_callback import ExportableState, TrainerCallback

    class ProcessRecord(TrainerCallback, ExportableState):
        def state(self) -> dict:
            return {"args": {"processes": world.size, "global_batch": global_batch(cfg, world)}, "attributes": {}}

    return ProcessRecord()


def check_resume_world(checkpoint, cfg, world: World) -> str | None:
    """Whether the run can continue from `checkpoint` in this world; a note when the process count changed.

    The Trainer resumes by skipping the optimizer steps already taken, counted in batches of the new world. With the
    same global batch those are the same examples (the seeded sampler's order split over the ranks, as one process
    would take it) and the schedule's steps mean what they meant; with another, the run would re-train or skip
    examples. DDP keeps whole copies of the weights and optimizer state, so any process count can load them;
    FSDP's and DeepSpeed's per-rank shards are not re-sharded here (not verified), so they keep their count."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    record = (state.get("stateful_callbacks") or {}).get("ProcessRecord")
    if not record:
        return None  # written before tunesmith recorded it: nothing to compare
    before = record["args"]
    processes, batch = before["processes"], before["global_batch"]
    now = global_batch(cfg, world)
    if batch != now:
        raise ConfigError(
            f"{Path(checkpoint).name} was trained with a global batch of {batch} ({processes} process"
            f"{'es' * (processes > 1)}); this run's is {now} (batch_size {cfg.training.batch_size} x grad_accum "
            f"{cfg.training.grad_accum} x {world.size} process{'es' * (world.size > 1)}), so the examples already "
            f"trained on and the learning-rate schedule would not carry over",
            where="training.batch_size / training.grad_accum",
            hint=f"keep batch_size x grad_accum x processes = {batch}")
    if processes != world.size and cfg.distributed.strategy in ("fsdp", "deepspeed"):
        raise ConfigError(
            f"{Path(checkpoint).name} holds {cfg.distributed.strategy}'s state sharded over {processes} processes; "
            f"resuming it in {world.size} is not supported", where="--nproc",
            hint=f"resume with {processes} processes (DDP checkpoints can change the count)")
    if processes != world.size:
        return f"resuming a {processes}-process run in {world.size}; the global batch stays {batch}"
    return None
