"""What a run keeps while training: every logged metric in metrics.jsonl (the live bar is the reporter's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback


class MetricsFileCallback(TrainerCallback):
    """Append every logged metric as one JSON line; on resume, lines past the checkpoint are dropped first."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= state.global_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"step": state.global_step, "epoch": state.epoch, "tokens": state.num_input_tokens_seen}
        record.update({k: v for k, v in (logs or {}).items() if finite_number(v)})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def finite_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def read_metrics(path: Path) -> list[dict]:
    """The logged metrics; a line cut off by a kill (or unreadable) is skipped, so that --resume still works."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
