"""Score a merge against the models it came from, task by task, and flag the failure signs.

What it measures (kept deliberately simple and honest):
- `metric: loss` (default): the mean cross-entropy of the reference replies' tokens (prompt tokens masked, the
  same masking as training), rendered through `template`; lower is better. Perplexity = exp(loss).
- `metric: exact_match`: greedy generation from the prompt, compared with the reference reply after trimming
  whitespace; the share that match, higher is better.
Every task names the `source` model its skill came from. A task is flagged when the merged model keeps less
than `min_retention` of its source's quality: retention = ppl_source / ppl_merged for loss,
accuracy_merged / accuracy_source for exact match — the reference's "a task far below its source" sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from ..config.base import StrictModel
from ..config.loading import read_yaml_file
from ..errors import ConfigError, ModelError
from ..reporting import Reporter, reporter_or_default


class EvalTask(StrictModel):
    name: str
    path: str = Field(description="instruction data (Alpaca/ShareGPT/OpenAI records) held out for evaluation")
    source: str | None = Field(None, description="the model this task's skill came from (a merge input)")
    max_samples: int | None = Field(None, gt=0)
    skip: int = Field(0, ge=0, description="records to skip first (e.g. those the source was trained on)")
    template: str | None = Field(None, description="prompt template of this task (default: the suite's)")


class EvalSuite(StrictModel):
    tasks: list[EvalTask] = Field(min_length=1)
    metric: Literal["loss", "exact_match"] = "loss"
    template: str = "auto"
    max_samples: int = Field(64, gt=0)
    max_length: int = Field(512, gt=8)
    batch_size: int = Field(8, gt=0)
    min_retention: float = Field(0.8, gt=0, le=1)
    min_score: float | None = Field(None, description="exact_match only: flag any task below this accuracy")


def load_suite(path: str | Path) -> EvalSuite:
    path = Path(path)
    data = read_yaml_file(path, "eval suite")
    try:
        return EvalSuite(**(data or {}))
    except (ValidationError, TypeError) as exc:
        if isinstance(exc, TypeError):
            raise ConfigError("expected a mapping with `tasks`", where=str(path)) from None
        error = exc.errors()[0]
        raise ConfigError(error["msg"], where=f"{path}: {'.'.join(map(str, error['loc']))}") from None


@dataclass
class Report:
    metric: str
    tasks: list[str]
    scores: dict[str, dict[str, float]]  # model label → task → score
    retention: dict[str, float]  # task → merged retention vs its source (1 = as good as the source)
    flags: list[str] = field(default_factory=list)

    def average(self, label: str) -> float:
        return sum(self.scores[label].values()) / len(self.tasks)

    def worst(self, label: str) -> float:
        values = self.scores[label].values()
        return max(values) if self.metric == "loss" else min(values)

    @property
    def worst_retention(self) -> float:
        return min(self.retention.values(), default=1.0)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "scores": self.scores, "retention": self.retention, "flags": self.flags,
                "average": {m: self.average(m) for m in self.scores}, "worst": {m: self.worst(m) for m in self.scores}}


def _records(task: EvalTask, limit: int) -> list[list[dict]]:
    from ..config.schema import DatasetSpec
    from ..data.formats import normalize_record
    from ..data.readers import read_records

    spec = DatasetSpec(path=task.path)
    records = read_records(task.path)[task.skip:task.skip + (task.max_samples or limit)]
    if not records:
        raise ConfigError(f"task '{task.name}' has no records left after skip: {task.skip}", where=task.path)
    return [normalize_record(r, spec) for r in records]


def load_task_data(suite: EvalSuite) -> dict[str, list[list[dict]]]:
    """Each task's conversations (also run before a merge, so that bad eval data fails before any work)."""
    return {task.name: _records(task, suite.max_samples) for task in suite.tasks}


def _load(folder: str):
    """The model and tokenizer of `folder` in float32, loaded as `tunesmith eval` loads a model."""
    from ..models.loading import load_for_inference

    try:
        return load_for_inference(folder, dtype="float32")
    except ModelError as exc:
        raise ModelError(f"could not load for evaluation: {exc.message}", where=folder, hint=exc.hint) from None


