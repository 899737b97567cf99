"""Several processes on CPUs (gloo): the config checks, the launcher's failure report, and a real 2-process DDP run
against a 1-process run with the same global batch (docs/distributed.md)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.config.loading import validate_config
from tunesmith.errors import ConfigError
from tunesmith.training.launch import DistributedRunFailed

from .conftest import EXAMPLES, ROOT

STORIES_DATA = str(EXAMPLES / "data" / "stories_chat.jsonl")
WORKER = str(Path(__file__).with_name("distributed_worker.py"))


def config(model_dir, out_dir, *, method=None, distributed=None, **training) -> dict:
    """A small stories260K LoRA run in fp32, batches in file order per seed (no length grouping), no packing."""
    return {
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "method": method or {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": [{"path": STORIES_DATA}], "template": "alpaca_en", "max_length": 128, "packing": False},
        "training": {"output_dir": str(out_dir), "max_steps": 4, "batch_size": 4, "learning_rate": 5e-3,
                     "logging_steps": 1, "save_steps": 2, "warmup_ratio": 0.0, "tensorboard": False,
                     "lr_scheduler": "constant", "group_by_length": False, **training},
        **({"distributed": distributed} if distributed else {}),
    }


# --- the config: what no process count makes work ------------------------------------------------------------------


@pytest.mark.parametrize("method, strategy, where", [
    ({"name": "houlsby"}, "fsdp", "distributed.strategy"),
    ({"name": "prompt"}, "deepspeed", "distributed.strategy"),
    ({"name": "qlora"}, "fsdp", "distributed.strategy"),
])
def test_methods_that_cannot_be_sharded_are_refused(tmp_path, method, strategy, where):
    with pytest.raises(ConfigError) as err:
        validate_config(config("m", tmp_path, method=method, distributed={"strategy": strategy}))
    assert err.value.where.endswith(where) and strategy in str(err.value)


def test_qlora_with_zero3_is_refused_and_engine_options_need_their_strategy(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config(config("m", tmp_path, method={"name": "qlora"},
                               distributed={"strategy": "deepspeed", "deepspeed": {"stage": 3}}))
    assert err.value.where.endswith("distributed.deepspeed.stage")
    with pytest.raises(ConfigError) as err:
        validate_config(config("m", tmp_path, distributed={"deepspeed": {"stage": 2}}))
    assert err.value.where.endswith("distributed.deepspeed")
    with pytest.raises(ConfigError) as err:
        validate_config(config("m", tmp_path, distributed={"strategy": "deepspeed",
                                                           "deepspeed": {"stage": 2, "offload_params": True}}))
    assert err.value.where.endswith("distributed.deepspeed.offload_params")


def test_what_the_started_processes_allow(tmp_path, monkeypatch):
    import tunesmith.training.distributed as dist

    cfg = validate_config(config("m", tmp_path))
    with pytest.raises(ConfigError) as err:
        dist.check_nproc(cfg, 64, cuda=False)  # more processes than this machine's CPUs
    assert err.value.where == "--nproc"
    with pytest.raises(ConfigError) as err:
        dist.check_nproc(cfg, 0, cuda=False)
    assert err.value.where == "--nproc"
    fsdp = validate_config(config("m", tmp_path, distributed={"strategy": "fsdp"}))
    with pytest.raises(ConfigError) as err:  # FSDP needs the launcher's process group, even for one process
        dist.check_strategy(fsdp, dist.World(), cuda=False)
    assert err.value.where == "distributed.strategy" and "--nproc" in err.value.hint
    deepspeed = validate_config(config("m", tmp_path, distributed={"strategy": "deepspeed"}))
    monkeypatch.setattr(dist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        dist.check_nproc(deepspeed, 1, cuda=False)
    assert err.value.where == "distributed.strategy" and "not installed" in str(err.value)
    dist.check_nproc(validate_config({**config("m", tmp_path), "task": "dpo"}), 2, cuda=False)  # dpo: tested below
    kto = validate_config({**config("m", tmp_path), "task": "kto"})
    with pytest.raises(ConfigError) as err:
        dist.check_nproc(kto, 2, cuda=False)
    assert err.value.where == "task" and "sft or dpo" in str(err.value)


def test_a_checkpoint_resumes_in_another_process_count_only_with_its_global_batch(tmp_path):
    """What a checkpoint's recorded processes and global batch allow (the real resume runs further below)."""
    import tunesmith.training.distributed as dist

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "stateful_callbacks": {
        "ProcessRecord": {"args": {"processes": 2, "global_batch": 8}, "attributes": {}}}}))
    four = dist.World(size=4, local_size=4, launched=True)
    ddp = validate_config(config("m", tmp_path, batch_size=2))
    two = dist.World(size=2, local_size=2, launched=True)
    assert dist.check_resume_world(checkpoint, validate_config(config("m", tmp_path, batch_size=4)), two) is None
    assert "2-process run in 4" in dist.check_resume_world(checkpoint, ddp, four)
    with pytest.raises(ConfigError) as err:  # 4 x 4 = 16, not 8
        dist.check_resume_world(checkpoint, validate_config(config("m", tmp_path, batch_size=4)), four)
    assert "global batch of 8" in str(err.value) and "= 8" in err.value.hint
    fsdp = validate_config(config("m", tmp_path, batch_size=2, distributed={"strategy": "fsdp"}))
    with pytest.raises(ConfigError) as err:  # sharded state keeps its process count
        dist.check_resume_world(checkpoint, fsdp, four)
    assert err.value.where == "--nproc" and "2 processes" in err.value.hint
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))  # an older checkpoint
    assert dist.check_resume_world(checkpoint, fsdp, four) is None


