"""PIPELINE.yaml: the base run, the ordered stages, the strategy; validated before any model loads.

    output_dir: runs/continual
    base:                                   # a run config without data.train (the stages give it)
      model: {name_or_path: smollm2-135m-instruct}
      method: {name: lora, r: 8}
      data: {template: model, max_length: 512}
      training: {num_epochs: 1, batch_size: 4}
    strategy: {name: replay, ratio: 0.2}
    stages:
      - {name: english, data: [{path: alpaca_en_demo.json, max_samples: 300}]}
      - {name: chinese, data: [{path: alpaca_zh_demo.json}], heldout: 0.1}
      - {name: persona, data: [{path: identity.json}], eval: [{path: identity_test.json}]}

Every stage's run config is checked here too (`stage_run_configs`), so a typo in `base` or in a stage's `training`
fails before the first stage trains, naming the pipeline file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.base import StrictModel
from ..config.loading import explain_validation_error, read_yaml_file
from ..config.schema import DatasetSpec
from ..errors import ConfigError, TunesmithError


class Sequential(StrictModel):
    """Each stage trains from the previous stage's result on its own data only: the naive baseline."""

    name: Literal["sequential"]


class Replay(StrictModel):
    """A share of the earlier stages' training data mixed into each stage's data."""

    name: Literal["replay"]
    ratio: float = Field(0.2, gt=0, lt=1, description="share of each stage's training samples drawn from the earlier "
                                                       "stages' data (split evenly between them)")


class L2SP(StrictModel):
    """λ·‖θ − θ_prev‖²: a pull toward the previous stage's weights (the run config's `retain.l2sp`)."""

    name: Literal["l2sp"]
    weight: float = Field(gt=0, description="λ")


class EWC(StrictModel):
    """λ/2·Σ F·(θ − θ_prev)², F the previous stage's diagonal Fisher on the earlier stages' data (`retain.ewc`)."""

    name: Literal["ewc"]
    weight: float = Field(gt=0, description="λ")
    samples: int = Field(128, gt=0, description="samples the Fisher is estimated on")


class KD(StrictModel):
    """KL to the previous stage's next-token distribution (`retain.kd`); with `on: replay|both` the earlier stages'
    data is replayed at `replay_ratio` as the distillation data."""

    name: Literal["kd"]
    weight: float = Field(gt=0, description="α")
    temperature: float = Field(2.0, gt=0)
    on: Literal["replay", "train", "both"] = "train"
    replay_ratio: float = Field(0.2, gt=0, lt=1, description="on: replay|both: share of the earlier stages' data")


class ProgressiveLora(StrictModel):
    """A new LoRA adapter per stage over the earlier stages' frozen ones; the result is their sum on the base."""

    name: Literal["progressive_lora"]
    fold: bool = Field(False, description="also fold the final adapters into the base: a standalone model")


class Merge(StrictModel):
    """Each stage trained apart from the base model; after each, the stages so far merged (tunesmith merge)."""

    name: Literal["merge"]
    method: Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"] = "ties"
    parameters: dict[str, Any] = Field(default_factory=dict, description="the merge method's parameters, e.g. "
                                                                         "{density: 0.5}")
    weight: float = Field(1.0, description="every stage's weight in the merge")
    density: float | None = Field(None, gt=0, le=1, description="ties / dare: the share of each stage's task vector "
                                                                "kept (default: the method's)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="of the merged model; float32 keeps all of each stage's (small) update")


Strategy = Annotated[Union[Sequential, Replay, L2SP, EWC, KD, ProgressiveLora, Merge], Field(discriminator="name")]
# Methods whose adapters tunesmith's merging code reads as plain LoRA factors (combine, fold, merge).
PLAIN_LORA = ("lora", "rslora", "loraplus")
# Keys of `base` the pipeline sets for every stage.
PIPELINE_OWNED = {"data": ("train", "validation", "val_size", "num_samples"), "training": ("output_dir",)}


class Stage(StrictModel):
    name: str = Field(description="the task's name in the retention matrix and its folder name")
    data: list[DatasetSpec] = Field(min_length=1, description="training data (as data.train of a run)")
    eval: list[DatasetSpec] = Field(default_factory=list, description="held-out data scored after every stage "
                                                                      "(default: `heldout` of `data`)")
    heldout: float = Field(0.1, gt=0, description="share (<1) or count (>=1) of each dataset's records held out "
                                                  "as the stage's evaluation data (when `eval` is empty); training "
                                                  "never sees them")
    training: dict[str, Any] = Field(default_factory=dict, description="training.* of this stage over base's")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"stage name {value!r} must be letters, digits, '_', '-', '.' (it names a folder)")
        return value


