"""Preference data for `task: dpo | orpo | simpo | reward` (pairs) and `task: kto` (unpaired, labelled replies).

Shapes read (each record by itself, so one file may mix them):
- TRL: `prompt` + `chosen` / `rejected`, each a string or a message list; or `chosen` / `rejected` as whole
  conversations, the prompt implicit (their shared start);
- LLaMA-Factory: ShareGPT `conversations` (or OpenAI `messages`) ending with the user's turn, plus `chosen` /
  `rejected` messages (`dpo_en_demo.json`); Alpaca `instruction` (+ `input`) plus `chosen` / `rejected` strings;
- KTO: `messages` (or `conversations`) ending with the reply, plus a boolean `label` (`kto_en_demo.json`); TRL's
  `prompt` / `completion` / `label`. A paired record gives KTO two examples: chosen desirable, rejected not.

The run's template renders each side as SFT renders that conversation; the text is split where the reply's span
starts, so the trainer's `prompt` + `chosen` is exactly SFT's rendering (end-of-turn marker included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import DatasetSpec
from .formats import Message, normalize_record, rename_columns
from .readers import Record, read_records, type_name
from .templates.base import ChatTemplate

SHAPES = ("expected prompt + chosen/rejected (TRL), conversations or messages ending with the user's turn + "
          "chosen/rejected (LLaMA-Factory), or for KTO messages ending with the reply + a boolean label")


@dataclass
class Pair:
    prompt: list[Message]
    chosen: str
    rejected: str
    record: Record


@dataclass
class Unpaired:
    prompt: list[Message]
    completion: str
    label: bool
    record: Record


def read_pair(record: Record, spec: DatasetSpec) -> Pair:
    """One preference pair; a bad record is a DataError naming its file, line and field."""
    data = rename_columns(record, spec.columns)
    for side in ("chosen", "rejected"):
        if side not in data:
            raise record.error(f"missing field '{side}'", field=side, hint=SHAPES)
    data = _chat_shape(data, record)
    chosen = _conversation(data, record, spec, "chosen")
    rejected = _conversation(data, record, spec, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise record.error("chosen and rejected continue different prompts", field="rejected",
                           hint="both sides must share every turn before the reply")
    return Pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], record)


def read_unpaired(record: Record, spec: DatasetSpec) -> list[Unpaired]:
    """KTO examples of a record: a labelled reply, or both sides of a pair."""
    data = rename_columns(record, spec.columns)
    if "chosen" in data and "label" not in data:
        pair = read_pair(record, spec)
        return [Unpaired(pair.prompt, pair.chosen, True, record), Unpaired(pair.prompt, pair.rejected, False, record)]
    if "label" not in data:
        raise record.error("missing field 'label'", field="label", hint=SHAPES)
    label = data["label"]
    if not isinstance(label, bool):
        raise record.error(f"must be true (desirable) or false (undesirable), got {type_name(label)}", field="label")
    if "prompt" in data:  # TRL: prompt + completion
        data = _chat_shape({**data, "chosen": data.get("completion")}, record)
        conversation = _conversation(data, record, spec, "chosen")
    else:
        conversation = normalize_record(Record(data, record.file, record.line, record.unit),
                                        spec.model_copy(update={"columns": {}}), reply="completion")
    return [Unpaired(conversation[:-1], conversation[-1]["content"], label, record)]


def load_preference(spec: DatasetSpec, *, unpaired: bool) -> list[Pair | Unpaired]:
    """The spec's records (the first `max_samples`) as pairs, or as KTO examples when `unpaired`."""
    records = read_records(spec.path, spec.split)[:spec.max_samples]
    if unpaired:
        return [item for record in records for item in read_unpaired(record, spec)]
    return [read_pair(record, spec) for record in records]


def render(template: ChatTemplate, item: Pair | Unpaired) -> dict[str, Any]:
    """The trainer's row: `prompt` and `chosen`/`rejected` (or `completion` + `label`) as rendered text."""
    if isinstance(item, Unpaired):
        prompt, completion = _split(template, item.prompt, item.completion, item.record)
        return {"prompt": prompt, "completion": completion, "label": item.label}
    prompt, chosen = _split(template, item.prompt, item.chosen, item.record)
    other, rejected = _split(template, item.prompt, item.rejected, item.record)
    if other != prompt:
        raise item.record.error(f"template {template.name} renders the prompt differently before each reply",
                                hint="use data.template: chatml")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _split(template: ChatTemplate, prompt: list[Message], reply: str, record: Record) -> tuple[str, str]:
    from ..errors import DataError

    try:
        rendered = template.render([*prompt, {"role": "assistant", "content": reply}])
    except DataError as exc:
        raise record.error(exc.message, field=exc.field, hint=exc.hint) from None
    start, end = rendered.assistant_spans[-1]
    return rendered.text[:start], rendered.text[start:end]


def _chat_shape(data: dict[str, Any], record: Record) -> dict[str, Any]:
    """TRL's shapes rewritten as an OpenAI `messages` prompt with single-message `chosen` / `rejected`."""
    data = dict(data)
    if "prompt" in data:
        prompt = data.pop("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list):
            raise record.error(f"must be a string or a list of messages, got {type_name(prompt)}", field="prompt")
        data["messages"] = prompt
    elif not any(key in data for key in ("messages", "conversations", "instruction")):
        chosen, rejected = data["chosen"], data["rejected"]
        if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
            raise record.error("no prompt: expected 'prompt', 'conversations', 'messages' or 'instruction', or "
                               "chosen/rejected as whole conversations", field="prompt", hint=SHAPES)
        if chosen[:-1] != rejected[:-1]:
            raise record.error("chosen and rejected conversations do not share their turns before the reply",
                               field="rejected")
        data["messages"] = chosen[:-1]
    for side in ("chosen", "rejected"):
        value = data.get(side)
        if isinstance(value, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
            if len(value) != 1 and "messages" in data and value[:-1] != data["messages"]:
                raise record.error("must be one assistant message", field=side)
            data[side] = value[-1] if value else None
    return data


def _conversation(data: dict[str, Any], record: Record, spec: DatasetSpec, reply: str) -> list[Message]:
    """The prompt completed by the `reply` side, validated by the SFT formats (types, roles, turn order)."""
    turns = data.get("messages", data.get("conversations"))
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and \
            str(turns[-1].get("role", turns[-1].get("from"))).lower() not in ("user", "human"):
        key = "messages" if "messages" in data else "conversations"
        raise record.error("the prompt must end with the user's turn (the reply is in chosen/rejected)",
                           field=f"{key}[{len(turns) - 1}]")
    return normalize_record(Record(data, record.file, record.line, record.unit),
                            spec.model_copy(update={"columns": {}}), reply=reply)