def test_engine_settings_reach_the_trainer_arguments(tmp_path):
    from tunesmith.training.distributed import World, deepspeed_config, trainer_arguments

    world = World(rank=1, local_rank=1, size=4, local_size=2, launched=True)
    assert trainer_arguments(validate_config(config("m", tmp_path)), World(), cuda=False) == {}
    ddp = trainer_arguments(validate_config(config("m", tmp_path)), world, cuda=False)
    assert ddp["ddp_backend"] == "gloo" and ddp["use_cpu"] and ddp["ddp_find_unused_parameters"] is False
    cfg = validate_config(config("m", tmp_path, gradient_checkpointing=True,
                                 distributed={"strategy": "fsdp", "fsdp": {"sharding": "hybrid"}}))
    fsdp = trainer_arguments(cfg, world, cuda=True)
    assert fsdp["fsdp"] is True and fsdp["ddp_backend"] == "nccl"
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["activation_checkpointing"] is True
    assert fsdp["activation_checkpointing"] is False  # FSDP's own checkpointing, not the Trainer's
    mesh = fsdp["parallelism_config"]
    assert (mesh.dp_replicate_size, mesh.dp_shard_size) == (2, 2)  # 2 machines x 2 processes
    ds = deepspeed_config(validate_config(config("m", tmp_path, distributed={
        "strategy": "deepspeed", "deepspeed": {"stage": 3, "offload_optimizer": True, "offload_params": True}})))
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu" and zero["stage3_gather_16bit_weights_on_model_save"]
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from the TrainingArguments by transformers
    given = validate_config(config("m", tmp_path, distributed={"strategy": "deepspeed",
                                                                "deepspeed": {"config_file": "ds.json"}}))
    assert deepspeed_config(given) == "ds.json"


def test_a_failed_rank_stops_the_launch_with_its_name(tmp_path):
    from tunesmith.training.launch import DistributedRunFailed, launch_local

    script = tmp_path / "rank.py"
    script.write_text("import os, signal, time\n"
                      "if os.environ['RANK'] == '1':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(60)\n")
    with pytest.raises(DistributedRunFailed) as err:
        launch_local([str(script)], 2, cuda=False)
    assert "rank 1 of 2 was killed by SIGKILL" in str(err.value) and err.value.exit_code != 0
    script.write_text("import os, sys\nsys.exit(2)\n")  # every rank refused the config: its exit code
    with pytest.raises(DistributedRunFailed) as err:
        launch_local([str(script)], 2, cuda=False)
    assert err.value.exit_code == 2


