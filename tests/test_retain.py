"""The retain options (tunesmith/retain/): each penalty's value and gradient against a float64 hand computation,
the KD teacher, the EWC Fisher, replay in the stream, the config errors, and runs that train, log, plan and resume."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.config.loading import validate_config
from tunesmith.errors import ConfigError
from tunesmith.recipes import train
from tunesmith.retain.anchors import TrainableAnchor, lora_base_weight, lora_factors, lora_layers
from tunesmith.retain.ewc import FISHER_FILE, empirical_fisher, ewc_low_rank, ewc_trainable
from tunesmith.retain.kd import Teacher, kd_sum
from tunesmith.retain.l2sp import l2sp_low_rank, l2sp_trainable
from tunesmith.retain.replay import REPLAY_COLUMN, add_replay, encode_text
from tunesmith.speed.logits import HeadRows, next_token_mask

from .conftest import SHARED, RecordingReporter, require_shared
from .test_training import Crash, make_config

WIKI = SHARED / "data" / "general" / "wiki_demo.txt"
C4 = SHARED / "data" / "general" / "c4_demo.jsonl"


def lora_model(model_dir, seed=0):
    """stories260K with LoRA on q and v, B made non-zero so the adapters change the model."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0))
    for _, layer in lora_layers(model):
        for _, b, _ in lora_factors(layer):
            torch.nn.init.normal_(b, std=0.05)
    return model


def rows(model_dir, n=4):
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["Tom saw a big red ball in the park.", "Lily liked to play with her cat.", "The sun was hot.",
             "Once upon a time there was a little dog."]
    return [encode_text(tok, text, 64) for text in texts[:n]]


def factors64(model):
    return [(a.detach().double(), b.detach().double(), s) for _, layer in lora_layers(model)
            for a, b, s in lora_factors(layer)]


# --- penalties: value and gradient against float64 by hand ----------------------------------------------------------

def test_l2sp_low_rank_value_and_gradient_match_a_hand_computation(stories_dir):
    model = lora_model(stories_dir)
    value = l2sp_low_rank(model)
    value.backward()
    expected = sum(((s * b @ a) ** 2).sum() for a, b, s in factors64(model))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    for (_, layer), (a, b, s) in zip(lora_layers(model), factors64(model)):
        (a_p, b_p, _), = lora_factors(layer)
        delta = s * b @ a  # d‖sBA‖²/dB = 2s·(sBA)Aᵀ, d/dA = 2s·Bᵀ(sBA)
        torch.testing.assert_close(b_p.grad.double(), 2 * s * delta @ a.T, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a_p.grad.double(), 2 * s * b.T @ delta, rtol=1e-4, atol=1e-7)


