"""Resumable JSONL output: what is already written counts as done; new records are appended and synced."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ... import __version__
from ...errors import DataError


def provenance(method: str, teacher: str, **details) -> dict:
    return {"method": method, "teacher": teacher, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool": f"tunesmith {__version__}", **details}


class JsonlAppender:
    def __init__(self, path: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing = self._read_existing()
        self.handle = open(self.path, "a", encoding="utf-8")

    def _read_existing(self) -> list[dict]:
        """Records already in the file. A last line cut off by an interrupted run is removed."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        records, good = [], 0
        lines = text.splitlines(keepends=True)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                good += len(line.encode("utf-8"))
                continue
            try:
                records.append(json.loads(line))
                good += len(line.encode("utf-8"))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise DataError("invalid JSON in the output being resumed", file=str(self.path), line=number,
                                    hint="fix or remove that line, or write to a new file") from None
                break
        if good < len(text.encode("utf-8")):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
        return records

    def write(self, records: list[dict]) -> None:
        for record in records:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
