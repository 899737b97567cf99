"""The curve doctor: each detector fires on a synthetic curve built to show its problem and stays quiet on a
healthy one; the callback stops on NaN/Inf and the run keeps the last good checkpoint."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState

from tunesmith.diagnostics.callback import DIAGNOSTICS_FILE, DiagnosticsCallback, TrainingDiverged
from tunesmith.diagnostics.curves import (detect_grad_health, detect_nonfinite, detect_oscillation,
                                          detect_overfitting, detect_plateau, detect_spikes, diagnose)


def healthy_loss(n=80, noise=0.03, seed=0):
    """A falling loss (exponential decay to 0.8) with ±3% minibatch noise."""
    rng = random.Random(seed)
    return [(s, (2.0 * math.exp(-s / 25) + 0.8) * (1 + rng.gauss(0, noise))) for s in range(1, n + 1)]


def healthy_grads(n=80, seed=1):
    rng = random.Random(seed)
    return [(s, 0.8 * (1 + rng.gauss(0, 0.1))) for s in range(1, n + 1)]


def records(loss, grads=(), val=()):
    by_step: dict[int, dict] = {}
    for key, series in (("loss", loss), ("grad_norm", grads), ("eval_loss", val)):
        for step, value in series:
            by_step.setdefault(step, {"step": step})[key] = value
    return [by_step[s] for s in sorted(by_step)]


def codes(findings):
    return [f.code for f in findings]


@pytest.mark.parametrize("seed", range(5))
def test_healthy_run_is_quiet(seed):
    val = [(s, 2.0 * math.exp(-s / 25) + 0.85) for s in range(10, 81, 10)]
    assert diagnose(records(healthy_loss(seed=seed), healthy_grads(seed=seed), val), max_grad_norm=1.0) == []


def test_spike_fires_at_its_step():
    curve = healthy_loss()
    curve[49] = (50, curve[49][1] * 3)
    found = detect_spikes(curve)
    assert codes(found) == ["spike"] and found[0].step == 50
    assert "learning rate" in found[0].advice
    assert detect_spikes(healthy_loss()) == []


def test_oscillation_fires_when_the_loss_swings_instead_of_settling():
    rng = random.Random(0)
    swinging = [(s, 1.5 * (1 + 0.35 * (-1) ** s) + rng.gauss(0, 0.02)) for s in range(1, 61)]
    found = detect_oscillation(swinging)
    assert codes(found) == ["oscillation"] and "learning rate" in found[0].advice
    assert detect_oscillation(healthy_loss()) == []
    assert "oscillation" in codes(diagnose(records(swinging)))
    # A zigzag on a loss that keeps falling is learning (alternating kinds of batches), not oscillation.
    zigzag = [(s, (3.0 - s / 40) * (1 + 0.2 * (-1) ** s)) for s in range(1, 61)]
    assert detect_oscillation(zigzag) == []


def test_plateau_fires_when_the_loss_does_not_fall():
    rng = random.Random(0)
    flat = [(s, 2.0 * (1 + rng.gauss(0, 0.01))) for s in range(1, 41)]
    found = detect_plateau(flat)
    assert codes(found) == ["plateau"]
    assert "learning rate may be too low" in found[0].advice and "method.r" in found[0].advice
    assert detect_plateau(healthy_loss()) == []


def test_overfitting_fires_when_validation_rises_while_training_falls():
    train = healthy_loss()
    val = [(10, 2.0), (20, 1.6), (30, 1.4), (40, 1.5), (50, 1.7), (60, 1.9)]
    found = detect_overfitting(train, val)
    assert codes(found) == ["overfitting"] and found[0].step == 30
    assert "step 30" in found[0].advice
    # Validation rising while training rises too is not overfitting (that is divergence or a bad lr).
    rising_train = [(s, 1.0 + s / 60) for s in range(1, 61)]
    assert detect_overfitting(rising_train, val) == []
    falling_val = [(20, 1.6), (40, 1.1), (60, 0.95), (80, 0.9)]
    assert detect_overfitting(train, falling_val) == []


def test_train_validation_gap():
    train = healthy_loss()                               # ends near 0.85
    val = [(20, 1.8), (40, 1.6), (60, 1.5), (80, 1.45)]  # still falling, but far above training
    found = detect_overfitting(train, val)
    assert codes(found) == ["generalization_gap"] and found[0].severity == "info"


def test_gradient_norm_health():
    grads = healthy_grads()
    assert detect_grad_health(grads, max_grad_norm=1.0) == []
    exploding = list(grads)
    exploding[40] = (41, 25.0)
    found = detect_grad_health(exploding)
    assert codes(found) == ["grad_explosion"] and found[0].step == 41
    vanishing = [(s, 1e-9) for s in range(1, 30)]
    assert codes(detect_grad_health(vanishing)) == ["grad_vanishing"]
    clipped = [(s, 5.0 + 0.1 * (s % 3)) for s in range(1, 30)]
    assert codes(detect_grad_health(clipped, max_grad_norm=1.0)) == ["grad_clipped"]
    assert codes(detect_grad_health(clipped, max_grad_norm=10.0)) == []


def test_nonfinite_is_an_error_reported_once():
    loss = healthy_loss(20)
    loss[12] = (13, float("nan"))
    assert codes(detect_nonfinite(loss)) == ["nonfinite"]
    grads = healthy_grads(20)
    grads[12] = (13, float("inf"))
    found = diagnose(records(loss, grads))
    assert codes(found).count("nonfinite") == 1 and found[0].severity == "error" and found[0].step == 13


def _event(callback, name, step, **kwargs):
    state, control = TrainerState(), TrainerControl()
    state.global_step = step
    control.should_save = kwargs.pop("should_save", False)
    getattr(callback, name)(None, state, control, **kwargs)
    return control


def test_callback_stops_without_saving_on_nonfinite_gradient(tmp_path):
    callback = DiagnosticsCallback(tmp_path)
    control = _event(callback, "on_log", 3, logs={"loss": 1.0, "grad_norm": 0.5}, should_save=True)
    assert not control.should_training_stop and control.should_save
    control = _event(callback, "on_log", 4, logs={"loss": 1.0, "grad_norm": float("nan")}, should_save=True)
    assert control.should_training_stop and not control.should_save
    assert callback.diverged.code == "nonfinite" and callback.diverged.step == 4


def test_callback_checks_weights_before_a_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    callback = DiagnosticsCallback(tmp_path)
    assert not _event(callback, "on_step_end", 2, model=model, should_save=True).should_training_stop
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    control = _event(callback, "on_step_end", 3, model=model, should_save=True)
    assert control.should_training_stop and not control.should_save


def test_findings_are_saved_with_the_run(tmp_path):
    lines = records(healthy_loss(40))
    lines[25]["loss"] *= 4
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    callback = DiagnosticsCallback(tmp_path)
    _event(callback, "on_train_end", 40)
    saved = json.loads((tmp_path / DIAGNOSTICS_FILE).read_text())
    assert [f["code"] for f in saved["findings"]] == ["spike"] and saved["diverged"] is False


@pytest.mark.parametrize("bf16", [True, False])
def test_instability_under_half_precision_adds_a_precision_note(tmp_path, bf16):
    from types import SimpleNamespace

    lines = records(healthy_loss(40))
    lines[25]["loss"] *= 4
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    callback = DiagnosticsCallback(tmp_path)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_end(SimpleNamespace(bf16=bf16, fp16=False), state, control)
    found = codes(callback.findings)
    assert found == (["spike", "half_precision"] if bf16 else ["spike"])
    if bf16:
        assert "model.dtype: float32" in callback.findings[-1].advice
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    (healthy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(healthy_loss(40))))
    quiet = DiagnosticsCallback(healthy)
    quiet.on_train_end(SimpleNamespace(bf16=True, fp16=False), state, control)
    assert "half_precision" not in codes(quiet.findings)  # a healthy bf16 run gets no note


class Poison(TrainerCallback):
    """Puts NaN into the trainable weights after step `at`, as a too-high learning rate eventually does."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))