def test_ewc_low_rank_value_and_gradient_match_a_hand_computation(stories_dir):
    model = lora_model(stories_dir)
    torch.manual_seed(1)
    fisher = {name: torch.rand_like(lora_base_weight(layer)) for name, layer in lora_layers(model)}
    value = ewc_low_rank(model, fisher)
    value.backward()
    expected = 0.0
    for (name, layer), (a, b, s) in zip(lora_layers(model), factors64(model)):
        f = fisher[name].double()
        delta = s * b @ a
        expected += (f * delta ** 2).sum()
        (a_p, b_p, _), = lora_factors(layer)
        torch.testing.assert_close(b_p.grad.double(), s * (2 * f * delta) @ a.T, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a_p.grad.double(), s * b.T @ (2 * f * delta), rtol=1e-4, atol=1e-7)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainable_penalties_value_and_gradient_match_a_hand_computation(stories_dir):
    model = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    anchor = TrainableAnchor(model)
    start = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    fisher = {name: torch.rand_like(p) for name, p in model.named_parameters()}
    l2sp_trainable(model, anchor).backward()
    l2sp_grads = {name: p.grad.double().clone() for name, p in model.named_parameters()}
    model.zero_grad()
    value = ewc_trainable(model, fisher, anchor)
    value.backward()
    expected = 0.0
    for name, p in model.named_parameters():
        delta = p.detach().double() - start[name]
        expected += (fisher[name].double() * delta ** 2).sum()
        torch.testing.assert_close(l2sp_grads[name], 2 * delta, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(p.grad.double(), 2 * fisher[name].double() * delta, rtol=1e-4, atol=1e-7)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_kd_value_and_gradient_match_a_hand_computation_chunk_by_chunk():
    torch.manual_seed(3)
    head = torch.nn.Linear(16, 50, bias=True)
    student = torch.randn(7, 16, requires_grad=True)
    teacher = torch.randn(7, 16)
    value = kd_sum(HeadRows(hidden=student, head=head), HeadRows(hidden=teacher, head=head), 2.0, chunk=3)
    value.backward()

    s64 = student.detach().double().requires_grad_(True)
    w, b = head.weight.detach().double(), head.bias.detach().double()
    p_t = torch.softmax((teacher.double() @ w.T + b) / 2.0, -1)
    p_s = torch.softmax((s64 @ w.T + b) / 2.0, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum()
    # d/dz_s of Σ KL(p_t‖softmax(z_s/T)) = (p_s − p_t)/T, through the head: ((p_s − p_t)/T) @ W
    torch.testing.assert_close(student.grad.double(), ((p_s - p_t) / 2.0).detach() @ w, rtol=1e-4, atol=1e-7)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    same = kd_sum(HeadRows(hidden=teacher, head=head), HeadRows(hidden=teacher, head=head), 2.0, chunk=3)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


# --- the teacher and the Fisher are the starting model's -------------------------------------------------------------

def test_kd_teacher_logits_equal_the_base_models(stories_dir):
    model = lora_model(stories_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    row = rows(stories_dir, 1)[0]
    labels = torch.tensor([row["labels"]])
    inputs = {"input_ids": torch.tensor([row["input_ids"]]), "logits_to_keep": next_token_mask(labels)}
    with torch.no_grad():
        expected = base(input_ids=inputs["input_ids"]).logits[next_token_mask(labels)]
        adapted = model(input_ids=inputs["input_ids"]).logits[next_token_mask(labels)]
    assert not torch.allclose(adapted, expected, atol=1e-4), "the adapters must change the model for this test"
    teacher = Teacher(model, adapters_off_is_start=True)
    assert teacher.copy is None  # adapters switched off: no second copy
    rows_t = teacher.rows(model, inputs)
    torch.testing.assert_close(rows_t.scores(0, rows_t.rows()), expected, rtol=1e-5, atol=1e-5)
    copied = Teacher(base, adapters_off_is_start=True)  # no adapters to switch off: a frozen copy
    with torch.no_grad():
        base.lm_head.weight.add_(1.0)  # training moves the student; the copy stays the start
    rows_c = copied.rows(base, inputs)
    torch.testing.assert_close(rows_c.scores(0, rows_c.rows()), expected, rtol=1e-5, atol=1e-5)


def test_ewc_fisher_is_the_mean_squared_per_sample_gradient(stories_dir):
    model = lora_model(stories_dir)
    samples = rows(stories_dir, 3)
    reporter = RecordingReporter()
    fisher = empirical_fisher(model, samples, "low_rank", reporter)
    assert reporter.advanced["EWC: Fisher of the starting model"] == 3
    assert all(not lora_base_weight(layer).requires_grad for _, layer in lora_layers(model))  # restored

    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float64)
    names = {name: layer for name, layer in lora_layers(model)}
    direct = {}
    for row in samples:
        base.zero_grad()
        base(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss.backward()
        for name in names:
            module = base.get_submodule(name.removeprefix("base_model.model."))
            direct[name] = direct.get(name, 0) + module.weight.grad.pow(2) / len(samples)
    assert set(fisher) == set(direct)
    for name in fisher:
        torch.testing.assert_close(fisher[name].double(), direct[name], rtol=1e-3, atol=1e-10)


# --- replay in the stream --------------------------------------------------------------------------------------------

def test_replay_of_a_text_corpus_is_lm_loss_on_all_tokens_at_the_ratio(stories_dir):
    require_shared(WIKI)
    from tunesmith.data.dataset import build_datasets
    from tunesmith.data.templates.registry import get_template

    cfg = make_config(stories_dir, "unused")
    tok = AutoTokenizer.from_pretrained(stories_dir)
    template = get_template("alpaca_en", tok)
    data = build_datasets(cfg.data, tok, template)
    spec = {"data": [{"path": str(WIKI)}, {"path": str(C4), "max_samples": 5}], "ratio": 0.25}
    cfg = validate_config({**cfg.model_dump(mode="json"), "retain": {"replay": spec}})
    mixed = add_replay(data, cfg.retain.replay, tok, template, cfg.data)
    flags = mixed.train[REPLAY_COLUMN]
    assert len(flags) == len(data.train) + sum(flags)
    assert sum(flags) / len(flags) == pytest.approx(0.25, abs=0.01)
    assert mixed.stats["replay_samples"] == sum(flags) and mixed.stats["replay_pool"] == 30 + 5
    replayed = [row for row in mixed.train if row[REPLAY_COLUMN]]
    task = [row for row in mixed.train if not row[REPLAY_COLUMN]]
    assert all(row["labels"] == row["input_ids"] for row in replayed)  # every token trained
    assert all(-100 in row["labels"] for row in task)  # the task rows keep their prompt masked
    assert sorted(map(tuple, (r["input_ids"] for r in task))) == sorted(map(tuple, data.train["input_ids"]))


# --- config errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, retain, where", [
    ("prompt", {"l2sp": {"weight": 0.1}}, "retain.l2sp"),
    ("dora", {"ewc": {"weight": 1.0, "data": [{"path": str(WIKI)}]}}, "retain.ewc"),
    ("prefix", {"kd": {"weight": 1.0, "on": "train"}}, "retain.kd"),
    ("lora", {"replay": {"data": [{"path": "/no/such/file.txt"}]}}, "retain.replay.data[0].path"),
    ("lora", {"ewc": {"weight": 1.0}}, "retain.ewc.data"),
    ("lora", {"kd": {"weight": 1.0}}, "retain.kd.on"),
])
def test_a_bad_retain_section_is_a_config_error_naming_the_field(stories_dir, method, retain, where):
    require_shared(WIKI)
    raw = make_config(stories_dir, "unused").model_dump(mode="json")
    raw["method"] = {"name": method}
    with pytest.raises(ConfigError) as err:
        validate_config({**raw, "retain": retain})
    assert where in str(err.value.where), err.value


@pytest.mark.parametrize("retain, field", [({"replay": {"data": [{"path": str(WIKI)}], "ratio": 1.0}}, "ratio"),
                                           ({"replay": {"data": [{"path": str(WIKI)}], "ratio": 0}}, "ratio"),
                                           ({"l2sp": {"weight": -1}}, "weight"),
                                           ({"kd": {"weight": 1, "on": "everything"}}, "on"),
                                           ({"ewc": {"wieght": 1}}, "wieght")])
def test_out_of_range_retain_values_are_config_errors(stories_dir, retain, field):
    raw = make_config(stories_dir, "unused").model_dump(mode="json")
    with pytest.raises(ConfigError, match=rf"retain\.\w+\.{field}"):
        validate_config({**raw, "retain": retain})


def test_retain_is_refused_for_other_tasks(stories_dir):
    raw = make_config(stories_dir, "unused").model_dump(mode="json")
    with pytest.raises(ConfigError) as err:
        validate_config({**raw, "task": "dpo", "retain": {"l2sp": {"weight": 0.1}}})
    assert err.value.where.endswith("retain")


# --- the planner -------------------------------------------------------------------------------------------------------

def test_the_planner_counts_theta0_fisher_and_the_teacher(stories_dir):
    from tunesmith.planning import PlanRequest, load_model_config, plan_memory

    config = load_model_config(str(stories_dir))
    full = plan_memory(config, PlanRequest(method="full", seq=32))
    with_ewc = plan_memory(config, PlanRequest(method="full", seq=32, retain=("l2sp", "ewc")))
    weights = full.counts.trainable_bytes
    assert with_ewc.retain_parts["retain: θ₀ of the trained tensors"] == weights
    assert with_ewc.retain_parts["retain: EWC Fisher (fp32)"] == full.counts.trainable * 4
    assert with_ewc.peak == pytest.approx(full.peak + weights + full.counts.trainable * 4)

    with_kd = plan_memory(config, PlanRequest(method="full", seq=32, retain=("l2sp", "kd")))
    assert "retain: θ₀ of the trained tensors" not in with_kd.retain_parts  # the teacher copy serves as θ₀
    assert with_kd.retain_parts["retain: teacher (frozen copy)"] == weights and with_kd.retain_pass > 0

    from tunesmith.planning.preflight import request_from_config

    cfg = retain_config(stories_dir, "unused", {"l2sp": {"weight": 1.0}, "ewc": {"weight": 1.0, "data": [
        {"path": str(require_shared(WIKI))}]}, "kd": {"weight": 0.0}})
    assert request_from_config(cfg, "cpu").retain == ("l2sp", "ewc")  # the pre-flight asks for what is on

    lora = plan_memory(config, PlanRequest(method="lora", seq=32))
    lora_ewc = plan_memory(config, PlanRequest(method="lora", seq=32, retain=("l2sp", "ewc", "kd")))
    assert set(lora_ewc.retain_parts) == {"retain: EWC Fisher (fp32)"}  # no copies: adapters off is the teacher
    assert lora.retain_weights == 0 and lora_ewc.peak > lora.peak


# --- runs ---------------------------------------------------------------------------------------------------------------

def retain_config(model_dir, out, retain, method="lora", data=None, **training):
    raw = make_config(model_dir, out, method, data, **training).model_dump(mode="json")
    return validate_config({**raw, "retain": retain})


def test_zero_weights_train_exactly_as_without_retain(stories_dir, tmp_path):
    opts = dict(max_steps=4)
    train(make_config(stories_dir, tmp_path / "plain", **opts))
    zero = {"l2sp": {"weight": 0.0}, "ewc": {"weight": 0.0}, "kd": {"weight": 0.0, "on": "train"}}
    train(retain_config(stories_dir, tmp_path / "zero", zero, **opts))
    a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    b = load_file(tmp_path / "zero" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_penalties_count_once_per_step_under_gradient_accumulation(stories_dir, tmp_path):
    """The task loss is divided over the accumulated batch; each micro-batch adds its share of a penalty, so two
    micro-batches of 4 train as one batch of 8 (a penalty added per micro-batch in full would count twice)."""
    retain = {"l2sp": {"weight": 20.0}}
    opts = dict(max_steps=3, data={"packing": False}, group_by_length=False)
    train(retain_config(stories_dir, tmp_path / "one", retain, batch_size=8, **opts))
    train(retain_config(stories_dir, tmp_path / "two", retain, batch_size=4, grad_accum=2, **opts))
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-3)
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["loss_l2sp"] > 0 for row in logged if "loss" in row][1:] == [True, True]


