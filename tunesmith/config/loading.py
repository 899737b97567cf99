"""Read a YAML config, apply `key.sub=value` overrides, validate, and explain every error."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, TunesmithError
from .schema import RunConfig


def read_yaml_file(path: str | Path, what: str = "config file"):
    """The parsed contents of a YAML file (None when empty); a missing file or bad YAML is a ConfigError
    naming the file and, for bad YAML, the line."""
    return parse_yaml(read_config_text(path, what), path)


def read_config_text(path: str | Path, what: str = "config file") -> str:
    """A config file's text; a missing or unreadable file, or one that is not UTF-8 text, is a ConfigError naming
    it (and, for bad bytes, the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found", where=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", where=str(path)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        encoding = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"the {what} is {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"cannot be read as UTF-8)", where=f"{path}, line {line}",
                          hint="save it as UTF-8 (most editors: 'Save with encoding')") from None
    if "\x00" in text:
        raise ConfigError(f"the {what} holds a NUL byte: it is not a text file",
                          where=f"{path}, line {text.count(chr(10), 0, text.index(chr(0))) + 1}")
    return text


def parse_yaml(text: str, path: str | Path):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None


# Overrides: `key.sub=value` texts (the value read as YAML, as on the command line) or a {key.sub: value} mapping.
Overrides = Union[list[str], tuple[str, ...], Mapping[str, Any], None]


def load_config(path: str | Path, overrides: Overrides = None, *, overridden_on: str = "command line") -> RunConfig:
    """`overridden_on`: where error messages say an overridden field was set."""
    path = Path(path)
    return config_from_text(read_config_text(path), path, overrides, overridden_on=overridden_on)


def config_from_text(text: str, path: str | Path, overrides: Overrides = None, *,
                     overridden_on: str = "command line") -> RunConfig:
    """A RunConfig from the YAML text of the file `path` (not read: the text may not be saved yet), its errors
    worded as `load_config` words them for that file."""
    raw = parse_yaml(text, path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of sections (model, method, data, training)",
                          where=str(path))
    overridden = apply_overrides(raw, overrides)
    lines = _key_lines(text)
    return validate_config(raw, source=str(path),
                           locate=lambda loc: overridden_on if loc in overridden else lines.get(loc))


def config_from_dict(raw: Mapping[str, Any], overrides: Overrides = None, *, source: str = "config") -> RunConfig:
    """A RunConfig from a mapping shaped like the YAML file (not changed), with `overrides` applied."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping of sections (model, method, data, training)", where=source)
    raw = copy.deepcopy(dict(raw))
    overridden = apply_overrides(raw, overrides)
    return validate_config(raw, source=source, locate=lambda loc: "overrides" if loc in overridden else None)


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> set[str]:
    """Apply every override to `raw`; returns the dotted keys set."""
    items = overrides.items() if isinstance(overrides, Mapping) else [_split(item) for item in overrides or []]
    for key, value in items:
        set_dotted(raw, str(key), value, f"{key}={value}")
    return {str(key).strip() for key, _ in items}


def apply_override(raw: dict[str, Any], item: str) -> None:
    set_dotted(raw, *_split(item), item)


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value",
                          hint="e.g. training.learning_rate=1e-4 method.r=8")
    key, _, text = item.partition("=")
    return key, yaml.safe_load(text) if text.strip() else None


def set_dotted(raw: dict[str, Any], key: str, value: Any, item: str) -> None:
    """Set `key` (dotted; list entries by index) to `value`; `item` names the override in errors."""
    node = raw
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):  # data.train.0.max_samples: an index into a list (len appends an entry)
            if not part.isdigit() or int(part) > len(node):
                where = ".".join(parts[:depth])
                raise ConfigError(f"override '{item}': {where} is a list of {len(node)}; '{part}' is not an index "
                                  f"of it", hint=f"use {where}.0 to {where}.{len(node)} ({len(node)} appends)")
            if int(part) == len(node):
                node.append({})
            part = int(part)
            child = node[part]
        else:
            child = node.get(part)
        if last:
            node[part] = value
            break
        if isinstance(child, str) and part == "method":
            child = {"name": child}
        if not isinstance(child, (dict, list)):
            child = {}
        node[part] = child
        node = child


def _key_lines(text: str) -> dict[str, int]:
    """The line (1-based) of each key of a YAML mapping, by dotted path (list items by index): error messages name
    it. Empty when the text is not a plain YAML mapping."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}{key.value}"
                lines.setdefault(path, key.start_mark.line + 1)
                walk(value, path + ".")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault(f"{prefix}{index}", item.start_mark.line + 1)
                walk(item, f"{prefix}{index}.")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


def validate_config(raw: dict[str, Any], source: str = "config", locate=None) -> RunConfig:
    """`locate(dotted field)`: where a field was set (a line number or 'command line'), named in error messages."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, locate), where=source) from None
    except TunesmithError as exc:
        place = locate(exc.where) if locate and exc.where else None
        line = f" (line {place})" if isinstance(place, int) else ""
        exc.where = f"{source}: {exc.where}{line}" if exc.where else source
        raise


def explain_validation_error(exc: ValidationError, locate=None) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        place = locate(loc) if locate and loc else None
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; `tunesmith train --help` lists the sections)"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"]
            if "input" in err and kind not in ("value_error",):
                msg += f" (got {err['input']!r})"
        if place is not None:
            msg += f" (line {place})" if isinstance(place, int) else f" (set on the {place})"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