@pytest.mark.slow
def test_nan_stops_training_and_the_run_keeps_the_last_good_checkpoint(tiny_model_factory, tmp_path):
    from tunesmith.recipes import train

    from .test_training import make_config

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="stopped at step") as info:  # saved the sound weights, yet failed
        train(make_config(tiny_model_factory("llama"), run, max_steps=10, save_steps=2, save_total_limit=5),
              extra_callbacks=[Poison(at=5)])
    assert info.value.exit_code == 3 and "checkpoint-4" in info.value.hint
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]  # nothing saved after the weights broke
    saved = load_file(run / "adapter_model.safetensors")
    good = load_file(run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == good.keys() and all(torch.equal(saved[k], good[k]) for k in saved)
    assert all(torch.isfinite(t).all() for t in saved.values())
    meta = json.loads((run / "tunesmith_run.json").read_text())
    assert meta["restored_from"] == "checkpoint-4" and meta["diagnostics"][0]["code"] == "nonfinite"
    card = (run / "README.md").read_text()
    assert "the best sound checkpoint before it" in card and "nonfinite" in card
    assert json.loads((run / DIAGNOSTICS_FILE).read_text())["diverged"] is True


def test_nan_before_any_checkpoint_is_a_clear_error(tiny_model_factory, tmp_path):
    from tunesmith.recipes import train

    from .test_training import make_config

    with pytest.raises(TrainingDiverged, match="no sound checkpoint was written before it") as info:
        train(make_config(tiny_model_factory("llama"), tmp_path / "run", max_steps=6, save_steps=100),
              extra_callbacks=[Poison(at=1)])
    assert "lower the learning rate" in str(info.value)
