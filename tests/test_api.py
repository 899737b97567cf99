"""The Python API (`tunesmith/api.py`) does what the CLI does: the same config, run folder, replies, plan; every
example of docs/python.md runs."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

import tunesmith
import tunesmith.api
from tunesmith.cli.main import main
from tunesmith.errors import ConfigError

from .conftest import EXAMPLES, ROOT

STORIES_DATA = str(EXAMPLES / "data" / "stories_chat.jsonl")


def stories_config(model_dir, out_dir) -> dict:
    """A tiny, fast stories260K run as a YAML-shaped dict."""
    return {"model": {"name_or_path": str(model_dir)},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": [{"path": STORIES_DATA}], "template": "alpaca_en", "max_length": 64},
            "training": {"output_dir": str(out_dir), "max_steps": 3, "batch_size": 4, "learning_rate": 5e-3,
                         "logging_steps": 1, "warmup_ratio": 0.0, "tensorboard": False, "lr_scheduler": "constant"},
            "speed": {"cpu_threads": 1}}


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(stories_dir, tmp_path_factory):
    """One run trained through the API (3 steps), shared by the tests that load it."""
    folder = tmp_path_factory.mktemp("api")
    result = tunesmith.train(stories_config(stories_dir, folder / "run"), {"training.max_steps": 3})
    return result


def test_config_from_dict_and_file_equals_what_the_cli_resolves(stories_dir, tmp_path, monkeypatch):
    raw = stories_config(stories_dir, tmp_path / "run")
    path = write_yaml(tmp_path / "run.yaml", raw)
    seen = {}
    monkeypatch.setattr(tunesmith.api, "train", lambda cfg, **kwargs: seen.setdefault("cfg", cfg))
    assert main(["train", str(path), "training.learning_rate=1e-3", "method.r=8", "--overwrite"]) == 0
    cli = seen["cfg"]
    assert cli.training.learning_rate == 1e-3 and cli.method.r == 8 and cli.training.overwrite_output_dir
    overrides = {"training.learning_rate": 1e-3, "method.r": 8, "training.overwrite_output_dir": True}
    assert tunesmith.load_config(path, overrides) == cli
    assert tunesmith.load_config(raw, ["training.learning_rate=1e-3", "method.r=8",
                                       "training.overwrite_output_dir=true"]) == cli
    assert raw["training"]["learning_rate"] == 5e-3  # the caller's dict is not changed
    assert tunesmith.load_config(cli) is cli


@pytest.mark.parametrize("source", ["dict", "file"])
def test_a_bad_config_raises_config_error_naming_the_field(stories_dir, tmp_path, source):
    raw = stories_config(stories_dir, tmp_path / "run")
    config = raw if source == "dict" else write_yaml(tmp_path / "bad.yaml", raw)
    with pytest.raises(ConfigError, match=r"training\.learning_rate.*overrides"):
        tunesmith.load_config(config, {"training.learning_rate": "fast"})
    raw["training"]["learnin_rate"] = 1e-3
    config = raw if source == "dict" else write_yaml(tmp_path / "bad.yaml", raw)
    with pytest.raises(ConfigError, match=r"training\.learnin_rate: unknown key"):
        tunesmith.train(config)
    with pytest.raises(ConfigError, match="no field 'batchsize'"):
        tunesmith.plan(config=None, model=str(stories_dir), batchsize=4)


def test_train_writes_a_run_whose_adapter_loads_in_plain_peft(trained, stories_dir):
    run = trained.run_dir
    losses = [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss" in row]
    assert len(losses) == 3 and trained.trainable_params > 0
    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    model = PeftModel.from_pretrained(base, run)
    changed = [name for name, p in model.named_parameters() if "lora_B" in name and p.abs().sum() > 0]
    assert changed  # lora_B starts at zero: trained weights were saved


def test_loaded_run_generates_what_tunesmith_generate_writes(trained, tmp_path):
    prompts = ["Tell me what Tom saw.", "Tell me what Mia saw."]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts), encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert main(["generate", str(trained.run_dir), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out),
                 "--max-new-tokens", "12"]) == 0
    cli = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    model = tunesmith.load(trained.run_dir)
    assert model.generate(prompts, max_new_tokens=12) == cli
    assert model.generate(prompts[1], max_new_tokens=12) == cli[1]
    assert any(cli)


def test_plan_gives_the_peak_tunesmith_plan_prints(stories_dir, tmp_path, monkeypatch):
    import tunesmith.cli.render_plan as render_plan

    path = write_yaml(tmp_path / "run.yaml", stories_config(stories_dir, tmp_path / "run"))
    shown = []
    table = render_plan.memory_table
    monkeypatch.setattr(render_plan, "memory_table", lambda plan: shown.append(plan) or table(plan))
    assert main(["plan", "--config", str(path)]) == 0
    plan = tunesmith.plan(path)
    assert plan.peak == shown[0].peak > 0 and plan.peak_phase == shown[0].peak_phase


def test_check_data_finds_a_planted_duplicate(tmp_path):
    rows = [json.loads(line) for line in open(STORIES_DATA, encoding="utf-8")][:12]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [*rows, rows[5]]), encoding="utf-8")
    report = tunesmith.check_data(path)
    assert report.summary["records"] == 13 and report.summary["exact_duplicates"] == 1
    clean = tunesmith.check_data(STORIES_DATA)
    assert clean.summary["exact_duplicates"] == 0
    with pytest.raises(ConfigError, match="no option 'treshold'"):
        tunesmith.check_data(path, treshold=0.5)


def test_merge_writes_a_model_transformers_loads(trained, stories_dir, tmp_path):
    out = tunesmith.merge({"method": "lora_to_base", "adapter": str(trained.run_dir)}, out=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories_dir), trained.run_dir)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)


# docs/python.md's examples run as written, on stories260K: each placeholder below must still be in the page.
def doc_blocks(language: str, page: str = "docs/python.md") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / page).read_text(encoding="utf-8"), re.S)


def test_every_example_of_the_python_docs_runs(stories_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "stories.yaml", stories_config(stories_dir, tmp_path / "unused"))
    rows = [json.loads(line) for line in open(STORIES_DATA, encoding="utf-8")]
    (tmp_path / "train.json").write_text(json.dumps([*rows[:10], rows[3]]), encoding="utf-8")
    (tmp_path / "eval.json").write_text(json.dumps(rows[3:5]), encoding="utf-8")
    write_yaml(tmp_path / "suite.yaml", {"name": "tiny", "tasks": [
        {"name": "stories", "type": "perplexity", "kind": "instruct", "data": STORIES_DATA, "max_samples": 4,
         "max_length": 64}]})
    # the page's diagnose example reads merge.yaml: two copies of the run it trains, over the run's base
    write_yaml(tmp_path / "merge.yaml", {"method": "ties", "base_model": str(stories_dir),
                                          "models": [{"model": "runs/nb"}, {"model": "runs/nb"}]})
    places = {'"examples/lora.yaml"': '"stories.yaml"', '"examples/eval_suite.yaml"': '"suite.yaml"',
              '"training.max_steps": 50': '"training.max_steps": 2', "training.max_steps=50": "training.max_steps=2",
              '"smollm2-135m-instruct"': repr(str(stories_dir))}
    code = "\n".join(doc_blocks("python"))
    for placeholder, value in places.items():
        assert placeholder in code, placeholder
        code = code.replace(placeholder, value)
    namespace: dict = {}
    exec(compile(code, "docs/python.md", "exec"), namespace)  # noqa: S102 - the page's own examples
    assert (tmp_path / "runs" / "nb" / "adapter_config.json").exists()
    assert namespace["report"].summary["exact_duplicates"] == 1 and namespace["report"].summary["contaminated"] >= 1
    assert "stories" in namespace["scores"]["tasks"] and namespace["plan"].peak > 0
    assert namespace["diagnosis"].recommendation.method == "linear"  # identical task vectors: nothing conflicts
    AutoModelForCausalLM.from_pretrained(namespace["merged"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert namespace["exported"].gguf.resolve() == tmp_path / "gguf" / "nb-q8_0.gguf" and namespace["exported"].gguf.is_file()
    assert "FROM ./nb-q8_0.gguf" in namespace["exported"].modelfile.read_text()
    tracking = yaml.safe_load(doc_blocks("yaml")[0])
    raw = stories_config(stories_dir, tmp_path / "run")
    del raw["training"]["tensorboard"]  # report_to says it now
    cfg = tunesmith.load_config(raw, {f"training.{key}": value for key, value in tracking["training"].items()})
    assert cfg.training.trackers() == ["tensorboard", "mlflow"] and cfg.training.tracking.run_name == "lora-r8"
