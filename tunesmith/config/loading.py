"""Read a YAML config, apply `key.sub=value` overrides, validate, and explain every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, TunesmithError
from .schema import RunConfig


def read_yaml_file(path: str | Path, what: str = "config file"):
    """The parsed contents of a YAML file (None when empty); a missing file or bad YAML is a ConfigError
    naming the file and, for bad YAML, the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found", where=str(path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of sections (model, method, data, training)",
                          where=str(path))
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value",
                          hint="e.g. training.learning_rate=1e-4 method.r=8")
    key, _, text = item.partition("=")
    value = yaml.safe_load(text) if text.strip() else None
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


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc), where=source) from None
    except TunesmithError as exc:
        exc.where = f"{source}: {exc.where}" if exc.where else source
        raise


def explain_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; `tunesmith train --help` lists the sections)"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"]
            if "input" in err and kind not in ("value_error",):
                msg += f" (got {err['input']!r})"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
