"""Each stage as a normal tunesmith run: its data split once into training and held-out files, and its run config
written from `base`, the stage, and the strategy.

The split is written to disk (`PIPELINE/data/<stage>/`) as plain `messages` records, after the dataset options
(format, columns, system prompt, placeholders, max_samples) were applied: the stage's run trains on exactly the
`train-*.jsonl` files, the evaluation scores exactly `eval.jsonl`, and a resumed pipeline reads the same files.
"""

from __future__ import annotations

import copy
import json
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config.loading import validate_config
from ..config.schema import RunConfig
from ..data.dataset import load_samples
from ..errors import DataError
from ..io import atomic_write_text
from .config import PipelineConfig, Stage


@dataclass
class StageData:
    train: list[tuple[Path, int, float | None]]  # (file, records, the user's weight or None)
    eval_file: Path


def split_stage_data(stage: Stage, index: int, folder: Path, seed: int) -> StageData:
    """Hold out `stage.heldout` of each dataset (unless `stage.eval` is given) and write both parts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:{index}:{stage.name}")  # a string seed: the same split in every process
    train, held = [], []
    for k, spec in enumerate(stage.data):
        records = [s.messages for s in load_samples(spec)]
        count = 0 if stage.eval else min(len(records) - 1, heldout_count(stage.heldout, len(records)))
        if count < 1 and not stage.eval:
            raise DataError(f"{len(records)} records cannot be split into training and held-out data",
                            file=spec.path, hint="add records, or give the stage its own `eval` data")
        picked = set(rng.sample(range(len(records)), count))
        held += [r for i, r in enumerate(records) if i in picked]
        file = folder / f"train-{k}.jsonl"
        write_messages(file, [r for i, r in enumerate(records) if i not in picked])
        train.append((file, len(records) - count, spec.weight if "weight" in spec.model_fields_set else None))
    for spec in stage.eval:
        held += [s.messages for s in load_samples(spec)]
    eval_file = folder / "eval.jsonl"
    write_messages(eval_file, held)
    return StageData(train, eval_file)


def heldout_count(heldout: float, records: int) -> int:
    return max(1, round(heldout * records)) if heldout < 1 else int(heldout)


def write_messages(path: Path, conversations: list) -> None:
    atomic_write_text(path, "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations))


def stage_run_config(cfg: PipelineConfig, index: int, data: list[StageData], *, start_model: str,
                     output_dir: Path, source: str = "pipeline") -> RunConfig:
    """The run config of stage `index` (0-based): `base` with the stage's data and training options, starting from
    `start_model`, plus what the strategy adds (replayed data, the `retain:` section). `data`: every stage's split
    up to this one."""
    stage, strategy = cfg.stages[index], cfg.strategy
    raw = copy.deepcopy(cfg.base)
    raw["model"] = {**section(raw, "model"), "name_or_path": start_model}
    raw["training"] = {**section(raw, "training"), **stage.training, "output_dir": str(output_dir)}
    own, earlier = data[index], data[:index]
    ratio = getattr(strategy, "ratio", None) if strategy.name == "replay" else None
    if strategy.name == "kd" and strategy.on != "train":
        ratio = None  # replayed through retain.replay below: the distillation reads it from there
    train = replay_mix(own, earlier, ratio) if ratio and earlier else plain_specs(own)
    raw["data"] = {**section(raw, "data"), "train": train[0]}
    if train[1]:
        raw["data"]["num_samples"] = train[1]
    retain = retain_section(cfg, earlier)
    if retain:
        raw["retain"] = retain
    return validate_config(raw, source=f"{source}: stages[{index}] ({stage.name})")


def section(raw: dict, name: str) -> dict:
    """A section of `base` to extend; one that is not a mapping is the run config's error to report."""
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        from ..errors import ConfigError

        raise ConfigError(f"base.{name} must be a mapping of its fields", where=f"base.{name}")
    return value


def plain_specs(own: StageData) -> tuple[list[dict], None]:
    return [spec(file, weight) for file, _, weight in own.train], None


def spec(file: Path, weight: float | None = None) -> dict:
    return {"path": str(file), "format": "openai", **({"weight": weight} if weight is not None else {})}


def replay_mix(own: StageData, earlier: list[StageData], ratio: float) -> tuple[list[dict], int]:
    """The stage's data at 1 - ratio of the mix and the earlier stages' at ratio, split evenly between the earlier
    stages (within one, by its files' sizes). The total is set so that every sample of the stage's own data is
    drawn once; replayed data repeats only when it is smaller than its share."""
    own_sizes = [weight if weight is not None else records for _, records, weight in own.train]
    specs = [spec(file, (1 - ratio) * size / sum(own_sizes)) for (file, _, _), size in zip(own.train, own_sizes)]
    for stage in earlier:
        records = sum(r for _, r, _ in stage.train)
        specs += [spec(file, ratio / len(earlier) * r / records) for file, r, _ in stage.train]
    return specs, math.ceil(sum(r for _, r, _ in own.train) / (1 - ratio))


def earlier_specs(earlier: list[StageData]) -> list[dict]:
    return [spec(file) for stage in earlier for file, _, _ in stage.train]


def retain_section(cfg: PipelineConfig, earlier: list[StageData]) -> dict | None:
    """The run config's `retain:` for l2sp / ewc / kd: θ₀, the teacher and the Fisher's model are the model the
    run starts from, i.e. the previous stage's result. The first stage has no earlier stage to keep: none."""
    s = cfg.strategy
    if not earlier or s.name not in ("l2sp", "ewc", "kd"):
        return None
    if s.name == "l2sp":
        return {"l2sp": {"weight": s.weight}}
    if s.name == "ewc":
        return {"ewc": {"weight": s.weight, "data": earlier_specs(earlier), "samples": s.samples}}
    retain = {"kd": {"weight": s.weight, "temperature": s.temperature, "on": s.on}}
    if s.on != "train":
        retain["replay"] = {"data": earlier_specs(earlier), "ratio": s.replay_ratio}
    return retain


def check_stage_configs(cfg: PipelineConfig, source: str) -> None:
    """Validate every stage's run config before anything runs, with empty placeholder files for the splits (the run
    config checks that `retain:` data files exist)."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-pipeline-check-") as tmp:
        placeholder = []
        for stage in cfg.stages:
            files = [Path(tmp) / f"{stage.name}-train-{k}.jsonl" for k in range(len(stage.data))]
            for file in files:
                file.touch()
            placeholder.append(StageData([(file, 1, None) for file in files], Path(tmp) / f"{stage.name}-eval.jsonl"))
        for i, stage in enumerate(cfg.stages):
            stage_run_config(cfg, i, placeholder, start_model=section(cfg.base, "model").get("name_or_path", ""),
                             output_dir=Path(cfg.output_dir) / "stages" / f"{i + 1}-{stage.name}", source=source)
