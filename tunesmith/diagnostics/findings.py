"""A finding of the curve doctor: what is wrong, where, and what to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    code: str  # nonfinite, spike, oscillation, plateau, overfitting, generalization_gap, grad_*, half_precision
    severity: str  # error | warning | info
    step: int | None  # where it shows (first step concerned)
    message: str
    advice: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"step {self.step}: " if self.step is not None else ""
        return f"[{self.severity}] {where}{self.message}\n  → {self.advice}"


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f.severity, 3), f.step or 0, f.code))
