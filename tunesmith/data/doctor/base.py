"""What every detector works on (`Sample`) and produces (`Finding`, `Section`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..formats import Message, user_text

SEVERITIES = ("error", "warning", "info")


@dataclass
class Sample:
    """One valid record as a conversation, with the texts the detectors look at."""

    index: int  # position among the file's records (0-based)
    file: str
    line: int | None
    messages: list[Message]
    raw: dict[str, Any]
    fmt: str
    preference: Any = None  # the `data.preference` Pair or Unpaired of a preference record (messages: its chosen side)

    @property
    def instruction(self) -> str:
        """The last user turn without any Alpaca `input`: what the sample asks for."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def input(self) -> str:
        return next((m.get("input") or "" for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def prompt(self) -> str:
        """The last user turn with its input: what the model sees."""
        return next(user_text(m) for m in reversed(self.messages) if m["role"] == "user")

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]

    @property
    def replies(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.line}" if self.line is not None else self.file


@dataclass
class Finding:
    """One problem: which check, how bad, where (file, line, field) and what."""

    check: str  # "<family>.<name>", e.g. accuracy.placeholder
    severity: str
    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    sample: int | None = None  # record index, for grouping findings per sample

    @classmethod
    def at(cls, sample: Sample, check: str, severity: str, message: str, field: str | None = None) -> Finding:
        return cls(check, severity, message, sample.file, sample.line, field, sample.index)

    def where(self) -> str:
        parts = [p for p in (self.file, f"line {self.line}" if self.line is not None else None,
                             f"field '{self.field}'" if self.field else None) if p]
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Section:
    """A detector family's result: headline metrics, per-sample findings, and data for charts."""

    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    charts: dict[str, Any] = field(default_factory=dict)  # name -> values (histograms) or {label: count}

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "findings": [f.to_dict() for f in self.findings]}


def flagged_rate(findings: list[Finding], total: int, severity: str | None = None) -> float:
    """Share of samples with at least one finding (of `severity` when given)."""
    hit = {f.sample for f in findings if f.sample is not None and (severity is None or f.severity == severity)}
    return round(len(hit) / total, 4) if total else 0.0