class Evaluation(StrictModel):
    metric: Literal["loss", "perplexity"] = Field("loss", description="response-token loss or perplexity on each "
                                                                      "task's held-out data (lower is better)")
    max_samples: int | None = Field(64, gt=0, description="held-out records scored per task")
    batch_size: int = Field(8, gt=0)


class PipelineConfig(StrictModel):
    output_dir: str = Field("runs/continual", description="the pipeline folder: stage runs, models, results")
    base: dict[str, Any] = Field(description="a run config (model, method, data options, training, speed) "
                                             "without data.train")
    strategy: Strategy = Field(default_factory=lambda: Sequential(name="sequential"))
    stages: list[Stage] = Field(min_length=1)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    seed: int = Field(42, ge=0, description="the held-out splits")

    @field_validator("strategy", mode="before")
    @classmethod
    def _name_alone(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"stage names must be unique; repeated: {', '.join(repeated)}", where="stages")
        return self


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline file: its own fields, `base`, and every stage's run config."""
    raw = read_yaml_file(path, "pipeline file") or {}
    if not isinstance(raw, dict):
        raise ConfigError("a pipeline is a mapping with base, stages and strategy", where=str(path))
    return validate_pipeline(raw, source=str(path))


def validate_pipeline(raw: dict, source: str = "pipeline") -> PipelineConfig:
    try:
        cfg = PipelineConfig.model_validate(raw)
        check_base(cfg)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc).replace("invalid configuration", "invalid pipeline"),
                          where=source) from None
    except TunesmithError as exc:
        exc.where = f"{source}: {exc.where}" if exc.where else source
        raise
    from .stages import check_stage_configs

    check_stage_configs(cfg, source)  # names the file and the stage itself
    return cfg


def check_base(cfg: PipelineConfig) -> None:
    """What the stages cannot run with: keys the pipeline sets, a task other than sft, a method whose result cannot
    start the next stage, a strategy this tunesmith cannot express."""
    base = cfg.base
    for name in ("model", "data", "training"):
        if not isinstance(base.get(name) or {}, dict):
            raise ConfigError(f"base.{name} must be a mapping of its fields", where=f"base.{name}")
    if base.get("task", "sft") != "sft":
        raise ConfigError(f"a pipeline trains task: sft, not {base['task']}", where="base.task")
    for section, keys in PIPELINE_OWNED.items():
        for key in keys:
            if key in (base.get(section) or {}):
                raise ConfigError(f"base.{section}.{key} is set by the pipeline", where=f"base.{section}.{key}",
                                  hint="give data per stage (stages[].data, stages[].eval); the stage runs go "
                                       "under output_dir")
    if "retain" in base:
        raise ConfigError("base.retain is written by the strategy", where="base.retain",
                          hint="strategy: {name: l2sp | ewc | kd, weight: ...}")
    method = base.get("method", "lora")
    method = method.get("name") if isinstance(method, dict) else method
    from ..methods.registry import get_method

    artifact = get_method(method).artifact if isinstance(method, str) else None
    if artifact not in ("adapter", "full"):
        raise ConfigError(f"method {method} saves a {artifact} result, which the next stage cannot start from",
                          where="base.method", hint="use LoRA (or another PEFT adapter) or full fine-tuning")
    name = cfg.strategy.name
    if name == "progressive_lora" and method not in PLAIN_LORA:
        raise ConfigError(f"progressive_lora stacks LoRA adapters; method {method} is not one",
                          where="base.method", hint=f"use one of {', '.join(PLAIN_LORA)}")
    if name == "merge" and method not in (*PLAIN_LORA, "full"):
        raise ConfigError(f"the merge strategy merges LoRA adapters or full models, not {method}",
                          where="base.method", hint=f"use one of {', '.join(PLAIN_LORA)} or full")
    if name == "merge":
        from .models import merge_config

        try:  # the merge method's own checks, before any stage trains
            merge_config([Path(stage.name) for stage in cfg.stages], "base", cfg.strategy)
        except TunesmithError as exc:
            exc.where = f"strategy.{exc.where}" if exc.where else "strategy"
            raise