def _mean_loss(loaded, conversations, template: str, suite: EvalSuite) -> float:
    """The mean cross-entropy of the reference replies' tokens, scored as `tunesmith eval`'s perplexity tasks are."""
    from ..data.templates.registry import get_template
    from ..evaluation.metrics.perplexity import conversation_examples, score_examples

    tokenizer = loaded.tokenizer
    examples = conversation_examples(tokenizer, get_template(template, tokenizer), conversations, suite.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = score_examples(loaded.model, examples, pad_id=pad, batch_size=suite.batch_size)
    return scores["loss"] if scores["tokens"] else 0.0


def _exact_match(loaded, conversations, template: str, suite: EvalSuite) -> float:
    from ..inference.generation import Generator, SamplingOptions
    from ..models.loading import LoadedModel

    tokenizer = loaded.tokenizer
    generator = Generator(LoadedModel(loaded.model, tokenizer, template, {}))
    hits = 0
    for start in range(0, len(conversations), suite.batch_size):
        batch = conversations[start:start + suite.batch_size]
        longest = max(len(tokenizer(c[-1]["content"])["input_ids"]) for c in batch)
        answers = generator.generate([c[:-1] for c in batch], SamplingOptions(max_new_tokens=longest + 8))
        hits += sum(a.strip() == c[-1]["content"].strip() for a, c in zip(answers, batch))
    return hits / max(len(conversations), 1)


def score_model(folder: str, suite: EvalSuite, data: dict[str, list], reporter: Reporter | None = None
                ) -> dict[str, float]:
    score = _mean_loss if suite.metric == "loss" else _exact_match
    with reporter_or_default(reporter).status(f"scoring {folder}"):
        loaded = _load(folder)
        scores = {task.name: score(loaded, data[task.name], task.template or suite.template, suite)
                  for task in suite.tasks}
    del loaded
    return scores


def retention(metric: str, source: float, merged: float) -> float:
    if metric == "loss":
        return math.exp(source - merged)  # ppl_source / ppl_merged
    return merged / source if source > 0 else 1.0


def task_sources(suite: EvalSuite, sources: dict[str, str], origin: str = "suite") -> dict[str, str]:
    """Task name → label of the merge input it came from; checked before any model is merged or scored."""
    from ..models.reference import resolve_ref

    def same(ref: str) -> Path:  # one spelling per model: relative, absolute and PyPI names compare equal
        return Path(resolve_ref(ref)).expanduser().resolve()

    by_folder = {same(f): label for label, f in sources.items()}
    labels = {}
    for i, task in enumerate(suite.tasks):
        if task.source:
            labels[task.name] = by_folder.get(same(task.source))
            if labels[task.name] is None:
                raise ConfigError(f"task '{task.name}' names source {task.source}, which is not a merge input",
                                  where=f"{origin}: tasks.{i}.source", hint=f"one of: {', '.join(sources.values())}")
    return labels


def evaluate_merge(merged: str, sources: dict[str, str], suite: EvalSuite,
                   cache: dict[str, dict[str, float]] | None = None, reporter: Reporter | None = None) -> Report:
    """Score the merged folder and every source (label → folder); `cache` reuses source scores across calls."""
    labels = task_sources(suite, sources)
    data = load_task_data(suite)
    cache = {} if cache is None else cache
    scores = {"merged": score_model(merged, suite, data, reporter)}
    for label, folder in sources.items():
        if folder not in cache:
            cache[folder] = score_model(folder, suite, data, reporter)
        scores[label] = cache[folder]
    kept, flags = {}, []
    for task in suite.tasks:
        merged_score = scores["merged"][task.name]
        if task.name in labels:
            label = labels[task.name]
            kept[task.name] = retention(suite.metric, scores[label][task.name], merged_score)
            if kept[task.name] < suite.min_retention:
                flags.append(f"task '{task.name}' keeps {kept[task.name]:.0%} of its source {label} "
                             f"({scores[label][task.name]:.4g} → {merged_score:.4g}), below min_retention "
                             f"{suite.min_retention:.0%}: this merge hurts it")
        if suite.min_score is not None and suite.metric == "exact_match" and merged_score < suite.min_score:
            flags.append(f"task '{task.name}' scores {merged_score:.1%}, below min_score {suite.min_score:.0%}")
    return Report(suite.metric, [t.name for t in suite.tasks], scores, kept, flags)
