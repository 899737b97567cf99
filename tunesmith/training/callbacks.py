"""What the user sees and keeps while training: a live bar, a metrics file, findings on bad runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    """One progress bar with loss, learning rate, real (non-padding) tokens/s and ETA."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._fields = {"loss": "-", "lr": "-", "tps": "-"}

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, refresh_per_second=4,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           **self._fields)
        self._t0, self._tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self._t0
        if elapsed > 0 and state.num_input_tokens_seen > self._tokens0:
            self._fields["tps"] = f"{(state.num_input_tokens_seen - self._tokens0) / elapsed:,.0f}"
        self.progress.update(self.task, completed=state.global_step, **self._fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self._fields["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            self._fields["lr"] = f"{logs['learning_rate']:.2e}"
        if "eval_loss" in logs and self.progress is not None:
            self.progress.console.print(f"  step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self._fields)
            self.progress.stop()
            self.progress = None


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
        record.update({k: v for k, v in (logs or {}).items() if _finite_number(v)})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _finite_number(value) -> bool:
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
