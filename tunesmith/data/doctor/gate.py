"""CI gate: conditions on the report's summary numbers that make `data check` exit non-zero."""

from __future__ import annotations

import operator
import re

from ...errors import TunesmithError

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
        ">": operator.gt}
_CONDITION = re.compile(r"\s*([a-z_0-9]+)\s*(<=|>=|==|!=|<|>)\s*([-+0-9.eE]+)\s*")


def parse_condition(text: str) -> tuple[str, str, float]:
    match = _CONDITION.fullmatch(text)
    if not match:
        raise TunesmithError(f"cannot read the condition {text!r}", where="--fail-if",
                             hint="write NAME OP NUMBER, e.g. near_duplicate_rate>0.02 or invalid>0")
    return match.group(1), match.group(2), float(match.group(3))


def evaluate(summary: dict, conditions: list[str], strict: bool = False) -> list[str]:
    """The reasons the gate fails (empty: it passes). Unknown names are a user error listing the known ones."""
    failures = []
    for text in conditions:
        name, op, value = parse_condition(text)
        if name not in summary:
            raise TunesmithError(f"unknown metric '{name}' in --fail-if", where="--fail-if",
                                 hint="known: " + ", ".join(sorted(summary)))
        if _OPS[op](summary[name], value):
            failures.append(f"{name} = {summary[name]} ({op} {value:g})")
    if strict and summary.get("errors"):
        failures.append(f"--strict: {summary['errors']} error findings")
    return failures
