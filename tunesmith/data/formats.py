"""Turn one raw record (Alpaca, ShareGPT or OpenAI style) into a validated conversation.

A conversation is a list of messages `{"role", "content"}` with roles system/user/assistant: an
optional system message first, then user and assistant strictly alternating, ending with an
assistant reply. Alpaca user turns may carry a separate `"input"` so that templates with an input
section (`### 输入:`) can place it there; `user_text` joins it for every other template.
"""

from __future__ import annotations

import re
from typing import Any

from ..config.schema import DatasetSpec
from .readers import Record, type_name

Message = dict[str, str]

FORMATS = ("alpaca", "sharegpt", "openai")
_ROLES = {"system": "system", "user": "user", "human": "user",
          "assistant": "assistant", "gpt": "assistant", "model": "assistant", "chatgpt": "assistant"}
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def detect_format(data: dict[str, Any]) -> str | None:
    """Which format a record is in, judged by its fields; None when it matches none."""
    if "messages" in data:
        return "openai"
    if "conversations" in data:
        return "sharegpt"
    if "instruction" in data or "output" in data:
        return "alpaca"
    return None


def normalize_record(record: Record, spec: DatasetSpec, *, reply: str = "chosen") -> list[Message]:
    """The record as a validated conversation, after renaming columns and filling placeholders. `reply`: the field
    that completes a prompt-only record (preference data: `chosen` for SFT, `rejected` for the other side)."""
    data = rename_columns(record, spec.columns)
    data = fill_placeholders(data, spec.placeholders)
    fmt = detect_format(data) if spec.format == "auto" else spec.format
    if fmt is None:
        raise record.error(f"cannot tell the format from the fields {sorted(data)}",
                           hint="expected Alpaca (instruction/input/output), ShareGPT (conversations) or "
                                "OpenAI (messages); rename fields with `columns`, e.g. {instruction: question}")
    turns = _alpaca_turns(data, record, reply) if fmt == "alpaca" else _chat_turns(data, fmt, record, reply)
    if spec.system and not (turns and turns[0][0]["role"] == "system"):
        turns.insert(0, ({"role": "system", "content": fill_placeholders(spec.system, spec.placeholders)},
                         "system"))
    _validate(turns, record)
    return [message for message, _ in turns]


def to_conversation(data: dict[str, Any], fmt: str = "auto", *, file: str | None = None,
                    line: int | None = None) -> list[Message]:
    """`normalize_record` for a bare dict (e.g. a prompt at inference), errors pointing at file/line."""
    record = Record(data, file or "<record>", line)
    return normalize_record(record, DatasetSpec(path=record.file, format=fmt))


def user_text(message: Message) -> str:
    """A user turn as one string: an Alpaca `input` follows the instruction after a blank line."""
    extra = message.get("input")
    return f"{message['content']}\n\n{extra}" if extra else message["content"]


def plain_messages(messages: list[Message]) -> list[Message]:
    """Messages with only role/content, as chat templates expect them."""
    return [{"role": m["role"], "content": user_text(m)} for m in messages]


def fill_placeholders(value: Any, placeholders: dict[str, str]) -> Any:
    """Replace `{{key}}` in every string inside `value`; unknown keys are left as they are."""
    if not placeholders:
        return value
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: placeholders.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [fill_placeholders(item, placeholders) for item in value]
    if isinstance(value, dict):
        return {key: fill_placeholders(item, placeholders) for key, item in value.items()}
    return value


def find_placeholders(messages: list[Message]) -> set[str]:
    """Names of `{{key}}` placeholders still present (i.e. not given in `placeholders`)."""
    return {name for m in messages for text in (m["content"], m.get("input") or "")
            for name in _PLACEHOLDER.findall(text)}


def rename_columns(record: Record, columns: dict[str, str]) -> dict[str, Any]:
    data = dict(record.data)
    for canonical, source in columns.items():
        if source not in data:
            raise record.error(f"column '{source}' (mapped to '{canonical}' in `columns`) is missing",
                               field=source, hint=f"the record has {sorted(data)}")
        data[canonical] = data.pop(source)
    return data


