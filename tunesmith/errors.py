"""User-facing errors.

Every problem caused by the user's input (a config, a data file, a model path) is raised as a
`TunesmithError`; the CLI prints it as one readable message and exits non-zero, never a traceback.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """An error the user can fix. `where` names the file/line/field, `hint` says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(TunesmithError):
    """A bad configuration value or combination."""


class DataError(TunesmithError):
    """A malformed data file or record."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        parts = [p for p in (file, f"line {line}" if line is not None else None,
                             f"field '{field}'" if field else None) if p]
        super().__init__(message, where=", ".join(parts) or None, hint=hint)
        self.file, self.line, self.field = file, line, field


class ModelError(TunesmithError):
    """A model that cannot be found or loaded."""
