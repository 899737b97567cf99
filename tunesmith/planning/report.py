"""How a plan states sizes (`human`); the CLI draws the plan's tables (`tunesmith/cli/render_plan.py`)."""

from __future__ import annotations

GIB = 2 ** 30


def human(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 4 else f"{nbytes / 2 ** 20:.0f} MiB"
