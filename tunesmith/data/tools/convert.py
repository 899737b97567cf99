"""`data convert`: rewrite a file in another record format (Alpaca, ShareGPT, OpenAI messages)."""

from __future__ import annotations

from .records import read_items, to_record, write_records


def convert_file(source: str, out: str, to: str, fmt: str = "auto") -> int:
    """Converted record count. Fields outside the formats (ids, provenance, ...) are carried over."""
    items = read_items(source, fmt)
    write_records(out, [to_record(item.messages, to, item.extra) for item in items])
    return len(items)
