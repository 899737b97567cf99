"""Malformed and hostile input, as a careless or hostile user gives it: every case ends in one readable message that
names the file, line or field at fault and a non-zero exit (never "internal error, please report it"), or is
handled as the case says. The CLI runs in this process (tunesmith.cli.main.main), so most cases fail at config or
argument validation in well under a second."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tunesmith.cli.main import main

from .conftest import STORIES, require_shared

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Env:
    """Files a case builds its command line from (all under one tmp folder)."""

    tmp: Path
    data: Path = field(init=False)

    def __post_init__(self):
        self.data = self.tmp / "train.jsonl"
        self.data.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n", encoding="utf-8")

    def config(self, training: dict | None = None, *, name: str = "cfg.yaml", text: str | None = None,
               encoding: str = "utf-8", data: dict | None = None, raw: bytes | None = None) -> str:
        cfg = {"model": {"name_or_path": str(STORIES)}, "data": {"train": [{"path": str(self.data)}], **(data or {})},
               "training": {"output_dir": str(self.tmp / "out"), **(training or {})}}
        path = self.tmp / name
        path.write_bytes(raw if raw is not None else
                         (text if text is not None else yaml.safe_dump(cfg, sort_keys=False)).encode(encoding))
        return str(path)

    def csv(self, cell: str, name: str = "data.csv") -> str:
        path = self.tmp / name
        path.write_text(f"instruction,output\nSay hi.,{cell}\n", encoding="utf-8")
        return str(path)

    def prompts(self) -> str:
        path = self.tmp / "prompts.txt"
        path.write_text("Once upon a time\n", encoding="utf-8")
        return str(path)


def _line(text: str, key: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key + ":"))


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    code: int
    names: Callable[[Env], list[str]] = lambda env: []  # what the message must name (file, line, field)
    needs_model: bool = False
    after: Callable[[Env], None] | None = None  # further checks on the files


def _generate(e: Env, *flags: str) -> list[str]:
    out = [] if "--out" in flags else ["--out", str(e.tmp / "o.jsonl")]
    return ["generate", str(STORIES), "--prompts", e.prompts(), *out, *flags]


def _no_file(name: str):
    def check(env: Env) -> None:
        assert not (env.tmp / name).exists(), f"{name} was left behind"
    return check


LARGE = "y" * 131_073  # one character over csv's default field size limit

CASES = [
    # --- config files that are not UTF-8 text (the file is named)
    Case("config-utf16", lambda e: ["train", e.config(encoding="utf-16")], 2, lambda e: ["cfg.yaml", "UTF-16"]),
    Case("config-gbk", lambda e: ["train", e.config(text="# 配置\nmodel: {name_or_path: x}\n", encoding="gbk")], 2,
         lambda e: ["cfg.yaml, line 1", "not UTF-8"]),
    Case("config-binary", lambda e: ["train", e.config(raw=bytes(range(256)) * 4)], 2,
         lambda e: ["cfg.yaml, line 2", "not UTF-8"]),
    Case("config-nul-byte", lambda e: ["train", e.config(text="model:\n  name_or_path: x\x00\n")], 2,
         lambda e: ["cfg.yaml, line 2", "NUL"]),
    Case("config-is-a-folder", lambda e: ["train", str(e.tmp)], 2, lambda e: ["not found"]),
    # --- training numbers: strict types, finite, sane bounds (file line or command line named)
    Case("seed-negative", lambda e: ["train", e.config(), "training.seed=-1"], 2,
         lambda e: ["cfg.yaml", "training.seed:", "(set on the command line)"]),
    Case("seed-huge", lambda e: ["train", e.config({"seed": 2 ** 70})], 2,
         lambda e: ["training.seed:", "(line 8)"]),
    Case("num-epochs-inf", lambda e: ["train", e.config(), "training.num_epochs=.inf"], 2,
         lambda e: ["training.num_epochs"]),
    Case("num-epochs-nan", lambda e: ["train", e.config({"num_epochs": float("nan")})], 2,
         lambda e: ["training.num_epochs:", "(line 8)"]),
    Case("num-epochs-bool", lambda e: ["train", e.config(), "training.num_epochs=true"], 2,
         lambda e: ["training.num_epochs"]),
    Case("max-steps-true", lambda e: ["train", e.config({"max_steps": True})], 2,
         lambda e: ["training.max_steps:", "(line 8)"]),
    Case("max-steps-float", lambda e: ["train", e.config(), "training.max_steps=2.5"], 2,
         lambda e: ["training.max_steps"]),
    Case("max-steps-huge", lambda e: ["train", e.config(), "training.max_steps=100000000000"], 2,
         lambda e: ["training.max_steps"]),
    Case("grad-accum-1e12", lambda e: ["train", e.config({"grad_accum": 10 ** 12})], 2,
         lambda e: ["training.grad_accum:", "(line 8)"]),
    Case("grad-accum-string-1e12", lambda e: ["train", e.config(), "training.grad_accum=1e12"], 2,
         lambda e: ["training.grad_accum:", "(set on the command line)"]),
    Case("learning-rate-inf", lambda e: ["train", e.config(), "training.learning_rate=.inf"], 2,
         lambda e: ["training.learning_rate"]),
    Case("learning-rate-1e38", lambda e: ["train", e.config({"learning_rate": 1e38})], 2,
         lambda e: ["training.learning_rate:", "(line 8)"]),
    Case("learning-rate-nan", lambda e: ["train", e.config(), "training.learning_rate=.nan"], 2,
         lambda e: ["training.learning_rate"]),
    Case("learning-rate-zero", lambda e: ["train", e.config(), "training.learning_rate=0"], 2,
         lambda e: ["training.learning_rate"]),
    Case("batch-size-zero", lambda e: ["train", e.config(), "training.batch_size=0"], 2,
         lambda e: ["training.batch_size"]),
    Case("batch-size-huge", lambda e: ["train", e.config(), "training.batch_size=10000000"], 2,
         lambda e: ["training.batch_size"]),
    Case("batch-size-bool", lambda e: ["train", e.config(), "training.batch_size=true"], 2,
         lambda e: ["training.batch_size"]),
    Case("max-grad-norm-inf", lambda e: ["train", e.config(), "training.max_grad_norm=.inf"], 2,
         lambda e: ["training.max_grad_norm"]),
    Case("weight-decay-nan", lambda e: ["train", e.config(), "training.weight_decay=.nan"], 2,
         lambda e: ["training.weight_decay"]),
    Case("warmup-ratio-nan", lambda e: ["train", e.config(), "training.warmup_ratio=.nan"], 2,
         lambda e: ["training.warmup_ratio"]),
    Case("save-steps-float", lambda e: ["train", e.config(), "training.save_steps=1.5"], 2,
         lambda e: ["training.save_steps"]),
    Case("logging-steps-zero", lambda e: ["train", e.config(), "training.logging_steps=0"], 2,
         lambda e: ["training.logging_steps"]),
    Case("data-seed-negative", lambda e: ["train", e.config(data={"seed": -5})], 2, lambda e: ["data.seed:", "(line"]),
    Case("max-length-huge", lambda e: ["train", e.config(), "data.max_length=100000000000"], 2,
         lambda e: ["data.max_length"]),
    Case("unknown-key", lambda e: ["train", e.config({"lerning_rate": 1e-4})], 2,
         lambda e: ["training.lerning_rate:", "(line 8)", "unknown key"]),
    # --- output places: checked before any model loads
    Case("output-dir-is-a-file", lambda e: ["train", e.config({"output_dir": e.data.as_posix()})], 2,
         lambda e: ["training.output_dir", "is a file"]),
    Case("output-dir-in-proc", lambda e: ["train", e.config({"output_dir": "/proc/tunesmith-run"})], 2,
         lambda e: ["training.output_dir", "/proc/tunesmith-run"]),
    Case("export-out-is-a-file", lambda e: ["export", str(e.tmp), "--out", e.data.as_posix(), "--merge"], 2,
         lambda e: ["--out", "is a file"]),
    Case("export-out-in-proc", lambda e: ["export", str(e.tmp), "--out", "/proc/tunesmith-export"], 2,
         lambda e: ["--out", "/proc/tunesmith-export"]),
    Case("export-not-a-run", lambda e: ["export", str(e.tmp), "--out", str(e.tmp / "x")], 2,
         lambda e: ["not a tunesmith run folder"]),
    # --- generate's numbers: refused before the model loads and before the output file is opened
    Case("generate-batch-size-zero", lambda e: _generate(e, "--batch-size", "0"), 2,
         lambda e: ["--batch-size"], after=_no_file("o.jsonl")),
    Case("generate-max-new-tokens-negative", lambda e: _generate(e, "--max-new-tokens", "-5"), 2,
         lambda e: ["--max-new-tokens"], after=_no_file("o.jsonl")),
    Case("generate-temperature-nan", lambda e: _generate(e, "--temperature", "nan"), 2,
         lambda e: ["--temperature"], after=_no_file("o.jsonl")),
    Case("generate-temperature-inf", lambda e: _generate(e, "--temperature", "1e999"), 2,
         lambda e: ["--temperature"]),
    Case("generate-top-p-zero", lambda e: _generate(e, "--top-p", "0"), 2, lambda e: ["--top-p"]),
    Case("generate-seed-2-70", lambda e: _generate(e, "--seed", str(2 ** 70)), 2, lambda e: ["--seed"]),
    Case("generate-out-is-a-folder", lambda e: _generate(e, "--out", str(e.tmp)), 2,
         lambda e: ["--out", "is a folder"]),
    Case("generate-out-in-proc", lambda e: _generate(e, "--out", "/proc/tunesmith/o.jsonl"), 2,
         lambda e: ["--out", "/proc/tunesmith"]),
    Case("generate-disk-full", lambda e: _generate(e, "--out", "/dev/full", "--max-new-tokens", "2"), 2,
         lambda e: ["disk is full", "/dev/full"],
         needs_model=True),
    # --- data files
    Case("data-check-csv-nul-byte", lambda e: ["data", "check", e.csv("h\x00i")], 2,
         lambda e: ["data.csv, line 2", "NUL"]),
    Case("data-check-csv-long-cell", lambda e: ["data", "check", e.csv(LARGE)], 0),
    Case("data-preview-csv-long-cell", lambda e: ["data", "preview", e.config(data={"train": [{
        "path": e.csv(LARGE)}], "max_length": 64})], 0, needs_model=True),
    Case("data-check-html-missing-folder", lambda e: ["data", "check", e.data.as_posix(), "--html",
                                                      str(e.tmp / "new" / "folder" / "r.html")], 0,
         after=lambda e: (e.tmp / "new" / "folder" / "r.html").is_file() or pytest.fail("no report written")),
    Case("data-check-json-in-proc", lambda e: ["data", "check", e.data.as_posix(), "--json",
                                               "/proc/tunesmith/r.json"], 2, lambda e: ["--json", "/proc"]),
    Case("output-dir-not-a-run", lambda e: ["train", e.config({"output_dir": e.tmp.as_posix()})], 2,
         lambda e: ["training.output_dir", "not a tunesmith run folder", "--overwrite"],
         after=lambda e: not (e.tmp / "train.log").exists() or pytest.fail("nothing may be written")),
    # --- speed: bounded, and the old keys say where they went
    Case("cpu-threads-10000", lambda e: ["train", e.config(), "speed.cpu_threads=10000"], 2,
         lambda e: ["speed.cpu_threads"]),
    Case("cpu-threads-above-cpus", lambda e: ["train", e.config(), f"speed.cpu_threads={os.cpu_count() + 1}"], 2,
         lambda e: ["speed.cpu_threads", "more than the"], needs_model=True),
    Case("old-speed-key", lambda e: ["train", e.config({"chunked_loss": False})], 2,
         lambda e: ["training.chunked_loss", "renamed", "speed.loss"]),
    Case("unknown-speed-switch", lambda e: ["train", e.config(), "speed.switches.turbo=true"], 2,
         lambda e: ["speed.switches", "turbo"]),
    Case("liger-on-cpu", lambda e: ["train", e.config(), "speed.loss=liger"], 2,
         lambda e: ["speed.loss", "CUDA"], needs_model=True),
    # --- plan
    Case("plan-seq-beyond-context", lambda e: ["plan", "--model", str(STORIES), "--seq", str(10 ** 12)], 0,
         lambda e: ["longer than", "context of 512"], needs_model=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path, capsys):
    if case.needs_model:
        require_shared(STORIES)
    env = Env(tmp_path)
    argv = case.argv(env)
    code = main(argv)
    err = capsys.readouterr().err
    flat = " ".join(err.split())  # rich may wrap long lines
    assert "internal error" not in err and "Traceback" not in err, err
    assert code == case.code, err
    for name in case.names(env):
        assert " ".join(name.split()) in flat, f"{name!r} not named in: {err}"
    if case.after:
        case.after(env)


@pytest.mark.skipif(ROOT_USER, reason="root writes through read-only permissions")
def test_read_only_output_dir_is_refused_before_loading(tmp_path, capsys):
    env = Env(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["train", env.config({"output_dir": str(locked / "run")})]) == 2
        assert main(["generate", str(STORIES), "--prompts", env.prompts(), "--out", str(locked / "o.jsonl")]) == 2
    finally:
        locked.chmod(0o700)
    err = " ".join(capsys.readouterr().err.split())
    assert "training.output_dir" in err and "--out" in err and "internal error" not in err


# --- code from a run folder (item 1)

EVIL = """from pathlib import Path
Path(__file__).resolve()
import os
Path(os.environ["TUNESMITH_EVIL_MARKER"]).write_text("imported")
from transformers import PreTrainedTokenizerFast


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture
def hostile_run(tmp_path, monkeypatch):
    """A full-model run folder whose tunesmith_run.json says trust_remote_code and whose tokenizer names a class in a
    .py file of the folder that writes a marker file when imported."""
    require_shared(STORIES)
    run = tmp_path / "run"
    shutil.copytree(STORIES, run)
    (run / "evil.py").write_text(EVIL, encoding="utf-8")
    tok = json.loads((run / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    (run / "tokenizer_config.json").write_text(json.dumps(tok), encoding="utf-8")
    (run / "tunesmith_run.json").write_text(json.dumps({
        "artifact": "full", "task": "classification", "label_names": ["a", "b"], "method": {"name": "full"},
        "template": "alpaca_en", "base_model": {"name_or_path": str(STORIES), "trust_remote_code": True}}))
    marker = tmp_path / "marker"
    monkeypatch.setenv("TUNESMITH_EVIL_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    return run, marker


def _suite(tmp: Path) -> str:
    text = tmp / "general.txt"
    text.write_text("Once upon a time there was a cat.\n", encoding="utf-8")
    suite = tmp / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": [{"name": "ppl", "type": "perplexity",
                                                                "data": str(text)}]}), encoding="utf-8")
    return str(suite)


