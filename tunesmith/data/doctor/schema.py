"""Schema validation that reports EVERY bad record (file, line, field), not just the first.

The readers and `normalize_record` stop at the first problem, which is right for training; here each record is
validated on its own and each failure becomes a finding. Only when a file cannot be split into records at all (a
broken JSON array, bad UTF-8, a missing file) is that one problem raised as a DataError.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ...config.schema import DatasetSpec
from ...errors import DataError
from .. import readers
from ..formats import detect_format, normalize_record
from ..readers import Record, type_name
from .base import Finding, Sample, Section
from .preference import is_empty_side, is_preference, read_preference


def load_samples(path: str, fmt: str = "auto") -> tuple[list[Sample], Section]:
    """The file's valid records as samples, and a `schema` section with one finding per invalid record."""
    records, findings = _read_all(path)
    spec = DatasetSpec(path=path, format=fmt)
    samples: list[Sample] = []
    formats: Counter = Counter()
    for index, record in enumerate(records):
        if not isinstance(record.data, dict):
            findings.append(_finding(record.error(f"expected a JSON object per record, got {type_name(record.data)}"),
                                     index))
            continue
        item = None
        try:
            if is_preference(record.data):  # any shape the preference trainers read, TRL's included
                messages, item = read_preference(record, fmt)
            else:
                messages = normalize_record(record, spec)
        except DataError as exc:
            empty = is_empty_side(record, exc.message)
            findings.append(_finding(exc, index, "preference.empty_side" if empty else "schema.invalid"))
            continue
        record_fmt = (detect_format(record.data) or ("trl" if item else None)) if fmt == "auto" else fmt
        formats[record_fmt] += 1
        samples.append(Sample(index, record.file, record.line, messages, record.data, record_fmt or "?", item))
    total = len(records) + sum(1 for f in findings if f.check == "schema.unparsable")
    section = Section("schema", metrics={
        "records": total, "valid": len(samples), "invalid": total - len(samples),
        "invalid_rate": round((total - len(samples)) / total, 4) if total else 0.0,
        "formats": dict(formats)}, findings=findings)
    return samples, section


def _finding(exc: DataError, index: int | None, check: str = "schema.invalid") -> Finding:
    message = exc.message + (f" ({exc.hint})" if exc.hint else "")
    file, line = exc.file, exc.line
    if file and ", row " in file:  # Parquet/hub records name their row inside `file`
        file, _, row = file.partition(", row ")
        line = int(row)
    return Finding(check, "error", message, file, line, exc.field, index)


def _read_all(path: str) -> tuple[list[Record], list[Finding]]:
    """Records via the shared readers; JSON Lines files are re-read line by line when some lines are broken."""
    try:
        return readers.read_records(path), []
    except DataError as exc:
        if exc.line is None or not _is_json_lines(path):
            if "expected a JSON object per record" in exc.message:
                return _read_without_object_check(path), []
            raise
    records, findings = [], []
    text = Path(path).read_text(encoding="utf-8-sig")
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(Record(json.loads(raw), path, number))
        except json.JSONDecodeError as exc:
            findings.append(Finding("schema.unparsable", "error", f"invalid JSON: {exc.msg} (column {exc.colno})",
                                    path, number))
    return records, findings


def _is_json_lines(path: str) -> bool:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return True
    if suffix != ".json":
        return False
    head = Path(path).read_text(encoding="utf-8-sig").lstrip()[:1]
    return head == "{"


def _read_without_object_check(path: str) -> list[Record]:
    """`read_records` rejects a whole file for one non-object record; the format readers themselves do not."""
    suffix = Path(path).suffix.lower()
    reader = readers._read_jsonl if _is_json_lines(path) else readers._read_json  # noqa: SLF001 (same package)
    if suffix not in (".json", ".jsonl"):
        raise DataError("records must be objects", file=path)
    return reader(path)
