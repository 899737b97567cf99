"""Run a pipeline: stage after stage, each a normal tunesmith run (`recipes.train`), every task seen so far scored
after each, the retention matrix written as it grows.

The pipeline folder:
    state.json              what is done (written atomically after every step: the resume point)
    data/<stage>/           the stage's training files and its held-out eval.jsonl
    stages/<i>-<stage>/     the stage's run folder (checkpoints, train.log, the model card)
    models/start-<i>/       the model stage i starts from (the previous stage's result folded into its weights)
    progressive/, merged/   progressive_lora's stacked adapters, merge's merged models after each stage
    retention.json, retention.png, README.md

Resuming (`resume=True`): a stage the state records as done is neither trained nor scored again; the stage that was
running resumes from its last checkpoint (`train(cfg, resume=True)`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_json
from ..models.reference import resolve_ref
from ..reporting import Reporter, reporter_or_default
from .config import PipelineConfig
from .models import fold, merge_stages, stack_adapters
from .report import write_results
from .scoring import score_model
from .stages import StageData, split_stage_data, stage_run_config

STATE = "state.json"
STATE_VERSION = 1


@dataclass
class PipelineResult:
    folder: Path
    tasks: list[str]
    matrix: list[list[float | None]]
    summary: dict
    final_model: str


def run_pipeline(cfg: PipelineConfig, *, resume: bool = False, reporter: Reporter | None = None,
                 source: str = "pipeline", extra_callbacks: list | None = None) -> PipelineResult:
    """Train and score every stage (see the module docstring); `extra_callbacks` go to every stage's Trainer."""
    from ..recipes import train

    reporter = reporter_or_default(reporter)
    folder = Path(cfg.output_dir)
    check_pipeline_folder(folder, source)
    folder.mkdir(parents=True, exist_ok=True)
    state = _read_state(folder) if resume else _start_over(folder)
    state.setdefault("version", STATE_VERSION)
    stages_state = state.setdefault("stages", {})
    base_model = cfg.base["model"]["name_or_path"]
    data_options = cfg.base.get("data") or {}
    template, max_length = data_options.get("template", "auto"), data_options.get("max_length", 1024)
    score = dict(evaluation=cfg.evaluation, template=template, max_length=max_length, reporter=reporter)

    splits: list[StageData] = [split_stage_data(stage, i, folder / "data" / stage.name, cfg.seed)
                               for i, stage in enumerate(cfg.stages)]
    tasks = {stage.name: split.eval_file for stage, split in zip(cfg.stages, splits)}
    if "start" not in state:
        reporter.info(f"scoring the starting model {base_model} on all {len(tasks)} tasks")
        state["start"] = score_model(base_model, tasks, label="start", **score)
        atomic_write_json(folder / STATE, state)

    start_model, run_dirs, evaluated = base_model, [], base_model
    for i, stage in enumerate(cfg.stages):
        run_dir = folder / "stages" / f"{i + 1}-{stage.name}"
        if cfg.strategy.name == "merge":
            start_model = base_model  # every stage trains apart from the base
        elif i:
            start_model = str(fold(run_dirs[-1], folder / "models" / f"start-{i + 1}", reporter))
        run_cfg = stage_run_config(cfg, i, splits, start_model=start_model, output_dir=run_dir, source=source)
        fingerprint = _fingerprint(run_cfg, splits[i])
        done = stages_state.get(stage.name, {})
        if done and done.get("fingerprint") != fingerprint:
            raise ConfigError(f"stage {stage.name} was trained with another config or data than the pipeline now "
                              f"gives it", where=f"{source}: stages[{i}]",
                              hint="run without --resume to start over, or choose another output_dir")
        if not done.get("trained"):
            reporter.info(f"stage {i + 1}/{len(cfg.stages)}: {stage.name} ({cfg.strategy.name})")
            train(run_cfg, resume=resume, reporter=reporter, extra_callbacks=extra_callbacks)
            done = stages_state[stage.name] = {"fingerprint": fingerprint, "trained": True, "run_dir": str(run_dir)}
            atomic_write_json(folder / STATE, state)
        run_dirs.append(run_dir)
        evaluated = _evaluated_model(cfg, run_dirs, folder, resolve_ref(base_model), reporter)
        if "scores" not in done:
            seen = dict(list(tasks.items())[:i + 1])
            done["scores"] = score_model(evaluated, seen, label=f"after {stage.name}", **score)
            done["model"] = evaluated
            atomic_write_json(folder / STATE, state)
        result = _result(cfg, folder, state, tasks, evaluated)
        write_results(result, cfg)
    if getattr(cfg.strategy, "fold", False):  # progressive_lora: the stack as a standalone model too
        fold(Path(evaluated), folder / "progressive" / "folded", reporter)
    return result


def check_pipeline_folder(folder: Path, source: str) -> None:
    """A pipeline writes README.md, data/, stages/ ... into its folder: one that holds other files is refused, so
    that no file of the user's is overwritten."""
    if not folder.is_dir():
        return
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if others and not any((folder / marker).exists() for marker in (STATE, "stages", "data")):
        raise ConfigError(f"{folder} is not a pipeline folder and is not empty ({', '.join(others[:5])})",
                          where=f"{source}: output_dir", hint="choose a new or empty folder")


def _evaluated_model(cfg: PipelineConfig, run_dirs: list[Path], folder: Path, base_model: str,
                     reporter: Reporter) -> str:
    """The model the pipeline stands at after the last of `run_dirs`: the stage's run; for progressive_lora its
    adapters stacked on the original base; for merge the stages so far merged."""
    name = f"after-{len(run_dirs)}"
    if cfg.strategy.name == "progressive_lora":
        return str(stack_adapters(run_dirs, folder / "progressive" / "adapters", folder / "progressive" / name,
                                  reporter))
    if cfg.strategy.name == "merge":
        out = folder / "merged" / name
        if not (out / "config.json").is_file():
            merge_stages(run_dirs, base_model, cfg.strategy, out, reporter)
        return str(out)
    return str(run_dirs[-1])


def _result(cfg: PipelineConfig, folder: Path, state: dict, tasks: dict, evaluated: str) -> PipelineResult:
    from .retention import retention_summary

    names = list(tasks)
    rows = [state["start"]] + [state["stages"][n]["scores"] for n in names if "scores" in state["stages"].get(n, {})]
    matrix = [[row.get(n) for n in names] for row in rows]
    complete = len(rows) == len(names) + 1
    summary = retention_summary(matrix, lower_is_better=True) if complete else {}
    return PipelineResult(folder, names, matrix, summary, evaluated)


def _fingerprint(run_cfg, split: StageData) -> str:
    """What makes a stage's result: its run config and its training files' contents."""
    digest = hashlib.sha256(json.dumps(run_cfg.model_dump(mode="json"), sort_keys=True).encode())
    for file, _, _ in split.train:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _start_over(folder: Path) -> dict:
    """A fresh start: the models derived from earlier stages go (each stage's run starts over by itself)."""
    for derived in ("models", "progressive", "merged"):
        shutil.rmtree(folder / derived, ignore_errors=True)
    (folder / STATE).unlink(missing_ok=True)
    return {}


def _read_state(folder: Path) -> dict:
    path = folder / STATE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the pipeline state: {exc}", where=str(path),
                          hint="run without --resume to start over") from None
    if state.get("version") != STATE_VERSION:
        raise ConfigError("the pipeline state was written by another tunesmith version", where=str(path),
                          hint="run without --resume to start over")
    return state