REMOTE_CODE_COMMANDS = {
    "generate": lambda run, tmp: ["generate", str(run), "--prompts", Env(tmp).prompts(), "--out",
                                  str(tmp / "o.jsonl"), "--max-new-tokens", "2"],
    "export-merge": lambda run, tmp: ["export", str(run), "--merge", "--out", str(tmp / "exported")],
    "chat": lambda run, tmp: ["chat", str(run)],
    "serve": lambda run, tmp: ["serve", str(run), "--port", "0", "--max-requests", "1"],
    "eval": lambda run, tmp: ["eval", str(run), "--suite", _suite(tmp), "--out", str(tmp / "eval")],
    "classify": lambda run, tmp: ["classify", str(run), "--text", "hello"],
}


@pytest.mark.parametrize("command", list(REMOTE_CODE_COMMANDS))
def test_a_run_folder_cannot_allow_its_own_code(command, hostile_run, tmp_path, capsys):
    run, marker = hostile_run
    code = main(REMOTE_CODE_COMMANDS[command](run, tmp_path))
    err = " ".join(capsys.readouterr().err.split())
    assert not marker.exists(), "code from the run folder was imported without --trust-remote-code"
    assert code == 2 and "--trust-remote-code" in err and "internal error" not in err, err


def test_the_command_line_may_allow_a_runs_code(hostile_run, tmp_path):
    from tunesmith.models.loading import load_run_tokenizer

    run, marker = hostile_run
    assert type(load_run_tokenizer(run, trust_remote_code=True)).__name__ == "EvilTokenizer"
    assert marker.read_text() == "imported"


