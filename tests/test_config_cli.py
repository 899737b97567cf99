"""Config validation and the CLI's handling of bad input: a clear message, a field name, a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.cli.main import main
from tunesmith.config.loading import apply_override, load_config
from tunesmith.errors import ConfigError

from .conftest import EXAMPLES, ROOT

BASE = {
    "model": {"name_or_path": "some/model"},
    "method": {"name": "lora"},
    "data": {"train": [{"path": "train.jsonl"}]},
}


def write(tmp_path: Path, data, name="cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli.main", *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _run_configs() -> list[str]:
    """Training configs among the examples (merge configs and eval suites are checked by their own tests)."""
    import yaml

    return sorted(p.name for p in EXAMPLES.glob("*.yaml")
                  if "training" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {}))


def test_examples_include_every_training_config():
    assert {"lora.yaml", "qlora_zh.yaml", "full.yaml", "dora.yaml", "rslora.yaml"} <= set(_run_configs())


@pytest.mark.parametrize("example", _run_configs())
def test_every_example_config_validates(example):
    cfg = load_config(EXAMPLES / example)
    # named after its method, or after its task (dpo.yaml, grpo.yaml, ...), or after a config section (retain.yaml)
    stem = example.split(".")[0]
    assert cfg.method.name in stem or cfg.task == stem or example.startswith(("mix", "eval_", "retain"))


def test_overrides_reach_nested_fields_with_yaml_types(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["training.learning_rate=1e-4", "method.r=4",
                                              "data.packing=true", "training.max_steps=7"])
    assert cfg.training.learning_rate == 1e-4 and cfg.method.r == 4 and cfg.data.packing is True
    assert cfg.training.max_steps == 7


def test_override_turns_a_string_method_into_a_mapping():
    raw = {"method": "lora"}
    apply_override(raw, "method.r=2")
    assert raw["method"] == {"name": "lora", "r": 2}


def test_override_indexes_into_lists():
    raw = {"data": {"train": [{"path": "a.json"}, {"path": "b.json"}]}}
    apply_override(raw, "data.train.1.max_samples=20")
    apply_override(raw, "data.train.2.path=c.json")  # the length appends
    apply_override(raw, "model.target_modules.0=q_proj")  # a missing key is still made as a mapping
    assert raw["data"]["train"] == [{"path": "a.json"}, {"path": "b.json", "max_samples": 20}, {"path": "c.json"}]
    assert raw["model"] == {"target_modules": {"0": "q_proj"}}
    for bad in ("data.train.5.path=x", "data.train.first.path=x"):
        with pytest.raises(ConfigError, match=r"data.train is a list of 3; '(5|first)' is not an index of it"):
            apply_override(raw, bad)


@pytest.mark.parametrize("change, expected", [
    ({"training": {"learing_rate": 1e-4}}, "training.learing_rate: unknown key"),
    ({"training": {"batch_size": "four"}}, "training.batch_size"),
    ({"method": {"name": "lora", "rank": 8}}, "method.rank: unknown key"),
    ({"method": {"name": "lora", "r": 0}}, "method.r"),
    ({"method": {"name": "magic"}}, "unknown method 'magic'"),
    ({"method": {"name": "full"}, "model": {"name_or_path": "x/y", "quantization": "4bit"}},
     "full fine-tuning cannot update quantised weights"),
    ({"method": {"name": "lora"}, "model": {"name_or_path": "x/y", "quantization": "4bit"}}, "use method: qlora"),
    ({"data": {"train": [{"path": "a.json"}], "packing": True},
      "model": {"name_or_path": "x/y", "attn_implementation": "paged|sdpa"}}, "packing needs an attention path"),
    ({"training": {"early_stopping_patience": 2}}, "early stopping needs validation data"),
    ({"data": {"train": []}}, "data.train"),
])
def test_bad_configs_name_the_field(tmp_path, change, expected):
    raw = {**BASE, **change}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw), [])
    assert expected in str(err.value)
    assert "cfg.yaml" in str(err.value)


def test_validating_every_example_config_loads_no_training_library():
    """Config validation imports every method (for its options); it must stay instant, so that a mistake is reported
    before torch, transformers, PEFT or datasets load (4-5 s). The same for a continual pipeline's YAML."""
    script = ("import sys\nfrom tunesmith.config.loading import load_config\nfor path in sys.argv[2:]:\n"
              "    load_config(path)\n"
              "from tunesmith.continual import load_pipeline\nload_pipeline(sys.argv[1])\n"
              "print([m for m in ('torch', 'transformers', 'peft', 'datasets', 'bitsandbytes') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", script, str(EXAMPLES / "continual.yaml"),
                           *(str(EXAMPLES / name) for name in _run_configs())],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_cli_reports_config_errors_without_traceback(tmp_path):
    path = write(tmp_path, {**BASE, "training": {"learing_rate": 1}})
    proc = run_cli("train", path)
    assert proc.returncode == 2
    assert "training.learing_rate" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_cli_reports_yaml_syntax_errors_with_line(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: x\ndata: [unclosed\n")
    proc = run_cli("train", path)
    assert proc.returncode == 2 and "line" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_reports_missing_model_path(tmp_path):
    path = write(tmp_path, {**BASE, "model": {"name_or_path": "./no/such/model"},
                            "data": {"train": [{"path": str(EXAMPLES / "data" / "stories_chat.jsonl")}]}})
    proc = run_cli("train", path)
    assert proc.returncode == 2 and "model not found" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_reports_malformed_data_with_file_and_line(tmp_path, stories_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    path = write(tmp_path, {**BASE, "model": {"name_or_path": str(stories_dir)},
                            "data": {"train": [{"path": str(data)}], "template": "alpaca_en"}})
    proc = run_cli("train", path)
    assert proc.returncode == 2, proc.stderr
    assert "bad.jsonl" in proc.stderr and "line 2" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_reports_missing_field_with_line(tmp_path, stories_dir):
    data = tmp_path / "missing.json"
    data.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    path = write(tmp_path, {**BASE, "model": {"name_or_path": str(stories_dir)},
                            "data": {"train": [{"path": str(data)}], "template": "alpaca_en"}})
    proc = run_cli("data", "preview", path)
    assert proc.returncode == 2
    assert "missing.json" in proc.stderr and "line 3" in proc.stderr and "output" in proc.stderr


def test_help_is_available_for_every_command():
    for argv in (["--help"], ["train", "--help"], ["chat", "--help"], ["export", "--help"],
                 ["data", "preview", "--help"], ["generate", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0


def test_methods_command_lists_the_core_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "lora", "qlora", "dora", "rslora"):
        assert name in out


def test_the_cli_drops_bitsandbytes_hint_about_hub_kernels():
    """bitsandbytes logs a hint about a hub-fetched CPU kernel at import on AVX512-BF16 CPUs; PEFT imports it, so
    every LoRA command printed it. The CLI drops that one message."""
    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).stderr  # the kernels line needs offline

    hint = "Failed to load CPU gemm_4bit_forward from kernels-community"
    if hint not in stderr_of("import bitsandbytes"):
        pytest.skip("this CPU or bitsandbytes version does not log the hint")
    quiet = stderr_of("from tunesmith.cli.main import quiet_library_chatter\n"
                      "quiet_library_chatter()\n"
                      "import logging, bitsandbytes\n"
                      "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another message')")
    assert hint not in quiet and "another message" in quiet
    assert "Skipping publisher trust check" not in quiet  # the kernels package's line before it (offline hub)
