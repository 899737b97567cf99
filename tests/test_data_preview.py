"""Preview: trained and masked text told apart, with counts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tunesmith.config.schema import DataConfig
from tunesmith.cli.render_data import preview_renderable
from tunesmith.data.preview import plain_preview, preview_samples
from tunesmith.data.templates import get_template
from tunesmith.errors import DataError

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


@pytest.fixture()
def tok():
    if not STORIES.exists():
        pytest.skip(f"stories260K tokenizer not found at {STORIES}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


@pytest.fixture()
def cfg(tmp_path):
    rows = [{"instruction": "写一句问候", "output": "你好，世界！"},
            {"instruction": "Say hi", "output": "Hi", "history": [["Name?", "Tuney"]]}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return DataConfig(train=[{"path": str(path)}], template="alpaca_zh", max_length=256)


def test_plain_preview_marks_trained_text(tok, cfg):
    text = plain_preview(preview_samples(cfg, tok, get_template("alpaca_zh", tok), n=2))
    assert "[[你好，世界！</s>]]" in text
    assert "### 指令:\n写一句问候" in text and "[[### 指令" not in text and "写一句问候]]" not in text
    assert "[[Tuney</s>]]" in text and "[[Hi</s>]]" in text  # every assistant turn of the multi-turn sample
    assert "line 2" in text and "line 6" in text
    assert text.count("trained") >= 2 and "tokens" in text


def test_rich_preview_styles_runs(tok, cfg):
    console = Console(file=io.StringIO(), record=True, width=100, color_system="truecolor")
    console.print(preview_renderable(preview_samples(cfg, tok, get_template("alpaca_zh", tok), n=1)))
    styled, plain = console.export_text(styles=True, clear=False), console.export_text()
    assert "你好，世界！" in plain and "masked" in plain
    assert "\x1b[1;32m" in styled  # trained text printed bold green


def test_preview_reports_dropped_samples(tok, cfg):
    small = cfg.model_copy(update={"max_length": 9})
    text = plain_preview(preview_samples(small, tok, get_template("alpaca_zh", tok), n=1))
    assert "dropped" in text


def test_preview_validates_every_record(tok, tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c"}\n]', encoding="utf-8")
    cfg = DataConfig(train=[{"path": str(path)}], template="alpaca_en")
    with pytest.raises(DataError) as err:
        preview_samples(cfg, tok, get_template("alpaca_en", tok), n=1)
    assert (err.value.line, err.value.field) == (3, "output")
