"""Preference tasks (dpo, orpo, simpo, kto, reward): the data shapes, the config section, the reference model, the
examples, resume. Training runs use stories260K and a few short pairs, so each takes seconds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunesmith.config.loading import load_config, validate_config
from tunesmith.config.schema import DatasetSpec
from tunesmith.data.preference import load_preference
from tunesmith.errors import ConfigError, DataError
from tunesmith.recipes import train

from .conftest import EXAMPLES, ROOT, SHARED, require_shared
from .test_training import Crash

PROMPT, CHOSEN, REJECTED = "Where did Tom go?", "Tom went to the park.", "I do not know."
SHAPES = [
    {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED},  # TRL, plain text
    {"prompt": [{"role": "user", "content": PROMPT}], "chosen": [{"role": "assistant", "content": CHOSEN}],
     "rejected": [{"role": "assistant", "content": REJECTED}]},  # TRL, conversational
    {"chosen": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}],
     "rejected": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": REJECTED}]},  # implicit
    {"conversations": [{"from": "human", "value": PROMPT}], "chosen": {"from": "gpt", "value": CHOSEN},
     "rejected": {"from": "gpt", "value": REJECTED}},  # LLaMA-Factory ShareGPT
    {"messages": [{"role": "user", "content": PROMPT}], "chosen": {"role": "assistant", "content": CHOSEN},
     "rejected": {"role": "assistant", "content": REJECTED}},  # OpenAI messages
    {"instruction": PROMPT, "input": "", "chosen": CHOSEN, "rejected": REJECTED},  # LLaMA-Factory Alpaca
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_format_parses_to_the_same_pairs(tmp_path):
    pairs = load_preference(DatasetSpec(path=str(write_jsonl(tmp_path / "p.jsonl", SHAPES))), unpaired=False)
    assert len(pairs) == len(SHAPES)
    for pair in pairs:
        assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": PROMPT}], CHOSEN, REJECTED)
    kto = [{"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}], "label": True},
           {"prompt": PROMPT, "completion": REJECTED, "label": False}, SHAPES[3]]
    unpaired = load_preference(DatasetSpec(path=str(write_jsonl(tmp_path / "k.jsonl", kto))), unpaired=True)
    assert [(u.prompt[0]["content"], u.completion, u.label) for u in unpaired] == [
        (PROMPT, CHOSEN, True), (PROMPT, REJECTED, False), (PROMPT, CHOSEN, True), (PROMPT, REJECTED, False)]


@pytest.mark.parametrize("record, field, unpaired", [
    ({"prompt": PROMPT, "chosen": CHOSEN}, "rejected", False),
    ({"conversations": [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": "x"}], "chosen": CHOSEN,
      "rejected": REJECTED}, "conversations[1]", False),
    ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": ""}, "rejected", False),
    ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": 3}, "rejected", False),
    ({"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}], "label": "yes"},
     "label", True),
])
def test_a_bad_record_is_named_by_file_line_and_field(tmp_path, record, field, unpaired):
    path = write_jsonl(tmp_path / "bad.jsonl", [SHAPES[0], record])
    with pytest.raises(DataError) as caught:
        load_preference(DatasetSpec(path=str(path)), unpaired=unpaired)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 2, field)


def test_the_shared_demo_files_parse():
    folder = require_shared(SHARED / "data" / "preference")
    for name, unpaired, count in [("dpo_en_demo", False, 250), ("dpo_zh_demo", False, 250), ("kto_en_demo", True, 250)]:
        assert len(load_preference(DatasetSpec(path=str(folder / f"{name}.json")), unpaired=unpaired)) == count


def test_a_reward_models_long_pairs_are_cut_to_fit_not_dropped(stories_dir, tmp_path):
    """TRL's reward trainer drops a pair that does not fit max_length; tunesmith cuts it first: each reply keeps its
    beginning, the prompt its end (the question and the template's assistant prefix), and every sequence then
    fits. Short pairs are untouched; the other tasks still leave cutting to TRL."""
    from tunesmith.data.preference_build import build_preference_data
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    long_prompt = "Once upon a time there was a cat. " * 30 + PROMPT
    records = [{"prompt": long_prompt, "chosen": CHOSEN + " It was fun." * 60, "rejected": REJECTED * 40},
               {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}]
    path = write_jsonl(tmp_path / "long.jsonl", records)
    cfg = validate_config({"task": "reward", "model": {"name_or_path": str(stories_dir)},
                           "data": {"train": [{"path": str(path)}], "max_length": 96, "template": "chatml"},
                           "training": {"output_dir": str(tmp_path / "run")}})
    tokenizer = load_tokenizer(cfg.model)
    template = get_template("chatml", tokenizer)
    data = build_preference_data(cfg.data, tokenizer, template, whole=True)
    assert (data.stats["train_samples"], data.stats["cut_to_fit"], data.stats["dropped_long_prompt"]) == (2, 1, 0)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    rows = sorted(data.train, key=lambda r: -len(r["prompt"] + r["chosen"]))
    cut, short = rows
    for key in ("chosen", "rejected"):
        assert count(cut["prompt"]) + count(cut[key]) + 1 <= 96
    assert cut["prompt"].rstrip().endswith("assistant") and PROMPT in cut["prompt"]
    assert cut["chosen"].startswith(CHOSEN) and len(cut["chosen"]) < len(records[0]["chosen"])
    assert short["chosen"] == CHOSEN + "<|im_end|>" and PROMPT in short["prompt"]  # rendered, uncut
    dpo = build_preference_data(cfg.data, tokenizer, template)  # dpo & co: TRL cuts; nothing cut here
    assert dpo.stats["cut_to_fit"] == 0


def test_an_option_of_another_task_is_refused():
    raw = {"task": "orpo", "model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json"}]},
           "preference": {"loss_type": "ipo"}}
    with pytest.raises(ConfigError, match="preference.loss_type does not apply to task: orpo"):
        validate_config(raw)
    with pytest.raises(Exception, match="unknown DPO loss"):
        validate_config({**raw, "task": "dpo", "preference": {"loss_type": "nope"}})


def pair_data(tmp_path, n=8):
    records = [{"prompt": f"Where did Tom go on day {i}?", "chosen": f"Tom went to the park {i}.",
                "rejected": "No."} for i in range(n)]
    return write_jsonl(tmp_path / "pairs.jsonl", records)


def preference_config(model_dir, data, out, task="dpo", method="lora", **training):
    method_cfg = {"name": method, **({"r": 8, "alpha": 16, "dropout": 0.0} if method != "full" else {})}
    return validate_config({
        "task": task, "model": {"name_or_path": str(model_dir)}, "method": method_cfg,
        "data": {"train": [{"path": str(data)}], "template": "alpaca_en", "max_length": 64},
        "training": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "learning_rate": 5e-3,
                     "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "tensorboard": False,
                     **training}})


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_the_reference_is_the_base_model_without_a_second_copy(stories_dir, tmp_path, method):
    """TRL, given a PEFT policy and no reference, keeps a frozen copy of the starting adapter ("ref"); a fresh
    adapter is the identity, so the reference log-probs are the base model's, even after the policy moved."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tunesmith.data.preference_build import build_preference_data
    from tunesmith.data.templates.registry import get_template
    from tunesmith.methods.registry import get_method
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.tasks.preference.model import sequence_logps

    cfg = preference_config(stories_dir, pair_data(tmp_path), tmp_path / "run", method=method)
    tokenizer = load_tokenizer(cfg.model)
    data = build_preference_data(cfg.data, tokenizer, get_template("alpaca_en", tokenizer))
    policy = get_method(method).prepare(AutoModelForCausalLM.from_pretrained(stories_dir), cfg.method,
                                        gradient_checkpointing=False)
    trainer = DPOTrainer(model=policy, ref_model=None, train_dataset=data.train, processing_class=tokenizer,
                         args=DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", max_length=64,
                                        bf16=False, use_cpu=True))
    assert trainer.ref_model is None
    with torch.no_grad():  # the policy moves away from the base
        for name, param in trainer.model.named_parameters():
            if ".default." in name and "lora_B" in name:
                param.normal_(0, 0.5)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    base = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    expected = sequence_logps(base, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, rtol=1e-4, atol=1e-3)
    moved = sequence_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert not torch.allclose(moved, expected, atol=1e-2)


