"""GRPO reward functions: the built-ins (format, exact_answer, length) and the user's own by import path, each
wrapped so that a function that raises, or returns the wrong number of scores, stops training with a message naming
it (`grpo.rewards[i]`) and the prompt it failed on, instead of a traceback from inside TRL."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable

from ...config.schema import RewardSpec
from ...errors import ConfigError, TunesmithError


class RewardError(TunesmithError):
    """A reward function failed while training."""


def build_rewards(specs: list[RewardSpec]) -> tuple[list[Callable], list[float]]:
    """(functions, weights) for TRL's GRPOTrainer; imports happen here, before any model loads."""
    functions = [_checked(_function(spec, f"grpo.rewards[{i}]"), spec, f"grpo.rewards[{i}]")
                 for i, spec in enumerate(specs)]
    return functions, [spec.weight for spec in specs]


def _function(spec: RewardSpec, where: str) -> Callable:
    if spec.name == "format":
        pattern = re.compile(spec.pattern, re.S)
        return lambda prompts, completions, **_: [float(bool(pattern.search(c))) for c in completions]
    if spec.name == "exact_answer":
        return _exact_answer(spec, where)
    if spec.name == "length":
        def length(prompts, completions, **_):
            sizes = [len(c.split()) if spec.unit == "words" else len(c) for c in completions]
            return [max(0.0, 1 - abs(size - spec.target) / spec.target) for size in sizes]

        return length
    return _imported(spec.name, where)


def _exact_answer(spec: RewardSpec, where: str) -> Callable:
    """1 when the completion's answer (the pattern's first group, or its match, or the whole completion stripped)
    equals the record's `field`: as numbers when both read as numbers ("7.0" = "7"), else as text (case and outer
    spaces ignored)."""
    pattern = re.compile(spec.pattern, re.S) if spec.pattern else None

    def extract(text: str) -> str | None:
        if pattern is None:
            return text.strip()
        match = pattern.search(text)
        return None if match is None else (match.group(1) if pattern.groups else match.group(0)).strip()

    def exact_answer(prompts, completions, **columns):
        if spec.field not in columns:
            raise ConfigError(f"exact_answer reads the record field '{spec.field}', which the data lacks",
                              where=f"{where}.field", hint=f"columns: {', '.join(sorted(columns)) or 'none'}")
        return [float(_same(extract(c), gold)) for c, gold in zip(completions, columns[spec.field])]

    return exact_answer


def _same(answer: str | None, gold) -> bool:
    if answer is None or gold is None:
        return False
    gold = str(gold).strip()
    try:
        return float(answer) == float(gold)
    except ValueError:
        return answer.lower() == gold.lower()


def _imported(path: str, where: str) -> Callable:
    """`module:function` (importable) or `path/to/file.py:function`."""
    target, _, name = path.rpartition(":")
    try:
        if target.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if spec is None or not Path(target).is_file():
                raise ImportError(f"no file {target}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        function = getattr(module, name)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ConfigError(f"cannot load the reward function {path}: {type(exc).__name__}: {exc}", where=where,
                          hint="write module:function (importable from here) or path/to/file.py:function") from None
    if not callable(function):
        raise ConfigError(f"{path} is not a function", where=where)
    return function


def _checked(function: Callable, spec: RewardSpec, where: str) -> Callable:
    label = spec.name.rpartition(":")[2]

    def reward(prompts, completions, **columns):
        try:
            scores = function(prompts=prompts, completions=completions, **columns)
        except TunesmithError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported by name
            raise RewardError(f"reward function {spec.name} raised {type(exc).__name__}: {exc}", where=where,
                              hint=f"first prompt of the batch: {str(prompts[0])[-200:]!r}; first completion: "
                                   f"{str(completions[0])[:200]!r}") from exc
        if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
            raise RewardError(f"reward function {spec.name} returned {type(scores).__name__} of "
                              f"{len(scores) if hasattr(scores, '__len__') else '?'} values for "
                              f"{len(completions)} completions", where=where,
                              hint="return one float (or None) per completion")
        return [None if s is None else float(s) for s in scores]

    reward.__name__ = label  # TRL logs rewards/<name>/mean
    return reward
