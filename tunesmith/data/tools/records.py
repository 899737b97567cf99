"""Read any supported data file as conversations, write conversations in any format (JSONL or JSON)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config.schema import DatasetSpec
from ...errors import DataError
from ...io import atomic_write_text
from ..formats import Message, normalize_record
from ..readers import Record, read_records

FORMAT_KEYS = {"instruction", "input", "output", "system", "history", "conversations", "messages", "chosen",
               "rejected", "text"}
OUTPUT_FORMATS = ("alpaca", "sharegpt", "openai")


@dataclass
class Item:
    """A conversation read from a file, with the record's other fields (ids, provenance, ...) kept."""

    messages: list[Message]
    extra: dict[str, Any]
    record: Record


def read_items(path: str, fmt: str = "auto", *, text_as_continuation: bool = False) -> list[Item]:
    """Every record as a conversation; the first bad record raises a DataError naming file, line and field.

    With `text_as_continuation`, plain-text records ({"text": ...}, e.g. general web text used as replay data)
    become a continuation task: the first half (cut at a sentence end) is the prompt, the rest the reply.
    """
    items = []
    spec = DatasetSpec(path=path, format=fmt)
    for record in read_records(path):
        data = record.data
        if text_as_continuation and isinstance(data.get("text"), str) and not {"instruction", "messages",
                                                                              "conversations"} & set(data):
            messages = continuation(data["text"])
            if messages is None:
                continue
        else:
            messages = normalize_record(record, spec)
        items.append(Item(messages, {k: v for k, v in data.items() if k not in FORMAT_KEYS}, record))
    return items


def continuation(text: str) -> list[Message] | None:
    text = text.strip()
    cuts = [m.end() for m in re.finditer(r"[.!?。！？]\s*", text)]
    cut = min(cuts, key=lambda c: abs(c - len(text) / 2), default=None) if cuts else None
    if not cut or cut >= len(text) - 1:
        return None
    zh = bool(re.search(r"[\u4e00-\u9fff]", text))
    prompt = ("续写下面的文字：\n\n" if zh else "Continue the text:\n\n") + text[:cut].strip()
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text[cut:].strip()}]


def to_record(messages: list[Message], fmt: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A conversation as an Alpaca, ShareGPT or OpenAI record, followed by `extra` fields."""
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format '{fmt}'", hint=f"choose one of {', '.join(OUTPUT_FORMATS)}")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    if fmt == "alpaca":
        pairs = [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
        last_user, last_reply = pairs[-1]
        record: dict[str, Any] = {"instruction": last_user["content"], "input": last_user.get("input", ""),
                                  "output": last_reply["content"]}
        if system is not None:
            record["system"] = system
        if len(pairs) > 1:
            record["history"] = [[_joined(u), a["content"]] for u, a in pairs[:-1]]
    elif fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt"}
        record = {"conversations": [{"from": names[m["role"]], "value": _joined(m)} for m in turns]}
        if system is not None:
            record["system"] = system
    else:
        record = {"messages": [{"role": m["role"], "content": _joined(m)} for m in messages]}
    return {**record, **(extra or {})}


def _joined(message: Message) -> str:
    return f"{message['content']}\n\n{message['input']}" if message.get("input") else message["content"]


def write_records(path: str, records: list[dict[str, Any]]) -> None:
    """JSON Lines unless the path ends in .json (then one JSON array); written atomically."""
    out = Path(path)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise DataError("output must be a .jsonl or .json file", file=path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    else:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
