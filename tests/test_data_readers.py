"""Reading data files: every record knows its line; every malformed file names the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.readers import read_records
from tunesmith.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_array_records_know_their_start_line(tmp_path):
    path = _write(tmp_path, "d.json", '[\n  {"a": 1},\n\n  {\n    "a": 2\n  },\n  {"a": 3}\n]\n')
    records = read_records(path)
    assert [r.data["a"] for r in records] == [1, 2, 3]
    assert [r.line for r in records] == [2, 4, 7]


def test_json_syntax_error_reports_line(tmp_path):
    path = _write(tmp_path, "d.json", '[\n {"a": 1},\n {"a": 2}\n {"a": 3}\n]')  # missing comma after line 3
    with pytest.raises(DataError) as err:
        read_records(path)
    assert err.value.line == 4
    assert "line 4" in str(err.value)


def test_json_broken_value_reports_its_line(tmp_path):
    path = _write(tmp_path, "d.json", '[\n {"a": 1},\n {"a": tru}\n]')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert err.value.line == 3


def test_json_non_object_record_is_named(tmp_path):
    path = _write(tmp_path, "d.json", '[\n {"a": 1},\n "just a string"\n]')
    with pytest.raises(DataError, match="object") as err:
        read_records(path)
    assert err.value.line == 3


def test_json_top_level_must_be_array(tmp_path):
    with pytest.raises(DataError, match="array"):
        read_records(_write(tmp_path, "d.json", '"hello"'))


def test_json_file_holding_json_lines_is_accepted(tmp_path):
    records = read_records(_write(tmp_path, "d.json", '{"a": 1}\n{"a": 2}\n'))
    assert [r.line for r in records] == [1, 2]


def test_jsonl_skips_blank_lines_and_reports_bad_line(tmp_path):
    records = read_records(_write(tmp_path, "d.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n'))
    assert [(r.data["a"], r.line) for r in records] == [(1, 1), (2, 4)]
    with pytest.raises(DataError) as err:
        read_records(_write(tmp_path, "bad.jsonl", '{"a": 1}\n{"a": 2}\n{"a": \n'))
    assert err.value.line == 3


def test_csv_rows_report_their_line_even_after_multiline_cells(tmp_path):
    path = _write(tmp_path, "d.csv", 'instruction,output\nq1,"a\nb"\nq2,c\n')
    records = read_records(path)
    assert [r.data for r in records] == [{"instruction": "q1", "output": "a\nb"},
                                         {"instruction": "q2", "output": "c"}]
    assert [r.line for r in records] == [2, 4]


def test_csv_row_with_surplus_cells_is_an_error(tmp_path):
    with pytest.raises(DataError) as err:
        read_records(_write(tmp_path, "d.csv", "a,b\n1,2\n1,2,3\n"))
    assert err.value.line == 3


def test_tsv_uses_tabs(tmp_path):
    records = read_records(_write(tmp_path, "d.tsv", "label\tsentence\n1\tgood, fine\n"))
    assert records[0].data == {"label": "1", "sentence": "good, fine"}


def test_parquet_reports_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "q", "output": "a"},
                                         {"instruction": "q2", "output": "b"}]), path)
    records = read_records(str(path))
    assert records[0].data == {"instruction": "q", "output": "a"}
    assert "row 1" in str(records[1].error("bad"))


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="unsupported"):
        read_records(_write(tmp_path, "d.txt", "hello"))


def test_hub_id_failure_becomes_data_error_with_offline_hint(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        read_records("someone/some-dataset")
    assert "offline" in err.value.hint and "ConnectionError" in str(err.value)


def test_shared_alpaca_file_reads_with_increasing_lines():
    path = SHARED / "data" / "instruct" / "alpaca_zh_demo.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    records = read_records(str(path))
    assert len(records) == len(json.loads(path.read_text(encoding="utf-8")))
    assert records[0].line == 2
    assert all(a.line < b.line for a, b in zip(records, records[1:]))
