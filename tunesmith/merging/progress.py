"""A rich progress bar over tensors (quiet when disabled, e.g. in tests or weight search)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def tensor_progress(total: int, enabled: bool = True, label: str = "merging"):
    """Yields `advance(name)`, to be called once per finished tensor."""
    if not enabled:
        yield lambda name: None
        return
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("[dim]{task.fields[tensor]}"))
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, tensor="")
        yield lambda name: bar.update(task, advance=1, tensor=name)