@pytest.mark.slow
def test_a_killed_retain_run_resumes_to_the_same_weights_with_its_cached_fisher(stories_dir, tmp_path):
    require_shared(WIKI)
    retain = {"replay": {"data": [{"path": str(WIKI)}], "ratio": 0.3}, "l2sp": {"weight": 0.5},
              "ewc": {"weight": 100.0, "samples": 8}, "kd": {"weight": 0.5, "on": "replay"}}
    opts = dict(max_steps=4, save_steps=2)
    straight = tmp_path / "straight"
    train(retain_config(stories_dir, straight, retain, **opts))
    logged = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "loss" in row]
    assert all({"loss_task", "loss_l2sp", "loss_ewc", "loss_kd"} <= set(row) for row in steps)
    assert steps[-1]["loss_l2sp"] > 0 and steps[-1]["loss_ewc"] > 0
    assert steps[-1]["loss"] == pytest.approx(steps[-1]["loss_task"] + steps[-1]["loss_l2sp"] +
                                              steps[-1]["loss_ewc"] + steps[-1]["loss_kd"], rel=1e-4)
    meta = json.loads((straight / "tunesmith_run.json").read_text())
    assert 0.25 < meta["data"]["replay_ratio"] < 0.35 and meta["retain"]["kd"]["on"] == "replay"

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(retain_config(stories_dir, resumed, retain, **opts), extra_callbacks=[Crash(at_step=3)])
    fisher = load_file(resumed / "retain" / FISHER_FILE)
    reporter = RecordingReporter()
    train(retain_config(stories_dir, resumed, retain, **opts), resume=True, reporter=reporter)
    assert "EWC: Fisher of the starting model" not in reporter.advanced  # read back, not recomputed
    again = load_file(resumed / "retain" / FISHER_FILE)
    assert all(torch.equal(fisher[k], again[k]) for k in fisher)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_full_tuning_with_l2sp_and_kd_pulls_towards_the_start(stories_dir, tmp_path):
    opts = dict(max_steps=6, learning_rate=1e-3)
    train(make_config(stories_dir, tmp_path / "plain", "full", **opts))
    train(retain_config(stories_dir, tmp_path / "held", {"l2sp": {"weight": 1.0},
                                                          "kd": {"weight": 1.0, "on": "train"}}, "full", **opts))
    start = load_file(stories_dir / "model.safetensors")
    plain, held = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "held" / "model.safetensors")

    def distance(weights):
        return sum(((weights[k].float() - start[k].float()) ** 2).sum().item() for k in start if k in weights)

    assert distance(held) < distance(plain)


