"""Tokenising in forked workers: same rows as one process, errors keep their file and line."""

from __future__ import annotations

import os

import pytest

from tunesmith.config.schema import DataConfig
from tunesmith.data import parallel
from tunesmith.data.dataset import build_datasets
from tunesmith.data.templates import get_template
from tunesmith.errors import DataError

from .test_data_dataset import _jsonl, tok  # noqa: F401  (tok is a fixture)


def _square_or_fail(value):
    if value == 13:
        raise DataError("unlucky", file="data.jsonl", line=14, field="output", hint="drop it")
    return {"square": value * value, "pid": os.getpid()}


def test_worker_count_default_and_explicit(monkeypatch):
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 4)
    assert parallel.worker_count(None, 100) == 1  # too few samples to pay for a worker
    assert parallel.worker_count(None, 2 * parallel.MIN_SAMPLES_PER_WORKER) == 2
    assert parallel.worker_count(None, 100_000) == 4  # never more than the CPUs
    assert parallel.worker_count(3, 100_000) == 3 and parallel.worker_count(8, 5) == 5


def test_map_samples_in_workers_matches_serial_order():
    values = [v for v in range(40) if v != 13]
    results = parallel.map_samples(_square_or_fail, values, workers=3)
    assert [r["square"] for r in results] == [v * v for v in values]
    assert os.getpid() not in {r["pid"] for r in results}  # really ran in worker processes


def test_map_samples_worker_error_keeps_location():
    with pytest.raises(DataError) as err:
        parallel.map_samples(_square_or_fail, list(range(40)), workers=2)
    assert (err.value.file, err.value.line, err.value.field, err.value.hint) == ("data.jsonl", 14, "output", "drop it")
    assert "unlucky" in str(err.value)


def test_parallel_build_gives_the_same_rows_and_stats(tmp_path, tok):  # noqa: F811
    rows = [{"instruction": f"Say {i} " + "word " * (i % 7) * (40 if i % 10 == 3 else 1), "output": f"reply {i}"}
            for i in range(60)]
    path = _jsonl(tmp_path, "a.jsonl", rows)

    def build(num_proc):
        cfg = DataConfig(template="chatml", train=[{"path": path}], num_proc=num_proc, max_length=64)
        return build_datasets(cfg, tok, get_template("chatml", tok))

    serial, forked = build(1), build(3)
    assert serial.train.to_list() == forked.train.to_list()
    assert serial.stats == forked.stats and 0 < serial.stats["truncated"] < 60  # some truncated, in either mode
