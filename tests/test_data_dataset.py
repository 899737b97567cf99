"""Building the tokenised datasets: mixing, validation split, drop counting, errors with locations."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import build_datasets
from tunesmith.data.encoding import IGNORE_INDEX
from tunesmith.data.templates import get_template
from tunesmith.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"


@pytest.fixture()
def tok():
    if not STORIES.exists():
        pytest.skip(f"stories260K tokenizer not found at {STORIES}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


def _jsonl(tmp_path: Path, name: str, rows: list[dict]) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _alpaca(prefix: str, n: int) -> list[dict]:
    return [{"instruction": f"Say {prefix} {i}", "output": f"{prefix}{i}"} for i in range(n)]


def _build(tok, template="chatml", **cfg):
    return build_datasets(DataConfig(template=template, **cfg), tok, get_template(template, tok))


def _replies(tok, dataset) -> list[str]:
    return [tok.decode([t for t in row["labels"] if t != IGNORE_INDEX]) for row in dataset]


def test_single_dataset_columns_and_stats(tmp_path, tok):
    built = _build(tok, train=[{"path": _jsonl(tmp_path, "a.jsonl", _alpaca("A", 30))}])
    assert built.train.column_names == ["input_ids", "labels", "length"]
    assert built.validation is None and len(built.train) == 30
    assert built.stats["train_samples"] == 30 and built.stats["dropped_no_label"] == 0
    assert all(row["length"] == len(row["input_ids"]) for row in built.train)
    assert sorted(_replies(tok, built.train)) == sorted(f"A{i}<|im_end|>" for i in range(30))
    assert 0 < built.stats["train_supervised_tokens"] < built.stats["train_tokens"]


def test_mixing_follows_weights_and_repeats_only_when_needed(tmp_path, tok):
    a, b = _jsonl(tmp_path, "a.jsonl", _alpaca("A", 100)), _jsonl(tmp_path, "b.jsonl", _alpaca("B", 20))
    built = _build(tok, train=[{"path": a, "weight": 3}, {"path": b, "weight": 1}], num_samples=120)
    replies = _replies(tok, built.train)
    assert len(replies) == 120
    assert sum(r.startswith("A") for r in replies) == 90 and sum(r.startswith("B") for r in replies) == 30
    assert [d["repeated"] for d in built.stats["datasets"]] == [False, True]
    assert len(set(r for r in replies if r.startswith("A"))) == 90  # A subsampled without repetition
    assert len(set(r for r in replies if r.startswith("B"))) == 20

    equal = _build(tok, train=[{"path": a, "weight": 1}, {"path": b, "weight": 1}])
    replies = _replies(tok, equal.train)
    assert sum(r.startswith("A") for r in replies) == sum(r.startswith("B") for r in replies) == 20
    assert len(set(replies)) == 40  # no repetition without num_samples

    plain = _build(tok, train=[{"path": a}, {"path": b}])  # no weights: everything, once
    assert len(plain.train) == 120 and len(set(_replies(tok, plain.train))) == 120


@pytest.mark.parametrize("val_size, expected", [(0.1, 12), (5, 5)])
def test_validation_split_sizes_and_disjoint(tmp_path, tok, val_size, expected):
    a, b = _jsonl(tmp_path, "a.jsonl", _alpaca("A", 100)), _jsonl(tmp_path, "b.jsonl", _alpaca("B", 20))
    built = _build(tok, train=[{"path": a}, {"path": b}], val_size=val_size)
    train, val = set(_replies(tok, built.train)), set(_replies(tok, built.validation))
    assert len(val) == expected and len(train) == 120 - expected and not train & val
    assert built.stats["validation_samples"] == expected
    assert sum(d["validation"] for d in built.stats["datasets"]) == expected


def test_held_out_samples_never_repeat_into_training(tmp_path, tok):
    b = _jsonl(tmp_path, "b.jsonl", _alpaca("B", 20))
    built = _build(tok, train=[{"path": b}], num_samples=100, val_size=0.25)
    assert not set(_replies(tok, built.train)) & set(_replies(tok, built.validation))
    assert len(built.validation) == 5 and len(built.train) == 100


def test_val_size_leaving_nothing_is_an_error(tmp_path, tok):
    with pytest.raises(DataError, match="val_size"):
        _build(tok, train=[{"path": _jsonl(tmp_path, "a.jsonl", _alpaca("A", 5))}], val_size=5)


def test_explicit_validation_datasets(tmp_path, tok):
    built = _build(tok, train=[{"path": _jsonl(tmp_path, "a.jsonl", _alpaca("A", 10))}],
                   validation=[{"path": _jsonl(tmp_path, "v.jsonl", _alpaca("V", 3))}])
    assert sorted(_replies(tok, built.validation)) == [f"V{i}<|im_end|>" for i in range(3)]
    assert len(built.train) == 10


def test_unfittable_samples_are_dropped_counted_and_warned(tmp_path, tok):
    rows = _alpaca("A", 10) + [{"instruction": "q", "output": "a", "system": "Very long system prompt. " * 20}]
    with pytest.warns(UserWarning, match="1 of 11 train samples dropped"):
        built = _build(tok, train=[{"path": _jsonl(tmp_path, "a.jsonl", rows)}], max_length=64)
    assert len(built.train) == 10
    assert built.stats["dropped_no_label"] == 1 and built.stats["datasets"][0]["dropped_no_label"] == 1


def test_all_dropped_is_an_error(tmp_path, tok):
    rows = [{"instruction": "q", "output": "a", "system": "Very long system prompt. " * 20}]
    with pytest.raises(DataError, match="all 1 train samples were dropped"):
        _build(tok, train=[{"path": _jsonl(tmp_path, "a.jsonl", rows)}], max_length=64)


def test_bad_record_error_names_file_and_line(tmp_path, tok):
    path = _jsonl(tmp_path, "a.jsonl", _alpaca("A", 3) + [{"instruction": "q", "output": 7}])
    with pytest.raises(DataError) as err:
        _build(tok, train=[{"path": path}])
    assert (err.value.file, err.value.line, err.value.field) == (path, 4, "output")


def test_template_failure_during_encoding_names_the_record(tmp_path, tok):
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    path = _jsonl(tmp_path, "a.jsonl", _alpaca("A", 2))
    with pytest.raises(DataError) as err:
        _build(tok, template="model", train=[{"path": path}])
    assert err.value.file == path and err.value.line in (1, 2)


def test_seed_controls_order(tmp_path, tok):
    spec = [{"path": _jsonl(tmp_path, "a.jsonl", _alpaca("A", 30))}]
    first, again = _build(tok, train=spec, seed=1), _build(tok, train=spec, seed=1)
    other = _build(tok, train=spec, seed=2)
    assert first.train["input_ids"] == again.train["input_ids"] != other.train["input_ids"]


def test_unfilled_placeholders_warn(tmp_path, tok):
    path = _jsonl(tmp_path, "a.jsonl", [{"instruction": "who?", "output": "I am {{name}}."}])
    with pytest.warns(UserWarning, match=r"\{\{name\}\}"):
        _build(tok, train=[{"path": path}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _build(tok, train=[{"path": path, "placeholders": {"name": "Tuney"}}])


def test_shared_chinese_and_identity_mix_is_fast(tok):
    instruct = SHARED / "data" / "instruct"
    zh, identity = instruct / "alpaca_zh_demo.json", instruct / "identity.json"
    if not zh.exists():
        pytest.skip(f"shared data not found at {zh}")
    start = time.perf_counter()
    built = _build(tok, template="alpaca_zh", max_length=256, val_size=0.05,
                   train=[{"path": str(zh)},
                          {"path": str(identity), "placeholders": {"name": "Tuney", "author": "Acme"}}])
    assert time.perf_counter() - start < 15
    assert len(built.train) + len(built.validation) == 850 + 91 - built.stats["dropped_no_label"]
    assert any("Tuney" in tok.decode(row["input_ids"]) for row in built.train)
