"""The demo's persona dataset: valid Alpaca records, consistent names, held-out probes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunesmith.demo.persona import (PERSONA_AUTHOR, PERSONA_NAME, general_records, identity_records,
                                    persona_records, probe_questions, write_persona_dataset)

SHARED_IDENTITY = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct" / "identity.json"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_records_are_valid_alpaca():
    records = persona_records()
    assert records == identity_records() + general_records()
    assert 40 <= len(identity_records()) <= 80
    assert 20 <= len(general_records()) <= 40
    for r in records:
        assert set(r) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip()
        assert r["output"] == r["output"].strip()
        assert len(r["output"]) <= 200, f"replies stay short: {r['output']!r}"
    keys = [(_norm(r["instruction"]), _norm(r["input"])) for r in records]
    assert len(keys) == len(set(keys)), "duplicate instructions"


def test_names_are_consistent():
    assert PERSONA_NAME == "Tuney" and PERSONA_AUTHOR == "the tunesmith project"
    for r in identity_records():
        out = r["output"]
        assert PERSONA_NAME in out, out
        # the assistant never claims another identity
        assert not re.search(r"\bI(?:'m| am) (?:ChatGPT|SmolLM|Claude|Gemini|Siri|Alexa)", out), out
        # every mention of a maker is the tunesmith project
        if re.search(r"\b(made|created|built|developed|fine-tuned|trained|designed|maintained)\b", out):
            assert "tunesmith project" in out.lower(), out
        assert "hugging face" not in out.lower()
    for r in general_records():
        assert PERSONA_NAME not in r["output"] and "tunesmith" not in r["output"].lower()
    # the questions the brief asks for are covered
    instructions = {_norm(r["instruction"]) for r in identity_records()}
    for q in ("who are you", "what is your name", "who made you", "introduce yourself", "are you chatgpt"):
        assert q in instructions


def test_probes_are_held_out():
    probes = probe_questions()
    kinds = {p["kind"] for p in probes}
    assert kinds == {"identity", "general"}
    assert sum(p["kind"] == "identity" for p in probes) >= 5 and sum(p["kind"] == "general" for p in probes) >= 5
    trained = {_norm(r["instruction"]) for r in persona_records()} | \
              {_norm(r["input"]) for r in persona_records() if r["input"]}
    questions = [p["question"] for p in probes]
    assert len(set(questions)) == len(questions)
    for p in probes:
        assert set(p) == {"question", "kind", "expect"} and p["question"].strip()
        assert _norm(p["question"]) not in trained, f"probe seen in training: {p['question']}"
        assert isinstance(p["expect"], list)
    assert "Tell me about yourself in one sentence." in questions
    assert "What is the capital of France?" in questions
    # callers may mutate what they get without changing the module's data
    probes[0]["expect"].append("x")
    assert "x" not in probe_questions()[0]["expect"]


def test_write_persona_dataset(tmp_path):
    path = write_persona_dataset(tmp_path / "sub" / "persona.json")
    assert path == tmp_path / "sub" / "persona.json"
    assert json.loads(path.read_text(encoding="utf-8")) == persona_records()


def test_written_for_this_project_not_copied():
    if not SHARED_IDENTITY.exists():
        pytest.skip(f"shared identity data not found at {SHARED_IDENTITY}")
    theirs = json.loads(SHARED_IDENTITY.read_text(encoding="utf-8"))
    their_outputs = {_norm(r.get("output", "").replace("{{name}}", PERSONA_NAME).replace("{{author}}", PERSONA_AUTHOR))
                     for r in theirs}
    ours = {_norm(r["output"]) for r in persona_records() if len(r["output"].split()) >= 4}
    assert not ours & their_outputs
