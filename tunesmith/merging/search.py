"""Grid search over one merge parameter, keeping the candidate whose worst task keeps the most of its source.

Maximising the worst case (not the average) is the reference's advice: a merge that is good on average but
breaks one task has failed. Each trial is a full streamed merge plus an evaluation; sources are scored once.
"""

from __future__ import annotations

import itertools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .config import MergeConfig
from ..io import publish_dir_contents
from .engine import check_output, merge
from ..reporting import Reporter
from .evaluate import EvalSuite, Report, evaluate_merge


@dataclass
class Trial:
    values: tuple[float, ...]
    report: Report

    @property
    def objective(self) -> tuple[float, float]:
        kept = self.report.retention.values()
        return (self.report.worst_retention, sum(kept) / max(len(kept), 1))


def candidates(config: MergeConfig) -> list[tuple[float, ...]]:
    search = config.search
    per_model = search.param in ("weight", "density")
    grid = list(itertools.product(search.values, repeat=len(config.models))) if per_model \
        else [(v,) for v in search.values]
    if search.param == "weight":
        grid = [g for g in grid if any(abs(w) > 1e-8 for w in g)]  # all-zero weights merge nothing
    if len(grid) > search.max_trials:
        grid = random.Random(search.seed).sample(grid, search.max_trials)
    return grid


def apply(config: MergeConfig, values: tuple[float, ...]) -> MergeConfig:
    param = config.search.param
    if param in ("weight", "density"):
        models = [m.model_copy(update={param: v}) for m, v in zip(config.models, values)]
        return config.model_copy(update={"models": models, "search": None})
    return config.model_copy(update={"parameters": {**config.parameters, param: values[0]}, "search": None})


def search_merge(config: MergeConfig, suite: EvalSuite, sources: dict[str, str], output: Path, *,
                 overwrite: bool = False, on_trial=None, reporter: Reporter | None = None
                 ) -> tuple[MergeConfig, list[Trial]]:
    """Try every candidate; the best one is written to `output`. Returns its config and all trials. `reporter`
    shows which model is being scored."""
    if not any(task.source for task in suite.tasks):
        raise ConfigError("a weight search maximises the worst task relative to its source, but no task names "
                          "a `source`", where="tasks[].source")
    check_output(output, overwrite)  # refuse a non-empty output before spending time on trials
    scratch = output.parent / f".{output.name}.search"
    shutil.rmtree(scratch, ignore_errors=True)
    trials, best, cache = [], None, {}
    try:
        for i, values in enumerate(candidates(config)):
            trial_dir = scratch / f"trial-{i}"
            merge(apply(config, values), trial_dir)
            trial = Trial(values, evaluate_merge(str(trial_dir), sources, suite, cache, reporter))
            trials.append(trial)
            if on_trial:
                on_trial(i, trial)
            if best is None or trial.objective > best[1].objective:
                if best is not None:
                    shutil.rmtree(best[0], ignore_errors=True)
                best = (trial_dir, trial)
            else:
                shutil.rmtree(trial_dir, ignore_errors=True)
        chosen = apply(config, best[1].values)
        publish_dir_contents(best[0], output)  # the best trial already is the merge of `chosen`
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return chosen, trials
