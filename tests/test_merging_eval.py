"""--eval scores merged and source models per task and flags failures; --search maximises the worst task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.cli.main import main

STORIES = ["Once upon a time there was a little girl named Lily. She liked to play in the park.",
           "Tom had a big red ball. He threw the ball to his dog and the dog ran after it.",
           "The sun was shining and the birds were singing. Sam went outside to play with his friends."]


def _perturbed(src: Path, out: Path, scale: float, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * scale * param.abs().mean())
    model.save_pretrained(out, max_shard_size="300KB")
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(stories_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalworld")
    good = _perturbed(stories_dir, root / "good", 0.01, 0)
    broken = _perturbed(stories_dir, root / "broken", 3.0, 1)
    data = root / "stories.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": "Tell a short story.", "output": s}) for s in STORIES))
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"template": "alpaca_en", "min_retention": 0.8, "tasks": [
        {"name": "stories", "path": str(data), "source": str(good)}]}))
    return root, good, broken, suite


def test_eval_flags_a_task_far_below_its_source(world, tmp_path, capsys):
    root, good, broken, suite = world
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"method": "linear", "models": [{"model": str(good)}, {"model": str(broken)}],
                                      "output": str(tmp_path / "out")}))
    code = main(["merge", str(config), "--no-progress", "--eval", str(suite), "--fail-on-flag"])
    err = capsys.readouterr().err
    assert code == 1, err
    report = json.loads((tmp_path / "out" / "merge_eval.json").read_text())
    assert set(report["scores"]) == {"merged", "good", "broken"}
    assert report["scores"]["merged"]["stories"] > report["scores"]["good"]["stories"]
    assert report["retention"]["stories"] < 0.8 and "keeps" in report["flags"][0]
    assert "worst" in err and "average" in err


def test_search_maximises_the_worst_task(world, tmp_path, capsys):
    root, good, broken, suite = world
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"method": "linear", "models": [{"model": str(good)}, {"model": str(broken)}],
                                      "output": str(tmp_path / "best"),
                                      "search": {"param": "weight", "values": [0.0, 0.5, 1.0]}}))
    code = main(["merge", str(config), "--no-progress", "--eval", str(suite), "--search"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "best" / "merge_eval.json").read_text())
    best = max(report["search"], key=lambda t: (t["worst_retention"], t["mean_retention"]))
    assert best["values"][1] == 0.0 and best["values"][0] > 0  # the broken model gets no weight
    assert report["retention"]["stories"] == pytest.approx(1.0, abs=1e-6)
    chosen = json.loads((tmp_path / "best" / "tunesmith_merge.json").read_text())["tunesmith_merge"]
    assert chosen["models"][1]["weight"] == 0.0
    assert not (tmp_path / ".best.search").exists()


def test_eval_suite_errors(world, tmp_path, capsys):
    root, good, broken, _ = world
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"method": "linear", "models": [{"model": str(good)}],
                                      "output": str(tmp_path / "o")}))
    bad = tmp_path / "suite.yaml"
    bad.write_text(yaml.safe_dump({"tasks": [{"name": "x", "paht": "y"}]}))
    assert main(["merge", str(config), "--eval", str(bad)]) == 2
    assert "tasks.0.path" in capsys.readouterr().err
    assert main(["merge", str(config), "--search", "--eval", str(bad)]) == 2
    assert "search" in capsys.readouterr().err
    stranger = tmp_path / "stranger.yaml"
    stranger.write_text(yaml.safe_dump({"tasks": [{"name": "x", "path": "y", "source": str(broken)}]}))
    assert main(["merge", str(config), "--eval", str(stranger)]) == 2
    err = capsys.readouterr().err
    assert "not a merge input" in err and "tasks.0.source" in err
    assert not (tmp_path / "o").exists()  # refused before merging anything
