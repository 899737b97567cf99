"""Chat, batch generation and preview on a trained run: the training template is reused automatically."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from tunesmith.cli.chat import chat_loop
from tunesmith.cli.main import main
from tunesmith.inference.generation import Generator, SamplingOptions
from tunesmith.models.loading import load_for_inference
from tunesmith.recipes import train

from .conftest import EXAMPLES
from .test_training import make_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, stories_dir):
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = make_config(stories_dir, run, max_steps=40, learning_rate=1e-2)
    train(cfg)
    return run


def test_run_reuses_its_training_template(trained_run):
    loaded = load_for_inference(str(trained_run))
    assert loaded.template_name == "alpaca_en"
    generator = Generator(loaded)
    prompt = generator.template.render_prompt([{"role": "user", "content": "Tell me what Tom saw."}])
    assert prompt.rstrip().endswith("### Response:")


def test_fine_tuned_run_answers_in_the_trained_style(trained_run, stories_dir):
    loaded = load_for_inference(str(trained_run))
    reply = Generator(loaded).generate([[{"role": "user", "content": "Tell me what Mia saw."}]],
                                       SamplingOptions(max_new_tokens=16))[0]
    assert reply.startswith("Mia saw"), reply


def test_chat_loop_streams_and_handles_commands(trained_run):
    loaded = load_for_inference(str(trained_run))
    generator = Generator(loaded)
    inputs = iter(["Tell me what Ben saw.", "/reset", "/system Be brief.", "/bogus", "Tell me what Sue saw.", "/exit",
                   "never read"])
    console = Console(record=True, width=200)
    seen_histories = []
    original = generator.generate

    def spy(conversations, options, streamer=None):
        seen_histories.append(conversations[0])
        return original(conversations, options, streamer=streamer)

    generator.generate = spy
    chat_loop(generator, SamplingOptions(max_new_tokens=12), console=console, read=lambda prompt: next(inputs))
    text = console.export_text()
    assert "Ben saw" in text and "Sue saw" in text
    assert "conversation cleared" in text and "unknown command" in text
    assert len(seen_histories) == 2
    assert seen_histories[1][0] == {"role": "system", "content": "Be brief."}
    assert len(seen_histories[1]) == 2, "history should have been cleared by /reset and /system"


def test_generate_command_writes_jsonl(trained_run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Tell me what Lily saw."},
        {"instruction": "Tell me what Max saw.", "input": ""},
        {"messages": [{"role": "user", "content": "Tell me what Anna saw."}]},
    ]) + "\n")
    out = tmp_path / "answers.jsonl"
    code = main(["generate", str(trained_run), "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "12", "--batch-size", "2"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["response"].split()[0] for r in rows] == ["Lily", "Max", "Anna"]


def test_sampling_is_seeded(trained_run):
    generator = Generator(load_for_inference(str(trained_run)))
    conv = [[{"role": "user", "content": "Tell me what Tom saw."}]]
    options = SamplingOptions(max_new_tokens=12, temperature=1.0, seed=3)
    assert generator.generate(conv, options) == generator.generate(conv, options)


def test_data_preview_marks_trained_tokens(stories_dir, tmp_path, capsys):
    import yaml

    cfg = {"model": {"name_or_path": str(stories_dir)},
           "data": {"train": [{"path": str(EXAMPLES / "data" / "stories_chat.jsonl")}], "template": "alpaca_zh"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert main(["data", "preview", str(path)]) == 0
    out = capsys.readouterr().out
    assert "### 指令:" in out and "### 回复:" in out
    assert "supervised" in out.lower() or "trained" in out.lower()


def test_export_without_merge_copies_the_adapter(trained_run, tmp_path):
    from safetensors.torch import load_file

    from tunesmith.inference.export import export_run

    out = export_run(str(trained_run), str(tmp_path / "copy"), merge=False)
    copied, original = load_file(out / "adapter_model.safetensors"), load_file(trained_run / "adapter_model.safetensors")
    assert copied.keys() == original.keys()
    assert all(torch.equal(copied[k], original[k]) for k in original)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["houlsby", "hybrid"])
def test_tunesmith_adapters_export_as_they_are_and_reload(stories_dir, tmp_path, name):
    """Bottleneck and hybrid runs cannot be folded into the base; without --merge they are copied (a hybrid with its
    part folders) and the copy loads like the run."""
    from tunesmith.errors import TunesmithError
    from tunesmith.inference.export import export_run
    from tunesmith.models.loading import load_for_inference

    from .test_methods import METHOD_OPTIONS
    from .test_training import batch, make_config

    run = tmp_path / "run"
    train(make_config(stories_dir, run, {"name": name, **METHOD_OPTIONS[name]}, max_steps=2))
    with pytest.raises(TunesmithError, match="cannot be merged") as error:
        export_run(str(run), str(tmp_path / "merged"), merge=True)
    assert "without --merge" in error.value.hint
    out = export_run(str(run), str(tmp_path / "copy"), merge=False)
    assert not (out / "checkpoints").exists()
    with torch.no_grad():
        ours = load_for_inference(str(run)).model(**batch(stories_dir)).logits
        copied = load_for_inference(str(out)).model(**batch(stories_dir)).logits
    assert torch.equal(ours, copied)


def test_a_run_trained_from_relative_paths_loads_from_any_folder(stories_dir, tmp_path, monkeypatch):
    """The base model and data paths are recorded absolute: a relative one would be read against whatever folder a
    later command (chat, generate, PeftModel users) runs in."""
    import os

    from peft import PeftConfig

    monkeypatch.chdir(stories_dir.parent)
    cfg = make_config(stories_dir.name, tmp_path / "run", max_steps=1,
                      data={"train": [{"path": os.path.relpath(EXAMPLES / "data" / "stories_chat.jsonl")}]})
    # samefile: the working folder is the physical one, so a symlinked checkout (../shared) reads differently
    assert os.path.isabs(cfg.model.name_or_path) and os.path.samefile(cfg.model.name_or_path, stories_dir)
    assert os.path.isabs(cfg.data.train[0].path)
    train(cfg)
    monkeypatch.chdir(tmp_path)
    base = PeftConfig.from_pretrained(tmp_path / "run").base_model_name_or_path
    assert os.path.isabs(base) and os.path.samefile(base, stories_dir)
    assert load_for_inference(str(tmp_path / "run")).model is not None