# --- item 6: the rest that is not a command-line case


def test_a_cut_off_metrics_line_does_not_block_resume(tmp_path):
    from tunesmith.training.callbacks import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo', encoding="utf-8")
    assert [row["step"] for row in read_metrics(path)] == [1, 2]


def test_csv_cells_longer_than_csvs_default_limit_are_read(tmp_path):
    from tunesmith.data.readers import read_records

    records = read_records(Env(tmp_path).csv(LARGE))
    assert records[0].data["output"] == LARGE


def test_an_unwritable_cache_is_skipped_with_a_warning(tmp_path, stories_dir):
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.dataset import build_datasets
    from tunesmith.data.templates.registry import get_template

    env = Env(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    cfg = DataConfig(train=[{"path": str(env.data)}], template="alpaca_en", max_length=64)
    with pytest.warns(UserWarning, match="cannot be written"):  # /proc: not writable, even for root
        data = build_datasets(cfg, tokenizer, get_template("alpaca_en", tokenizer), cache_root="/proc/tunesmith")
    assert len(data.train) == 1


# --- item 8: the data cache keys on content


def test_the_data_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path, stories_dir):
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.cache import fingerprint
    from tunesmith.data.templates.registry import get_template

    env = Env(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    template = get_template("alpaca_en", tokenizer)
    cfg = DataConfig(train=[{"path": str(env.data)}], template="alpaca_en")
    before = fingerprint(cfg, tokenizer, template)
    stat = env.data.stat()
    env.data.write_text(env.data.read_text(encoding="utf-8").replace("hi", "yo"), encoding="utf-8")
    os.utime(env.data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert env.data.stat().st_size == stat.st_size and env.data.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint(cfg, tokenizer, template) != before


# --- item 9: merging and staging


def _checkpoint(folder: Path, hidden: int) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                     "hidden_size": hidden, "vocab_size": 32}))
    save_file({"model.embed_tokens.weight": torch.zeros(32, hidden)}, folder / "model.safetensors")
    return folder