def test_the_example_validates_and_yaml_reads_the_key_on(monkeypatch):
    require_shared(WIKI)
    from tunesmith.config.loading import load_config

    from .conftest import ROOT

    monkeypatch.chdir(ROOT)
    cfg = load_config(str(ROOT / "examples" / "retain.yaml"))  # PyYAML reads `on:` as the boolean True
    assert cfg.retain.kd.on == "replay" and cfg.retain.active() == ["replay", "l2sp", "ewc", "kd"]
    assert cfg.retain.ewc_data() == cfg.retain.replay.data


@pytest.mark.parametrize("packing", [False, True])
def test_the_replay_mask_marks_the_replay_samples_tokens(packing):
    from tunesmith.data.collator import make_collator
    from tunesmith.retain.replay import REPLAY_MASK, ReplayMaskCollator

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    features = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "length": 3, REPLAY_COLUMN: 1},
                {"input_ids": [8, 9], "labels": [-100, 9], "length": 2, REPLAY_COLUMN: 0}]
    batch = ReplayMaskCollator(make_collator(Tok(), packing=packing), packing)(features)
    expected = [[True, True, True, False, False]] if packing else [[True, True, True], [False, False, False]]
    assert batch[REPLAY_MASK].tolist() == expected and batch[REPLAY_MASK].shape == batch["input_ids"].shape
    plain = ReplayMaskCollator(make_collator(Tok(), packing=packing), packing, mark=False)(features)
    assert REPLAY_MASK not in plain and REPLAY_COLUMN not in plain