def _alpaca_turns(data: dict[str, Any], record: Record, reply: str) -> list[tuple[Message, str]]:
    """(message, field it came from) pairs; the field names the culprit in validation errors. Preference records
    (instruction + chosen/rejected) answer with their `reply` field."""
    answer = "output" if "output" in data or reply not in data else reply
    for required in ("instruction", answer):
        if required not in data:
            raise record.error(f"missing field '{required}'", field=required,
                               hint="Alpaca records need instruction and output (input, system, history optional)")
    turns: list[tuple[Message, str]] = []
    if data.get("system"):
        turns.append(({"role": "system", "content": data["system"]}, "system"))
    history = data.get("history") or []
    if not isinstance(history, list):
        raise record.error(f"must be a list of [user, assistant] pairs, got {type_name(history)}", field="history")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise record.error("must be a [user, assistant] pair", field=f"history[{index}]")
        turns += [({"role": "user", "content": pair[0]}, f"history[{index}][0]"),
                  ({"role": "assistant", "content": pair[1]}, f"history[{index}][1]")]
    user = {"role": "user", "content": data["instruction"]}
    extra = data.get("input")
    if extra is not None and not isinstance(extra, str):
        raise record.error(f"must be a string, got {type_name(extra)}", field="input")
    if extra and extra.strip():
        user["input"] = extra
    turns += [(user, "instruction"), ({"role": "assistant", "content": data[answer]}, answer)]
    return turns


def _chat_turns(data: dict[str, Any], fmt: str, record: Record, reply: str) -> list[tuple[Message, str]]:
    """ShareGPT `conversations` ({from, value}) or OpenAI `messages` ({role, content}); either key style works."""
    key = "messages" if fmt == "openai" else "conversations"
    items = data.get(key)
    if not isinstance(items, list):
        raise record.error(f"must be a list of messages, got {type_name(items)}" if key in data
                           else f"missing field '{key}'", field=key)
    turns: list[tuple[Message, str]] = []
    if data.get("system"):  # ShareGPT keeps the system prompt at the top level
        turns.append(({"role": "system", "content": data["system"]}, "system"))
    for index, item in enumerate(items):
        turns.append((_chat_message(item, f"{key}[{index}]", record), f"{key}[{index}]"))
    if turns and turns[-1][0]["role"] == "user" and reply in data:
        # Preference data (prompt + chosen/rejected): supervised training learns the chosen reply.
        turns.append((_chat_message(data[reply], reply, record, default_role="assistant"), reply))
    return turns


def _chat_message(item: Any, field: str, record: Record, default_role: str | None = None) -> Message:
    if isinstance(item, str) and default_role:
        return {"role": default_role, "content": item}
    if not isinstance(item, dict):
        raise record.error(f"must be a message object, got {type_name(item)}", field=field)
    role = item.get("from", item.get("role", default_role))
    content = item.get("value", item.get("content"))
    if role is None:
        raise record.error("message has no role ('from' or 'role')", field=field)
    if str(role).lower() not in _ROLES:
        raise record.error(f"unknown role '{role}'", field=field,
                           hint="supported roles: system, user/human, assistant/gpt/model (tool turns are not)")
    if content is None:
        raise record.error("message has no text ('value' or 'content')", field=field)
    return {"role": _ROLES[str(role).lower()], "content": content}


def _validate(turns: list[tuple[Message, str]], record: Record) -> None:
    """Types, emptiness and turn order; each error names the field it is about."""
    for index, (message, field) in enumerate(turns):
        if not isinstance(message["content"], str):
            raise record.error(f"must be a string, got {type_name(message['content'])}", field=field)
        if message["role"] == "system":
            if index != 0:
                raise record.error("a system message is only allowed first", field=field)
            continue
        position = index - (turns[0][0]["role"] == "system")
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise record.error(_order_problem(message["role"], position), field=field,
                               hint="turns must alternate user, assistant, user, ... (merge consecutive turns)")
        text = user_text(message) if expected == "user" else message["content"]
        if not text.strip():
            raise record.error(f"empty {'assistant reply' if expected == 'assistant' else 'user message'}",
                               field=field)
    if not turns or turns[-1][0]["role"] != "assistant":
        raise record.error("conversation must end with an assistant reply (there is nothing to train on)",
                           field=turns[-1][1] if turns else None)


def _order_problem(role: str, position: int) -> str:
    if position == 0:
        return f"conversation must start with a user turn, not {role}"
    return f"two {role} turns in a row"