def test_dpo_run_logs_preference_metrics_and_saves_only_the_trained_adapter(stories_dir, tmp_path):
    out = tmp_path / "dpo"
    train(preference_config(stories_dir, pair_data(tmp_path), out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "loss" in row]
    assert len(logged) == 2 and all("rewards/accuracies" in r and "rewards/margins" in r and "logps/chosen" in r
                                    for r in logged)
    assert not (out / "ref").exists()  # TRL's frozen reference adapter is not part of the artifact
    meta = json.loads((out / "tunesmith_run.json").read_text())
    assert meta["task"] == "dpo" and meta["preference"]["beta"] is None
    assert "tags: [tunesmith, dpo, lora]" in (out / "README.md").read_text()
    # The speed plan's model-level pieces apply to preference runs too.
    assert "CPU RMSNorm:" in (out / "train.log").read_text()


def test_a_dpo_run_starts_from_an_sft_runs_adapter(stories_dir, tmp_path):
    from safetensors.torch import load_file

    from .test_training import make_config

    sft = tmp_path / "sft"
    train(make_config(stories_dir, sft, max_steps=2))
    out = tmp_path / "dpo"
    cfg = preference_config(sft, pair_data(tmp_path), out)
    train(cfg)
    meta = json.loads((out / "tunesmith_run.json").read_text())
    assert meta["start_adapter"] == str(sft) and meta["base_model"]["name_or_path"] == str(stories_dir)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name_or_path"] == str(sft)
    before, after = load_file(sft / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_a_killed_dpo_run_resumes(stories_dir, tmp_path):
    from safetensors.torch import load_file

    data = pair_data(tmp_path)
    opts = dict(max_steps=4, save_steps=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(preference_config(stories_dir, data, straight, **opts))
    with pytest.raises(KeyboardInterrupt):
        train(preference_config(stories_dir, data, resumed, **opts), extra_callbacks=[Crash(at_step=3)])
    train(preference_config(stories_dir, data, resumed, **opts), resume=True)
    assert "resuming from" in (resumed / "train.log").read_text()
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


EXAMPLES_OF = ["dpo", "orpo", "simpo", "kto", "reward"]


@pytest.mark.slow
@pytest.mark.parametrize("task", EXAMPLES_OF)
def test_each_example_trains_and_its_artifact_reloads(stories_dir, tmp_path, monkeypatch, task):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    require_shared()
    example = EXAMPLES / f"{task}.yaml"
    out = tmp_path / "run"
    monkeypatch.chdir(ROOT)  # the examples' data paths are relative to the repository root
    samples = 40 if task in ("reward", "kto") else 12  # stories260K's tiny vocabulary makes long prompts
    cfg = load_config(example, [f"model.name_or_path={stories_dir}", f"training.output_dir={out}",
                                "training.max_steps=2", "training.batch_size=2", "training.grad_accum=1",
                                "training.save_steps=100", "training.tensorboard=false",
                                # long demo prompts in stories260K tokens: a 2-example split may hold none that fits
                                f"data.val_size={0 if task in ('kto', 'reward') else 2}",
                                f"data.train.0.max_samples={samples}", "data.max_length=512",
                                "data.template=alpaca_en"])
    train(cfg)
    assert json.loads((out / "tunesmith_run.json").read_text())["task"] == task
    if task == "reward":
        base = AutoModelForSequenceClassification.from_pretrained(stories_dir, num_labels=1)
        model = PeftModel.from_pretrained(base, out)
        saved = load_file(out / "adapter_model.safetensors")
        head = [k for k in saved if "score" in k]
        assert head, sorted(saved)
        loaded = dict(model.named_parameters())
        assert any(torch.equal(saved[k].float(), p.float()) for k in head for n, p in loaded.items()
                   if n.endswith(k.split("base_model.model.")[-1].replace(".weight", ".modules_to_save.default.weight")))
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories_dir), out)
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("task, extra", [
    ("sft", {}), ("dpo", {"preference": {"beta": 0.2}}), ("reward", {}),
    ("grpo", {"grpo": {"rewards": ["exact_answer"]}, "training": {"batch_size": 4}})])
def test_a_runs_written_config_reads_back(task, extra):
    """A run's config.yaml holds every section in full (other tasks' options at their defaults); `tunesmith train
    RUN/config.yaml` must accept it."""
    cfg = validate_config({"task": task, "model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json"}]},
                           **extra})
    assert validate_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))) == cfg
