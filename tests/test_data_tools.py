"""data convert / dedup / split / mix, on hand-made files and ../shared/data."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main
from tunesmith.data.tools import (MixSource, convert_file, dedup_file, mix_sources, parse_source, read_items,
                                  split_file)
from tunesmith.errors import DataError

from .conftest import SHARED, require_shared
from .test_doctor import CLEAN, write_jsonl


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_convert_round_trip_keeps_conversations(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", CLEAN + [{"instruction": "继续", "input": "", "output": "好的。",
                                                         "system": "你是助手。", "history": [["你好", "你好！"]],
                                                         "id": 7}])
    original = [i.messages for i in read_items(source)]
    path = source
    for fmt in ("sharegpt", "openai", "alpaca"):
        out = str(tmp_path / f"{fmt}.json")
        assert convert_file(path, out, fmt) == len(CLEAN) + 1
        path = out
    again = read_items(path)
    from tunesmith.data.formats import plain_messages

    assert [plain_messages(i.messages) for i in again] == [plain_messages(m) for m in original]
    assert again[-1].extra == {"id": 7}
    assert "conversations" in json.load(open(tmp_path / "sharegpt.json"))[0]


def test_dedup_removes_planted_duplicates_and_eval_overlap(tmp_path):
    near = dict(CLEAN[0], output=CLEAN[0]["output"].replace("。", "！"))
    source = write_jsonl(tmp_path / "d.jsonl", CLEAN + [dict(CLEAN[1]), near])
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": CLEAN[4]["instruction"], "output": "x"}])
    out = tmp_path / "out.jsonl"
    result = dedup_file(source, str(out), against=[eval_file])
    assert (result.exact, result.near, result.contaminated) == (1, 1, 1)
    kept = read_jsonl(out)
    assert len(kept) == len(CLEAN) - 1 and kept[0] == CLEAN[0]  # the first of each group survives, unchanged
    clean_out = tmp_path / "c.jsonl"
    assert dedup_file(write_jsonl(tmp_path / "c_in.jsonl", CLEAN), str(clean_out)).kept == len(CLEAN)


def test_split_is_stratified_and_keeps_near_duplicates_together(tmp_path):
    require_shared()
    source = str(SHARED / "data" / "instruct" / "alpaca_en_demo.json")
    counts = split_file(source, str(tmp_path / "s"), validation=0.1, test=0.05, seed=1)
    assert sum(counts.values()) == 849 and abs(counts["validation"] - 85) <= 6 and abs(counts["test"] - 42) <= 6
    parts = {name: read_jsonl(tmp_path / "s" / f"{name}.jsonl") for name in counts}
    keys = {name: {json.dumps(r, sort_keys=True) for r in rows} for name, rows in parts.items()}
    dup = CLEAN[0]
    twin = dict(dup, output=dup["output"].replace("。", "！"))
    records = CLEAN * 1 + [twin] + [dict(r, instruction=r["instruction"] + f" ({n})") for n in range(3)
                                    for r in CLEAN]
    small = split_file(write_jsonl(tmp_path / "x.jsonl", records), str(tmp_path / "t"), validation=0.3, seed=3)
    rows = {name: read_jsonl(tmp_path / "t" / f"{name}.jsonl") for name in small}
    where = {name for name, items in rows.items() for r in items if r in (dup, twin)}
    assert len(where) == 1  # the near-duplicate pair never straddles train and validation
    assert not keys["train"] & keys["validation"]
    with pytest.raises(DataError):
        split_file(source, str(tmp_path / "bad"), validation=0.7, test=0.4)


def test_mix_ratios_prefixes_and_replay(tmp_path):
    require_shared()
    zh = str(SHARED / "data" / "instruct" / "alpaca_zh_demo.json")
    en = str(SHARED / "data" / "instruct" / "alpaca_en_demo.json")
    general = str(SHARED / "data" / "general" / "c4_demo.jsonl")
    items, counts = mix_sources([MixSource(zh, 0.6, "[中文]"), MixSource(en, 0.3), MixSource(general, 0.1)],
                                total=200, seed=0)
    assert counts == {zh: 120, en: 60, general: 20} and len(items) == 200
    zh_items = [i for i in items if i.record.file == zh]
    assert all(next(m for m in i.messages if m["role"] == "user")["content"].startswith("[中文] ") for i in zh_items)
    replay = [i for i in items if i.record.file == general]
    assert all(i.messages[0]["content"].startswith(("Continue the text", "续写")) for i in replay)
    tagged, _ = mix_sources([MixSource(zh)], total=50, task_prefix=True)
    assert any(i.messages[0]["content"].startswith("[翻译]") or i.messages[0]["content"].startswith("[代码]")
               or i.messages[0]["content"].startswith("[问答]") for i in tagged)
    assert parse_source("a.json=0.5=[翻译]") == MixSource("a.json", 0.5, "[翻译]")
    with pytest.raises(DataError):
        parse_source("a.json=lots")


def test_cli_tools(tmp_path, capsys):
    source = write_jsonl(tmp_path / "a.jsonl", CLEAN + [CLEAN[0]])
    assert main(["data", "dedup", source, "--out", str(tmp_path / "d.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "d.jsonl")) == len(CLEAN)
    assert main(["data", "convert", source, "--to", "openai", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "messages" in read_jsonl(tmp_path / "o.jsonl")[0]
    assert main(["data", "split", source, "--out-dir", str(tmp_path / "s"), "--validation", "0.25"]) == 0
    assert main(["data", "mix", f"{source}=1", f"{tmp_path / 'o.jsonl'}=1", "--num", "6",
                 "--out", str(tmp_path / "m.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 6
    bad = write_jsonl(tmp_path / "bad.jsonl", CLEAN + [{"instruction": "x"}])
    assert main(["data", "convert", bad, "--to", "sharegpt", "--out", str(tmp_path / "z.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "line 9" in err and "output" in err and "Traceback" not in err
