"""Records → validated conversations; bad records name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config.schema import DatasetSpec
from tunesmith.data.formats import detect_format, normalize_record, user_text
from tunesmith.data.readers import Record, read_records
from tunesmith.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _shared(*parts: str) -> str:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return str(path)


def _norm(data: dict, **spec) -> list[dict]:
    return normalize_record(Record(data, "f.json", 7), DatasetSpec(path="f.json", **spec))


def _error(data: dict, **spec) -> DataError:
    with pytest.raises(DataError) as err:
        _norm(data, **spec)
    return err.value


def test_detect_format():
    assert detect_format({"instruction": "q", "output": "a"}) == "alpaca"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"text": "x"}) is None


def test_alpaca_keeps_input_separate_and_places_system_and_history_first():
    messages = _norm({"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be brief.",
                      "history": [["hi", "hey"]]})
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                        {"role": "user", "content": "Translate", "input": "bonjour"},
                        {"role": "assistant", "content": "hello"}]
    assert user_text(messages[3]) == "Translate\n\nbonjour"


def test_alpaca_empty_input_is_dropped():
    assert _norm({"instruction": "q", "input": "", "output": "a"})[0] == {"role": "user", "content": "q"}


def test_sharegpt_from_preference_file_uses_chosen_reply():
    record = read_records(_shared("data", "preference", "dpo_en_demo.json"))[0]
    messages = normalize_record(record, DatasetSpec(path=record.file))
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[-1]["content"] == record.data["chosen"]["value"]


def test_sharegpt_roles_and_top_level_system():
    messages = _norm({"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]


def test_openai_messages_from_shared_file():
    record = read_records(_shared("data", "preference", "kto_en_demo.json"))[0]
    messages = normalize_record(record, DatasetSpec(path=record.file))
    assert messages == record.data["messages"]


def test_columns_rename_and_default_system():
    messages = _norm({"question": "q", "answer": "a"}, columns={"instruction": "question", "output": "answer"},
                     system="You are kind.")
    assert messages == [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]
    own = _norm({"instruction": "q", "output": "a", "system": "Mine"}, system="Default")
    assert own[0]["content"] == "Mine"


def test_missing_renamed_column_is_named():
    assert _error({"instruction": "q", "output": "a"}, columns={"output": "answer"}).field == "answer"


def test_placeholders_filled_in_identity_data():
    path = _shared("data", "instruct", "identity.json")
    spec = DatasetSpec(path=path, placeholders={"name": "Tuney", "author": "Acme"})
    text = json.dumps([normalize_record(r, spec) for r in read_records(path)])
    assert "{{" not in text and "Tuney" in text and "Acme" in text


@pytest.mark.parametrize("data, field, words", [
    ({"instruction": "q"}, "output", "missing"),
    ({"instruction": "q", "output": 42}, "output", "number"),
    ({"instruction": "q", "output": ["a"]}, "output", "array"),
    ({"instruction": "q", "output": "  \n "}, "output", "empty assistant"),
    ({"instruction": " ", "output": "a"}, "instruction", "empty user"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]", "pair"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages[0]", "end with an assistant"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                   {"role": "assistant", "content": "a"}]}, "messages[1]", "two user turns"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "messages[0]", "start with a user"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "unknown role"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"},
                        {"from": "gpt", "value": "a"}]}, "conversations[1]", "system"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]}, "conversations[1]", "string"),
])
def test_invalid_records_name_file_line_and_field(data, field, words):
    error = _error(data)
    assert (error.file, error.line, error.field) == ("f.json", 7, field)
    assert words in str(error)
    assert f"f.json, line 7, field '{field}'" in str(error)


def test_unknown_format_hints_at_columns():
    error = _error({"question": "q", "answer": "a"})
    assert "columns" in error.hint and error.line == 7


def test_error_from_file_carries_real_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"instruction": "q", "output": "a"},\n {"instruction": "q",\n  "output": 1}\n]',
                    encoding="utf-8")
    records = read_records(str(path))
    with pytest.raises(DataError) as err:
        [normalize_record(r, DatasetSpec(path=str(path))) for r in records]
    assert (err.value.line, err.value.field) == (3, "output")
