"""What a run must never do to a user's files and results: delete them on a mistake, overwrite a folder that is not a
run, train a finished run again, or save a collapsed model as if it were fine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.cli.main import main
from tunesmith.diagnostics.callback import TrainingDiverged, weights_sound
from tunesmith.diagnostics.curves import detect_collapse, diagnose
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.recipes import train

from .test_training import Crash, losses, make_config


def test_a_rerun_with_a_bad_data_path_keeps_the_earlier_checkpoints(stories_dir, tmp_path):
    run = tmp_path / "run"
    kept = run / "checkpoints" / "checkpoint-4"
    kept.mkdir(parents=True)
    (kept / "adapter_model.safetensors").write_bytes(b"earlier run")
    cfg = make_config(stories_dir, run, data={"train": [{"path": str(tmp_path / "typo.json")}]})
    with pytest.raises(TunesmithError):
        train(cfg)
    assert (kept / "adapter_model.safetensors").read_bytes() == b"earlier run"


def test_a_folder_that_is_not_a_run_is_refused_before_anything_is_written(stories_dir, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.md").write_text("mine")
    (folder / "config.yaml").write_text("mine too")
    with pytest.raises(ConfigError, match="not a tunesmith run folder") as error:
        train(make_config(stories_dir, folder, max_steps=1))
    assert error.value.where == "training.output_dir" and "--overwrite" in error.value.hint
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.md", "config.yaml"]


def test_overwrite_writes_tunesmiths_files_and_deletes_nothing_else(stories_dir, tmp_path):
    folder = tmp_path / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "checkpoints" / "my-notes.txt").write_text("mine too")
    train(make_config(stories_dir, folder, max_steps=2, save_steps=1, overwrite_output_dir=True))
    train(make_config(stories_dir, folder, max_steps=2, save_steps=1))  # a run folder now: a rerun starts over
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "checkpoints" / "my-notes.txt").read_text() == "mine too"
    assert (folder / "adapter_model.safetensors").is_file() and len(losses(folder)) == 2


def test_the_cli_flag_allows_it(stories_dir, tmp_path, monkeypatch):
    import yaml

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_config(stories_dir, folder, max_steps=1).model_dump(mode="json")))
    assert main(["train", str(config)]) == 2
    monkeypatch.setattr("tunesmith.recipes.train", lambda cfg, **kwargs: seen.append(cfg))
    seen = []
    assert main(["train", str(config), "--overwrite"]) == 0 and seen[0].training.overwrite_output_dir


class DieBeforeTheFinalSave(Crash):
    """The process dies after training ended (its last checkpoint written), before the run folder was saved."""

    def on_step_end(self, args, state, control, **kwargs):
        pass

    def on_train_end(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("simulated kill during the final save")


def test_resuming_a_run_killed_in_its_final_save_trains_nothing_and_saves_the_same_weights(stories_dir, tmp_path):
    opts = dict(max_steps=4, save_steps=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(make_config(stories_dir, straight, **opts))
    with pytest.raises(KeyboardInterrupt):
        train(make_config(stories_dir, killed, **opts), extra_callbacks=[DieBeforeTheFinalSave(0)])
    assert not (killed / "adapter_model.safetensors").exists()
    train(make_config(stories_dir, killed, **opts), resume=True)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4  # no step 5
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((killed / "tunesmith_run.json").read_text())
    assert meta["resumed_finished"] == "checkpoint-4"
    train(make_config(stories_dir, killed, **opts), resume=True)  # a finished run resumed: a no-op again
    assert "the run had already finished" in (killed / "train.log").read_text()


def test_a_collapsed_run_stops_keeps_the_best_sound_checkpoint_and_fails(stories_dir, tmp_path):
    run = tmp_path / "run"
    # LoRA at a learning rate of 1 without clipping: the loss leaves its healthy 3.1 for the uniform level (ln 512 =
    # 6.24) or above and stays there.
    cfg = make_config(stories_dir, run, max_steps=12, learning_rate=1.0, max_grad_norm=0.0, save_steps=1,
                      save_total_limit=2)
    with pytest.raises(TrainingDiverged, match="collapsed") as error:
        train(cfg)
    assert error.value.exit_code == 3 and "lower it" in error.value.hint
    meta = json.loads((run / "tunesmith_run.json").read_text())
    restored = meta["restored_from"]
    saved = load_file(run / "adapter_model.safetensors")
    checkpoint = load_file(run / "checkpoints" / restored / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], checkpoint[k]) for k in saved)
    codes = [f["code"] for f in json.loads((run / "diagnostics.json").read_text())["findings"]]
    assert "collapse" in codes and "plateau" not in codes and "grad_vanishing" not in codes
    assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) < 12
    # no checkpoint of a suspect step was written, so rotation (save_total_limit 2) kept the healthy one
    assert restored == "checkpoint-1" and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1"]


def test_collapse_is_told_from_a_plateau():
    uniform = math.log(512)
    healthy_then_uniform = [(1, 3.0), (2, 2.5)] + [(s, uniform + s % 2) for s in range(3, 10)]
    assert detect_collapse(healthy_then_uniform, [], 512)[0].step == 7  # the fifth logged step at that level
    assert detect_collapse([(s, uniform) for s in range(1, 12)], [], 512) == []  # never healthy: a random start
    recovering = [(1, 3.0), (2, 2.5), (3, 7.5), (4, 6.9), (5, 7.4), (6, 5.0), (7, 4.3), (8, 7.0), (9, 2.3)]
    assert detect_collapse(recovering, [], 512) == []  # a few steps above it, then back: unstable, not collapsed
    dead = [(1, 2.0), (2, 1.5)] + [(s, 0.0) for s in range(3, 8)]
    assert detect_collapse([(s, 2.9) for s in range(1, 8)], dead, 512)[0].step == 7
    records = [{"step": s, "loss": v, "grad_norm": g} for (s, v), (_, g) in
               zip([(s, uniform) for s in range(1, 30)], [(s, 0.0) for s in range(1, 30)])]
    records[0]["loss"], records[0]["grad_norm"] = 2.0, 1.0
    codes = [f.code for f in diagnose(records, vocab_size=512)]
    assert "collapse" in codes and "plateau" not in codes  # no advice to raise the learning rate


def test_blown_up_weights_are_not_sound():
    layer = torch.nn.Linear(4, 4)
    assert weights_sound(layer)
    with torch.no_grad():
        layer.weight[0, 0] = 1e20
    assert not weights_sound(layer)
