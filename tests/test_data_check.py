"""`tunesmith train` reads its local data files before the training libraries load (tunesmith/data/check.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tunesmith.data.check as check
from tunesmith.config.loading import load_config
from tunesmith.errors import DataError

from .conftest import ROOT

HEAVY = ("torch", "transformers", "peft", "datasets")


def _config(tmp_path, data_path, task="sft", **data):
    raw = {"model": {"name_or_path": str(tmp_path)}, "task": task, "method": {"name": "lora"},
           "data": {"train": [{"path": str(data_path)}], "template": "alpaca_en", **data},
           "training": {"output_dir": str(tmp_path / "run")}}
    (tmp_path / "run.yaml").write_text(json.dumps(raw))
    return load_config(tmp_path / "run.yaml")


def test_the_cli_reports_a_bad_record_from_a_process_that_loaded_no_training_library(tmp_path):
    """The command as run from a shell (so it may restart itself with its allocator): the record's file, line and
    field come before torch, transformers, PEFT or datasets are imported, not after they load twice."""
    data = tmp_path / "missing.json"
    data.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": {"name_or_path": str(tmp_path)}, "data": {"train": [{"path": str(data)}]},
                                  "training": {"output_dir": str(tmp_path / "run")}}))
    script = ("import sys\nfrom tunesmith.cli.main import main\nsys.argv = ['tunesmith', 'train', sys.argv[1]]\n"
              f"code = main()\nprint(code, [m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.stdout.split() == ["2", "[]"], proc.stdout + proc.stderr
    assert "missing.json, line 3, field 'output'" in proc.stderr and "Traceback" not in proc.stderr


def test_sft_records_are_checked_with_the_runs_own_reader(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: invalid JSON"):
        check.check_data_files(_config(tmp_path, bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "a", "output": "b"}\n')
    check.check_data_files(_config(tmp_path, good))
    with pytest.raises(DataError, match="bad.jsonl"):  # validation files are read too
        check.check_data_files(_config(tmp_path, good, validation=[{"path": str(bad)}]))


def test_preference_pairs_need_both_replies(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n"
                     + json.dumps({"prompt": "q", "chosen": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2.*rejected"):
        check.check_data_files(_config(tmp_path, pairs, task="dpo"))
    check.check_data_files(_config(tmp_path, pairs, task="dpo", train=[{"path": str(pairs), "max_samples": 1}]))


def test_files_over_the_limit_are_left_to_the_run(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "c", "output": \n')
    monkeypatch.setattr(check, "CHECK_MAX_BYTES", bad.stat().st_size - 1)
    check.check_data_files(_config(tmp_path, bad))  # not read here: the run reports it
