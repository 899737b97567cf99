"""Data-derived defaults (tunesmith/planning/defaults.py): the rule's outputs, explicit values untouched, and a run
that records what it derived so its config.yaml trains the same run again."""

from __future__ import annotations

import json

import pytest
import yaml

from tunesmith.config.loading import load_config, validate_config
from tunesmith.planning.defaults import (derive_defaults, epochs_for, estimate_parameters, learning_rate_for,
                                         rank_for, warmup_for)

from .conftest import EXAMPLES, run_log

M, B = 10**6, 10**9


def config(method=None, **training):
    return validate_config({"model": {"name_or_path": "unused"}, "method": method or {"name": "lora"},
                            "data": {"train": [{"path": "unused.json"}]}, "training": training})


@pytest.mark.parametrize("method, parameters, rate", [
    ("lora", 135 * M, 5e-4), ("lora", 7 * B, 2e-4), ("lora", 70 * B, 1e-4), ("qlora", 7 * B, 2e-4),
    ("dora", 135 * M, 5e-4), ("loraplus", 7 * B, 1e-4), ("full", 135 * M, 5e-5), ("full", 7 * B, 2e-5),
    ("full", 70 * B, 1e-5), ("freeze", 135 * M, 1e-4), ("prompt", 7 * B, 3e-2), ("prefix", 135 * M, 1e-2),
    ("ia3", 7 * B, 3e-2), ("houlsby", 7 * B, 5e-4), ("lora", None, 2e-4)])
def test_learning_rate_by_method_family_and_model_size(method, parameters, rate):
    assert learning_rate_for(method, parameters) == pytest.approx(rate)


@pytest.mark.parametrize("samples, per_epoch, epochs", [
    (75, 19, 5),          # a persona set: raised to the 80-step floor
    (64, 2, 10),          # tiny: the floor wants 40 epochs, the cap is 10
    (849, 213, 3), (9_999, 2_500, 3), (52_000, 13_000, 2), (1_000_000, 250_000, 1)])
def test_epochs_by_dataset_size_with_a_step_floor_and_a_cap(samples, per_epoch, epochs):
    assert epochs_for(samples, per_epoch) == epochs


@pytest.mark.parametrize("tokens, rank", [(5_000, 8), (150_000, 16), (8 * M, 32), (100 * M, 64)])
def test_rank_by_supervised_tokens(tokens, rank):
    assert rank_for(tokens) == rank


@pytest.mark.parametrize("steps, ratio", [(10_000, 0.05), (200, 0.05), (95, 0.106), (20, 0.2)])
def test_warmup_is_five_percent_with_a_ten_step_minimum(steps, ratio):
    assert warmup_for(steps) == pytest.approx(ratio)


def test_unset_settings_are_derived_and_written_into_the_config():
    cfg, derived = derive_defaults(config(batch_size=4), samples=412, supervised_tokens=60_000,
                                   parameters=135 * M)
    assert derived.values == {"training.num_epochs": 3.0, "training.learning_rate": 5e-4,
                              "training.warmup_ratio": 0.05, "method.r": 8, "method.alpha": 16.0}
    assert (cfg.training.num_epochs, cfg.training.learning_rate, cfg.method.r, cfg.method.alpha) == (3.0, 5e-4, 8, 16)
    assert derived.total_steps == 309
    assert derived.line().startswith("default from the data: num_epochs 3, learning_rate 0.0005, warmup_ratio 0.05, "
                                     "r 8, alpha 16 (412 samples, 60,000 supervised tokens, lora on a 135M-")


def test_explicit_values_win_even_when_equal_to_the_static_default():
    explicit = config({"name": "lora", "r": 16, "alpha": 32}, num_epochs=3.0, learning_rate=2e-4, warmup_ratio=0.03)
    cfg, derived = derive_defaults(explicit, samples=50, supervised_tokens=50 * M, parameters=70 * B)
    assert derived.values == {} and cfg is explicit


def test_partly_set_configs_and_method_specifics():
    # max_steps set: epochs are not used, warm-up counts max_steps; alpha set: kept beside a derived rank.
    cfg, derived = derive_defaults(config({"name": "lora", "alpha": 8}, max_steps=40), samples=10_000,
                                   supervised_tokens=2 * M, parameters=7 * B)
    assert "training.num_epochs" not in derived.values and cfg.training.warmup_ratio == pytest.approx(0.2)
    assert (cfg.method.r, cfg.method.alpha) == (32, 8)
    # rsLoRA keeps its alpha (its alpha/sqrt(r) scale holds across ranks); prompt methods have no rank.
    cfg, derived = derive_defaults(config({"name": "rslora"}), samples=100, supervised_tokens=1_000, parameters=None)
    assert derived.values["method.r"] == 8 and "method.alpha" not in derived.values
    cfg, derived = derive_defaults(config({"name": "prompt"}), samples=100, supervised_tokens=1_000, parameters=None)
    assert not any(key.startswith("method.") for key in derived.values)
    assert cfg.training.learning_rate == pytest.approx(3e-2)


def test_parameters_are_estimated_from_the_model_config():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    llama = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.device("meta"):
        actual = sum(p.numel() for p in AutoModelForCausalLM.from_config(llama).parameters())
    assert estimate_parameters(llama) == pytest.approx(actual, rel=0.05)


def test_a_run_records_its_derived_defaults_and_its_config_retrains_the_same(stories_dir, tmp_path):
    from tunesmith.recipes import train

    run = tmp_path / "run"
    cfg = validate_config({
        "model": {"name_or_path": str(stories_dir)}, "method": {"name": "lora", "dropout": 0.0},
        "data": {"train": [{"path": str(EXAMPLES / "data" / "stories_chat.jsonl"), "max_samples": 32}],
                 "template": "alpaca_en",
                 "max_length": 64},
        "training": {"output_dir": str(run), "batch_size": 32, "logging_steps": 5, "save_steps": 1000,
                     "tensorboard": False}})
    train(cfg)  # the default reporter: its user lines are train.log's lines, as the console's are

    shown = [line for line in run_log(run).splitlines() if "default from the data:" in line]
    assert len(shown) == 1 and "tunesmith.user" in shown[0]
    assert "num_epochs 10, learning_rate 0.0005, warmup_ratio 0.2, r 8, alpha 16 (32 samples" in shown[0]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["training"]["num_epochs"], saved["training"]["learning_rate"], saved["method"]["r"]) == (10, 5e-4, 8)
    assert saved["training"]["warmup_ratio"] == pytest.approx(0.2)
    meta = json.loads((run / "tunesmith_run.json").read_text())
    assert meta["defaults_from_data"]["values"]["training.num_epochs"] == 10
    assert max(json.loads(line).get("step", 0) for line in (run / "metrics.jsonl").read_text().splitlines()) == 10

    # `tunesmith train RUN/config.yaml`: every value is set there, so nothing is derived again.
    again = load_config(run / "config.yaml")
    rederived, derived = derive_defaults(again, samples=32, supervised_tokens=1, parameters=1)
    assert derived.values == {}
    assert rederived.model_dump() == again.model_dump()
    assert (again.training.num_epochs, again.training.learning_rate, again.training.warmup_ratio, again.method.r,
            again.method.alpha) == (10.0, 5e-4, pytest.approx(0.2), 8, 16.0)