# --- a real 2-process run -------------------------------------------------------------------------------------------


def records(folder: Path, rank: int) -> dict[int, list]:
    path = folder / f"rank{rank}.jsonl"
    steps: dict[int, list] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        steps[row["step"]] = row["rows"]  # a resumed run records its steps again: the last ones count
    return steps


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter_model.safetensors")


def launch_worker(tmp_path, monkeypatch, records_dir: Path, train_args: list[str], kill_rank=-1, kill_step=0):
    from tunesmith.training.launch import launch_local

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    records_dir.mkdir(exist_ok=True)
    launch_local([WORKER, str(records_dir), str(kill_rank), str(kill_step), "--", *train_args], 2, cuda=False,
                 executable=sys.executable)


def two_process_config(stories_dir, tmp_path) -> list[str]:
    import yaml

    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(config(stories_dir, tmp_path / "two", batch_size=2)))
    return ["train", str(config_file)]


@pytest.mark.slow
def test_two_ddp_processes_train_as_one_with_the_same_global_batch(stories_dir, tmp_path, monkeypatch):
    """1 process with batch 4 against 2 processes with batch 2 each: the same batches (the seeded sampler's order,
    each rank a disjoint half), the same losses and adapter to 1e-5; rank 0 alone writes the run folder."""
    from tests.distributed_worker import recording_step
    from tunesmith.recipes import train
    from tunesmith.training.trainer import TunesmithTrainer

    one_records, two_records = tmp_path / "one_records", tmp_path / "two_records"
    one_records.mkdir()
    monkeypatch.setattr(TunesmithTrainer, "training_step", recording_step(one_records))
    train(validate_config(config(stories_dir, tmp_path / "one")))
    launch_worker(tmp_path, monkeypatch, two_records, two_process_config(stories_dir, tmp_path))

    one, rank0, rank1 = records(one_records, 0), records(two_records, 0), records(two_records, 1)
    assert sorted(one) == sorted(rank0) == sorted(rank1) == [1, 2, 3, 4]
    for step in one:
        shares = [Counter(map(tuple, rank0[step])), Counter(map(tuple, rank1[step]))]
        assert not shares[0] & shares[1], step  # disjoint
        assert shares[0] + shares[1] == Counter(map(tuple, one[step])), step  # complete: the 1-process batch
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    single, double = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    assert single.keys() == double.keys()
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-5
    run = tmp_path / "two"
    for name in ("config.yaml", "train.log", "metrics.jsonl", "loss.png", "README.md", "tunesmith_run.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "checkpoint-4" / "rng_state_1.pth").is_file()  # each rank's RNG, for resume


@pytest.mark.slow
def test_two_ddp_processes_run_dpo_as_one_with_the_same_global_batch(stories_dir, tmp_path, monkeypatch):
    """DPO (TRL's trainer under tunesmith's run skeleton): 1 process with 4 pairs a batch against 2 with 2 each, the
    pairs in file order: the same losses and adapter to 1e-5; the reference stays the base on every rank."""
    import yaml

    from tunesmith.recipes import train

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Where did {name} go?", "chosen": f"{name} went to the {place}.",
                                         "rejected": "I do not know."}) + "\n"
                             for name in ("Tom", "Lily", "Ben", "Mia") for place in ("park", "sea")))

    def dpo(out, batch):
        raw = config(stories_dir, out, batch_size=batch)
        raw.update(task="dpo", data={"train": [{"path": str(pairs)}], "template": "alpaca_en", "max_length": 64})
        return raw

    train(validate_config(dpo(tmp_path / "one", 4)))
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(dpo(tmp_path / "two", 2)))
    launch_worker(tmp_path, monkeypatch, tmp_path / "records", ["train", str(config_file)])
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert losses(tmp_path / "one")[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference at step 1
    single, double = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    assert single.keys() == double.keys()
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-5


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_cleanly_and_it_resumes(stories_dir, tmp_path, monkeypatch):
    """Rank 1 is killed (SIGKILL) at step 3: the run fails naming it, with checkpoint-2 complete and nothing saved;
    `--resume` finishes it."""
    train_args = two_process_config(stories_dir, tmp_path)
    with pytest.raises(DistributedRunFailed) as err:
        launch_worker(tmp_path, monkeypatch, tmp_path / "records", train_args, kill_rank=1, kill_step=3)
    assert "rank 1 of 2 was killed by SIGKILL" in str(err.value) and err.value.exit_code != 0
    assert (tmp_path / "two" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "two" / "adapter_model.safetensors").exists()
    launch_worker(tmp_path, monkeypatch, tmp_path / "records", [*train_args, "--resume"])
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()


def test_fsdp_on_cpus_is_refused_since_accelerate_would_run_ddp(tmp_path):
    """accelerate 1.16 applies its FSDP plugin to accelerator processes only: on CPUs a 2-process fsdp run trained as
    DDP (and failed in DDP's gradient hooks). Refused by name rather than silently unsharded."""
    from tunesmith.training.distributed import World, check_strategy

    cfg = validate_config(config("m", tmp_path, distributed={"strategy": "fsdp"}))
    with pytest.raises(ConfigError) as err:
        check_strategy(cfg, World(size=2, local_size=2, launched=True), cuda=False)
    assert err.value.where == "distributed.strategy" and "ddp" in err.value.hint


def test_the_planner_estimates_each_strategy_per_rank(stories_dir, tmp_path):
    from tunesmith.planning.memory import plan_memory
    from tunesmith.planning.params import load_model_config
    from tunesmith.planning.preflight import request_from_config

    model_config = load_model_config(str(stories_dir))
    peaks, stages = {}, {}
    for name, dist in [("ddp", None), ("zero2", {"strategy": "deepspeed", "deepspeed": {"stage": 2}}),
                       ("fsdp", {"strategy": "fsdp"})]:
        cfg = validate_config(config(stories_dir, tmp_path, method={"name": "full"}, distributed=dist))
        request = request_from_config(cfg, "cuda", devices=4)
        stages[name], peaks[name] = request.zero_stage, plan_memory(model_config, request).peak
    assert stages == {"ddp": 0, "zero2": 2, "fsdp": 3}
    assert peaks["ddp"] > peaks["zero2"] > peaks["fsdp"]


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process_with_the_same_global_batch(stories_dir, tmp_path, monkeypatch):
    """2 processes x batch 2, killed at step 3, resume from checkpoint-2 in one process: with batch 2 (a global batch
    of 2, not 4) it is refused before anything loads; with batch 4 it finishes with the adapter that one process
    training throughout makes (to 1e-5): the same examples, optimizer state and schedule carried over."""
    from tunesmith.recipes import train

    with pytest.raises(DistributedRunFailed):
        launch_worker(tmp_path, monkeypatch, tmp_path / "records", two_process_config(stories_dir, tmp_path),
                      kill_rank=1, kill_step=3)
    state = json.loads((tmp_path / "two" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["ProcessRecord"]["args"] == {"processes": 2, "global_batch": 4}
    with pytest.raises(ConfigError, match="global batch of 4") as err:
        train(validate_config(config(stories_dir, tmp_path / "two", batch_size=2)), resume=True)
    assert "batch_size x grad_accum x processes = 4" in err.value.hint
    train(validate_config(config(stories_dir, tmp_path / "two", batch_size=4)), resume=True)
    train(validate_config(config(stories_dir, tmp_path / "one")))
    resumed, single = adapter(tmp_path / "two"), adapter(tmp_path / "one")
    assert resumed.keys() == single.keys()
    assert max((resumed[k] - single[k]).abs().max().item() for k in single) < 1e-5
