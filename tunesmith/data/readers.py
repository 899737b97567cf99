"""Read raw records from local files (or, when online, the HF hub), remembering where each came from.

Every record keeps its file and line so that a bad record anywhere later in the pipeline can be
reported as `file, line N, field 'x'` instead of a traceback.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass
class Record:
    """One raw record. `unit` is "line" for text files and "row" for tables (Parquet, hub datasets)."""

    data: dict[str, Any]
    file: str
    line: int | None
    unit: str = "line"

    def error(self, message: str, *, field: str | None = None, hint: str | None = None) -> DataError:
        """A DataError pointing at this record (and optionally one of its fields)."""
        if self.unit == "line":
            return DataError(message, file=self.file, line=self.line, field=field, hint=hint)
        return DataError(message, file=f"{self.file}, {self.unit} {self.line}", field=field, hint=hint)


def read_records(path: str, split: str = "train") -> list[Record]:
    """All records of a data file, or of a hub dataset split when `path` looks like `owner/name`."""
    file = Path(path)
    if not file.exists():
        if _HUB_ID.fullmatch(path) and not path.endswith(SUPPORTED_SUFFIXES):
            return _read_hub(path, split)
        raise DataError("data file not found", file=path,
                        hint="check the path (relative paths are resolved from the working directory)")
    if file.is_dir():
        raise DataError("is a directory, expected a data file", file=path,
                        hint=f"point `path` at one file ({', '.join(SUPPORTED_SUFFIXES)})")
    suffix = file.suffix.lower()
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_delimited,
               ".tsv": _read_delimited, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix or '(none)'}'", file=path,
                        hint=f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    records = readers[suffix](path)
    for record in records:
        if not isinstance(record.data, dict):
            raise record.error(f"expected a JSON object per record, got {type_name(record.data)}")
    if not records:
        raise DataError("no records found", file=path, hint="the file is empty")
    return records


def _read_text(path: str) -> str:
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM that json rejects.
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", file=path,
                        hint="re-save the file as UTF-8") from None


def _read_json(path: str) -> list[Record]:
    """A top-level array, decoded element by element so each record knows the line it starts on."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text.startswith("{", pos):
        return _read_jsonl(path, text)  # a ".json" file holding one object per line (very common)
    if not text.startswith("[", pos):
        raise _json_error(path, text, pos, "expected a JSON array of records ('[' ...)")
    records, line, counted = [], 1, 0
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return records
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=path, line=exc.lineno) from None
        line += text.count("\n", counted, pos)  # incremental, so the scan stays linear in file size
        counted = pos
        records.append(Record(obj, path, line))
        pos = _skip_ws(text, end)
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise _json_error(path, text, pos, "expected ',' or ']' after a record")
        pos = _skip_ws(text, pos + 1)
    if _skip_ws(text, pos + 1) != len(text):
        raise _json_error(path, text, _skip_ws(text, pos + 1), "unexpected data after the closing ']'")
    return records


def _read_jsonl(path: str, text: str | None = None) -> list[Record]:
    text = _read_text(path) if text is None else text
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(Record(json.loads(raw), path, number))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=path, line=number,
                            hint="JSON Lines needs one complete JSON object per line") from None
    return records


def _read_delimited(path: str) -> list[Record]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    text = _read_text(path)
    if "\x00" in text:
        raise DataError("holds a NUL byte: not a text table", file=path,
                        line=text.count("\n", 0, text.index("\x00")) + 1, hint="is this a binary file renamed .csv?")
    # csv refuses cells over its field size limit (131,072 characters by default); a long document is legitimate
    # training data, so the limit is the file's own size.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise DataError(f"unreadable header row: {exc}", file=path, line=1) from None
    if not fieldnames:
        raise DataError("no header row", file=path, hint="the first row must name the columns")
    records, start = [], reader.line_num + 1
    for row in _rows(reader, path, lambda: start):
        if None in row:  # DictReader files surplus cells under the key None
            raise DataError(f"row has more cells than the header's {len(reader.fieldnames)} columns",
                            file=path, line=start, hint="quote cells that contain the delimiter")
        records.append(Record(dict(row), path, start))
        start = reader.line_num + 1  # a quoted cell may span lines; the next row starts after them
    return records


def _rows(reader: csv.DictReader, path: str, line):
    """The reader's rows; a malformed one is a DataError at the line where its row starts (`line()`)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"malformed row: {exc}", file=path, line=line()) from None


def _read_parquet(path: str) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()  # plain Python values, unlike pandas' numpy objects
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"cannot read Parquet: {exc}", file=path) from None
    return [Record(row, path, index, unit="row") for index, row in enumerate(rows)]


def _read_hub(path: str, split: str) -> list[Record]:
    try:
        import datasets

        rows = datasets.load_dataset(path, split=split)
    except Exception as exc:  # offline, unknown repo, unknown split, ...: all fixed the same ways
        raise DataError(f"could not load hub dataset (split '{split}'): {type(exc).__name__}: {exc}",
                        file=path, hint="no local file has this path, so it was treated as a hub id; "
                                        "if you are offline, download the data and point `path` at a local "
                                        ".json/.jsonl/.csv/.parquet file") from None
    return [Record(dict(row), f"{path}[{split}]", index, unit="row") for index, row in enumerate(rows)]


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_error(path: str, text: str, pos: int, message: str) -> DataError:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return DataError(f"invalid JSON: {message} (column {column})", file=path, line=line)


def type_name(value: Any) -> str:
    """How a JSON value's type is named in error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)
