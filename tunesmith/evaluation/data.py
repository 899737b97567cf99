"""Evaluation data: texts for perplexity, prompts with references and checks for generation, labelled texts
for classification. Bad records are reported with file, line and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import DatasetSpec
from ..data.dataset import load_samples
from ..data.formats import Message, to_conversation
from ..data.preference import Pair, load_preference
from ..data.readers import Record, read_records
from ..errors import DataError, TunesmithError
from .metrics.instruction import validate_check
from .suite import ClassificationTask, GenerationTask, PerplexityTask, PreferenceTask


@dataclass
class GenerationItem:
    messages: list[Message]  # the conversation up to the reply to be generated
    reference: str | None
    checks: list[dict] = field(default_factory=list)


def perplexity_kind(task: PerplexityTask) -> str:
    if task.kind != "auto":
        return task.kind
    if Path(task.data).suffix == ".txt":
        return "text"
    records = read_records(task.data)
    if not records:
        raise DataError("no records", file=task.data)
    return "text" if isinstance(records[0].data.get(task.text_field), str) else "instruct"


def load_texts(path: str, text_field: str = "text", max_samples: int | None = None) -> list[str]:
    """Plain .txt: one passage per non-empty line; otherwise the `text_field` of each record."""
    if Path(path).suffix == ".txt":
        if not Path(path).is_file():
            raise DataError("data file not found", file=path)
        lines = [line for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return lines[:max_samples]
    texts = []
    for record in read_records(path)[:max_samples]:
        value = record.data.get(text_field)
        if not isinstance(value, str):
            raise record.error("expected a text string", field=text_field,
                               hint="set text_field to the record's text field, or kind: instruct")
        texts.append(value)
    return texts


def load_conversations(path: str, max_samples: int | None = None) -> list[list[Message]]:
    return [s.messages for s in load_samples(DatasetSpec(path=path, max_samples=max_samples))]


def _reference(data: dict, messages: list[Message]) -> str | None:
    for key in ("reference", "answer", "output"):
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key]
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def load_generation_items(task: GenerationTask) -> list[GenerationItem]:
    """Records with `prompt` (+ `reference`), Alpaca (`output` is the reference), or OpenAI/ShareGPT
    conversations (the last assistant turn is the reference). Each may carry its own `checks`."""
    items = []
    for record in read_records(task.data)[:task.max_samples]:
        data = record.data
        messages = _prompt_conversation(record)
        full = messages
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        reference = _reference(data, full)
        checks = data.get("checks") or []
        if not isinstance(checks, list):
            raise record.error("expected a list of checks", field="checks")
        where = f"{record.file}, line {record.line}, field 'checks'"
        items.append(GenerationItem(messages, reference, [validate_check(c, where) for c in checks]))
    needs_reference = bool(task.metrics) and any(i.reference is None for i in items)
    if needs_reference and not task.checks and not task.judge and all(not i.checks for i in items):
        raise DataError(f"task '{task.name}' has reference metrics but records without a reference",
                        file=task.data, hint="give each record an output/reference, or use checks only "
                                             "(metrics: [])")
    return items


def _prompt_conversation(record: Record) -> list[Message]:
    data = record.data
    if isinstance(data.get("prompt"), str):
        return [{"role": "user", "content": data["prompt"]}]
    probe = {k: v for k, v in data.items() if k not in ("checks", "reference", "answer")}
    if "instruction" in probe and not probe.get("output"):
        probe["output"] = "-"  # only a prompt: the placeholder reply is dropped below
        return to_conversation(probe, "alpaca", file=record.file, line=record.line)[:-1]
    if isinstance(probe.get("messages"), list) and probe["messages"] \
            and probe["messages"][-1].get("role") != "assistant":
        probe["messages"] = probe["messages"] + [{"role": "assistant", "content": "-"}]
        return to_conversation(probe, "openai", file=record.file, line=record.line)[:-1]
    try:
        return to_conversation(probe, "auto", file=record.file, line=record.line)
    except TunesmithError:
        raise DataError("an evaluation record needs 'prompt', 'instruction' or 'messages'/'conversations'",
                        file=record.file, line=record.line) from None


def load_classification(task: ClassificationTask) -> tuple[list[list[Message]], list[str]]:
    """(conversations asking for a label, gold label words)."""
    conversations, gold = [], []
    for record in read_records(task.data)[:task.max_samples]:
        data = record.data
        for column in (task.text_column, task.label_column):
            if data.get(column) in (None, ""):
                raise record.error("missing value", field=column,
                                   hint=f"set text_column / label_column (fields: {', '.join(map(str, data))})")
        try:
            content = task.prompt.format_map({k: str(v) for k, v in data.items()})
        except KeyError as exc:
            raise record.error(f"the prompt names {{{exc.args[0]}}}, which this record lacks",
                               field=exc.args[0]) from None
        value = str(data[task.label_column])
        label = task.label_map.get(value, value)
        if label not in task.labels:
            raise record.error(f"label {value!r} is not one of {task.labels}", field=task.label_column,
                               hint="map the data's values to label words with label_map, e.g. {\"0\": negative}")
        messages = ([{"role": "system", "content": task.system}] if task.system else [])
        conversations.append(messages + [{"role": "user", "content": content}])
        gold.append(label)
    return conversations, gold


def load_pairs(task: PreferenceTask) -> list[Pair]:
    """The task's preference pairs, in any shape the preference trainers read (`data/preference.py`)."""
    return load_preference(DatasetSpec(path=task.data, max_samples=task.max_samples), unpaired=False)


def check_task_data(suite) -> None:
    """Read every task's data once, so that a bad file or record is reported before any model loads."""
    for task in suite.tasks:
        if isinstance(task, PerplexityTask):
            if perplexity_kind(task) == "text":
                load_texts(task.data, task.text_field, task.max_samples)
            else:
                load_conversations(task.data, task.max_samples)
        elif isinstance(task, GenerationTask):
            load_generation_items(task)
        elif isinstance(task, PreferenceTask):
            load_pairs(task)
        else:
            load_classification(task)
