"""SUITE.yaml: which evaluations to run on a model. Validated before any model loads; paths are relative to
the suite file.

    name: my-suite
    generation: {max_new_tokens: 128, batch_size: 8}
    tasks:
      - {name: stories, type: perplexity, data: general.txt, general: true}
      - {name: qa, type: generation, data: qa.jsonl, metrics: [exact_match, rouge_l],
         checks: [{type: length, max_words: 50}]}
      - {name: sentiment, type: classification, data: sst2.tsv, text_column: sentence,
         labels: [negative, positive], label_map: {"0": negative, "1": positive},
         prompt: "Review: {sentence}\\nSentiment (positive or negative):"}
      - {name: prefs, type: preference, data: dpo_heldout.json, normalize: false}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationError, model_validator

from ..config.base import StrictModel
from ..config.loading import explain_validation_error, read_yaml_file
from ..errors import ConfigError, TunesmithError
from .metrics.generation import GENERATION_METRICS
from .metrics.instruction import validate_check


class GenerationSettings(StrictModel):
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 = greedy (the default, so runs are comparable)")
    batch_size: int = Field(8, gt=0)
    seed: int | None = 0


class JudgeConfig(StrictModel):
    model: str = Field(description="model name the endpoint serves")
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (default: "
                                                   "TUNESMITH_TEACHER_BASE_URL / OPENAI_BASE_URL)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key "
                                                      "(default: TUNESMITH_TEACHER_API_KEY / OPENAI_API_KEY)")
    rubric: str | None = None
    max_score: int = Field(10, ge=2)
    concurrency: int = Field(4, gt=0)
    head_to_head: bool = Field(True, description="with --compare: the judge also sees both models' replies side by "
                                                 "side, in both orders, for a win rate (two more calls per prompt)")


class _Task(StrictModel):
    name: str
    data: str = Field(description="data file (JSON/JSONL/CSV/TSV/Parquet; .txt for plain text)")
    max_samples: int | None = Field(None, gt=0, description="use the first N records")
    general: bool = Field(False, description="a general-ability task: its drop counts as forgetting")


class PerplexityTask(_Task):
    type: Literal["perplexity"]
    kind: Literal["auto", "text", "instruct"] = Field(
        "auto", description="text: every token; instruct: response tokens only; auto: text for .txt or "
                            "records with text_field, else instruct")
    text_field: str = "text"
    max_length: int = Field(512, gt=8)
    max_windows: int | None = Field(1, gt=0, description="text: windows of max_length scored per text (the "
                                                          "first ones); null = the whole text")
    batch_size: int = Field(8, gt=0)


class GenerationTask(_Task):
    type: Literal["generation"]
    metrics: list[Literal[GENERATION_METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(GENERATION_METRICS), description="reference-based metrics")
    checks: list = Field(default_factory=list, description="instruction-following checks for every sample "
                                                           "(records may add their own under `checks`)")
    judge: JudgeConfig | None = None
    max_new_tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _valid_checks(self):
        self.__dict__["checks"] = [validate_check(c, f"tasks '{self.name}' checks[{i}]")
                                   for i, c in enumerate(self.checks)]
        return self


class ClassificationTask(_Task):
    type: Literal["classification"]
    labels: list[str] = Field(min_length=2, description="the label words the model should answer with")
    label_map: dict[str, str] = Field(default_factory=dict, description="gold value in the data -> label word")
    text_column: str = "text"
    label_column: str = "label"
    prompt: str | None = Field(None, description="user message; {column} fields are filled from the record "
                                                 "(default: the text column alone)")
    system: str | None = None
    max_new_tokens: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _mapped_labels(self):
        if self.prompt is None:
            self.__dict__["prompt"] = "{" + self.text_column + "}"
        bad = sorted(set(self.label_map.values()) - set(self.labels))
        if bad:
            raise ValueError(f"label_map values {bad} are not among labels {self.labels}")
        return self


class PreferenceTask(_Task):
    """Held-out preference accuracy on pairs (any shape `task: dpo` reads): a causal LM prefers the reply with the
    higher log-prob given the prompt, a reward run's score head the higher score."""

    type: Literal["preference"]
    normalize: bool = Field(False, description="compare the log-prob per reply token instead of the sum (the sum "
                                               "favours short replies); not used for a reward model's score")
    max_length: int = Field(1024, gt=8, description="tokens per sequence (prompt + one reply); longer ones are cut")


Task = Annotated[Union[PerplexityTask, GenerationTask, ClassificationTask, PreferenceTask],
                 Field(discriminator="type")]


class Suite(StrictModel):
    name: str = "suite"
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    tasks: list[Task] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {dupes}")
        return self


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    raw = read_yaml_file(path, "suite file") or {}
    if not isinstance(raw, dict):
        raise ConfigError("a suite is a mapping with `tasks` (and optionally name, generation)", where=str(path))
    suite = validate_suite(raw, source=str(path))
    for task in suite.tasks:  # data paths are relative to the suite file
        if not Path(task.data).is_absolute() and (path.parent / task.data).exists():
            task.data = str(path.parent / task.data)
    return suite


def validate_suite(raw: dict, source: str = "suite") -> Suite:
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        message = explain_validation_error(exc).replace("invalid configuration", "invalid suite")
        raise ConfigError(message, where=source) from None
    except TunesmithError as exc:
        exc.where = f"{source}: {exc.where}" if exc.where else source
        raise
