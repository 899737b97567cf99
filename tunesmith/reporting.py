"""How library code tells the user what is happening, without printing.

Library modules never print and never import rich: they send what a user should see to a `Reporter`, and log what
only someone debugging a run needs (an internal choice, a fallback taken) with `logging`, under the `tunesmith`
logger. The CLI passes a console reporter (`tunesmith/cli/render.py`) that draws lines, spinners and bars; a run
writes every record, both kinds, to its `train.log`; `--verbose` also shows the internal ones on the console.

The default `Reporter` only logs, so Python callers (tests, notebooks, benchmarks) get a silent library.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

# What the user is shown: a record of this logger is a line of the console, not an internal detail.
USER = logging.getLogger("tunesmith.user")


class Reporter:
    """What a library call tells the user. Subclasses render; this base class only logs (a run's log file keeps
    every line). Messages are plain text: no markup."""

    def info(self, message: str) -> None:
        """A line the user reads: what is trained, the data summary, the pre-flight, the result."""
        USER.info(message)

    def warning(self, message: str) -> None:
        """Something the user should act on or know (a note, a likely mistake)."""
        USER.warning(message)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A step with no measurable progress (loading a model): a spinner on a console."""
        USER.debug(message)
        yield

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A step with progress: yields `advance(n=1, detail="")`, called as work gets done."""
        USER.debug("%s (%s)", description, total)
        yield lambda n=1, detail="": None

    def training_callbacks(self) -> list:
        """Trainer callbacks that show training progress (a live bar on a console); none by default."""
        return []


def reporter_or_default(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else Reporter()


class RunLog:
    """Every `tunesmith` log record of a run, user lines and internal choices alike, for the run folder's
    `train.log`. Records are held in memory until `write_to(path)`: a run whose input turns out bad has no folder
    to write into yet, and must not create one."""

    def __init__(self):
        self.records: list[logging.LogRecord] = []
        self._memory = _Keep(self.records)
        self._file: logging.Handler | None = None
        self._level = logging.NOTSET

    def __enter__(self) -> RunLog:
        root = logging.getLogger("tunesmith")
        self._level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(self._memory)
        return self

    def write_to(self, path) -> None:
        """From now on append to `path`, starting with what was held."""
        if self._file is not None:
            return
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._file.setLevel(logging.INFO)
        for record in self.records:
            self._file.handle(record)
        root = logging.getLogger("tunesmith")
        root.removeHandler(self._memory)
        root.addHandler(self._file)

    def __exit__(self, *exc) -> None:
        root = logging.getLogger("tunesmith")
        for handler in (self._memory, self._file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(self._level)


class _Keep(logging.Handler):
    def __init__(self, records: list):
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
