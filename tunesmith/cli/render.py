"""The console side of `tunesmith.reporting`: what library calls report, drawn with rich.

Only the CLI imports rich. `ConsoleReporter` prints the user's lines, spinners and bars; `show_internal_log`
(`--verbose`) also prints the internal log records that otherwise only reach a run's `train.log`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from transformers import TrainerCallback

from ..reporting import USER, Reporter


class ConsoleReporter(Reporter):
    """Draws on `console` (stderr by default, so that stdout stays for a command's output)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)

    def info(self, message: str) -> None:
        super().info(message)
        self.console.print(escape(message), highlight=False)

    def warning(self, message: str) -> None:
        super().warning(message)
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    @contextmanager
    def status(self, message: str):
        with super().status(message), self.console.status(escape(message)):
            yield

    @contextmanager
    def progress(self, description: str, total: int | None):
        columns = (SpinnerColumn(), TextColumn(f"[bold]{escape(description)}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("[dim]{task.fields[detail]}"))
        with super().progress(description, total), Progress(*columns, console=self.console,
                                                            transient=False) as bar:
            task = bar.add_task(description, total=total, detail="")
            yield lambda n=1, detail="": bar.update(task, advance=n, detail=escape(str(detail)))

    def training_callbacks(self) -> list:
        return [TrainingProgress(self.console)]


class TrainingProgress(TrainerCallback):
    """One progress bar with loss, learning rate, real (non-padding) tokens/s and ETA."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._fields = {"loss": "-", "lr": "-", "tps": "-", "extra": ""}

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}{task.fields[extra]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
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
        # Preference runs (TRL): pair accuracy and reward margin (the reward model's: accuracy and margin).
        accuracy, margin = logs.get("rewards/accuracies", logs.get("accuracy")), logs.get("rewards/margins",
                                                                                          logs.get("margin"))
        if accuracy is not None and margin is not None:
            self._fields["extra"] = f"  acc {accuracy:.2f}  margin {margin:+.3f}"
        # Retain runs: the task's loss and each penalty (loss_task, loss_l2sp, ...).
        terms = [(key.removeprefix("loss_"), value) for key, value in logs.items() if key.startswith("loss_")]
        if terms:
            self._fields["extra"] = " (" + "  ".join(f"{name} {value:.4f}" for name, value in terms) + ")"
        if "eval_loss" in logs and self.progress is not None:
            self.progress.console.print(f"  step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self._fields)
            self.progress.stop()
            self.progress = None


class _Internal(logging.Filter):
    """Only the records that are not already the user's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(USER.name)


def show_internal_log(console: Console) -> None:
    """`--verbose`: tunesmith's internal log records (the choices a run made, fallbacks taken) on the console."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    handler.setLevel(logging.INFO)
    handler.addFilter(_Internal())
    root = logging.getLogger("tunesmith")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