def test_a_hidden_size_mismatch_is_named_as_such(tmp_path):
    from tunesmith.errors import ModelError
    from tunesmith.merging.checkpoint import Checkpoint
    from tunesmith.merging.validate import check_compatible

    a = Checkpoint(_checkpoint(tmp_path / "a", 16), role="base")
    b = Checkpoint(_checkpoint(tmp_path / "b", 24), role="model 1")
    with pytest.raises(ModelError) as caught:
        check_compatible([a, b])
    assert "hidden_size is 16" in str(caught.value) and "vocabular" not in str(caught.value)


def test_stale_staging_folders_of_a_killed_run_are_removed(tmp_path):
    from tunesmith.io import clean_stale_staging, make_staging_dir, publish_dir_contents

    run = tmp_path / "run"
    run.mkdir()
    dead = run / ".staging-tunesmith-999999999-abc12345"  # no process has this id
    dead.mkdir()
    (dead / "adapter_model.safetensors").write_bytes(b"half")
    older = run / ".staging-k2j4_x9q"  # tempfile's name, empty: what a kill during the final save left
    older.mkdir()
    users = run / ".staging-notes"  # not a name tunesmith makes: never touched
    users.mkdir()
    kept = run / ".staging-a1b2c3d4"  # tunesmith's older name, but holding something: left alone
    kept.mkdir()
    (kept / "x").write_text("x")
    live = make_staging_dir(run)
    assert live.name.startswith(f".staging-tunesmith-{os.getpid()}-")
    assert not dead.exists() and not older.exists() and users.exists() and kept.exists()
    (live / "tunesmith_run.json").write_text("{}")
    older.mkdir()
    publish_dir_contents(live, run)
    assert not live.exists() and not older.exists() and (run / "tunesmith_run.json").is_file()
    assert clean_stale_staging(tmp_path / "missing") == []
