"""GRPO (`task: grpo`): the built-in rewards by hand, two real steps on stories260K, the example, and a reward
function that raises or is missing stopping with a message that names it."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main
from tunesmith.config.loading import load_config, validate_config
from tunesmith.config.schema import RewardSpec
from tunesmith.errors import ConfigError
from tunesmith.recipes import train
from tunesmith.tasks.grpo.rewards import RewardError, build_rewards

from .conftest import EXAMPLES, ROOT

ARITHMETIC = str(EXAMPLES / "data" / "arithmetic.jsonl")


def grpo_config(model_dir, out, rewards, **training):
    return validate_config({
        "task": "grpo", "model": {"name_or_path": str(model_dir)},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "grpo": {"rewards": rewards, "num_generations": 2, "max_completion_length": 8},
        "data": {"train": [{"path": ARITHMETIC, "max_samples": 8}], "template": "alpaca_en", "max_length": 128},
        "training": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                     "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "tensorboard": False, **training}})


def test_builtin_rewards_by_hand():
    (exact, form, length), weights = build_rewards([
        RewardSpec(name="exact_answer", pattern=r"(-?\d+)"), RewardSpec(name="format", pattern=r"^\s*\d+\s*$",
                                                                        weight=0.5),
        RewardSpec(name="length", target=4)])
    completions = ["7", "It is 7.0 I think", "seven", " 12 "]
    assert exact(["p"] * 4, completions, answer=[7, "7", 7, 12]) == [1.0, 1.0, 0.0, 1.0]
    assert form(["p"] * 4, completions) == [1.0, 0.0, 0.0, 1.0] and weights == [1.0, 0.5, 1.0]
    assert length(["p"] * 4, completions) == [0.25, 0.75, 0.25, 0.25]  # 1 - |words - 4| / 4
    assert (exact.__name__, form.__name__) == ("exact_answer", "format")
    with pytest.raises(ConfigError, match="reads the record field 'answer'"):
        exact(["p"], ["7"], solution=["7"])


def test_grpo_config_errors():
    base = {"task": "grpo", "model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.jsonl"}]}}
    with pytest.raises(ConfigError, match="at least one reward"):
        validate_config(base)
    with pytest.raises(Exception, match="unknown reward 'nope'"):
        validate_config({**base, "grpo": {"rewards": ["nope"]}})
    with pytest.raises(Exception, match="reward format needs `pattern`"):
        validate_config({**base, "grpo": {"rewards": ["format"]}})
    with pytest.raises(ConfigError, match=r"batch_size x grad_accum \(6\) must be a multiple of grpo.num_generations"):
        validate_config({**base, "grpo": {"rewards": ["exact_answer"], "num_generations": 4},
                         "training": {"batch_size": 3, "grad_accum": 2}})
    with pytest.raises(ConfigError, match="grpo section does not apply to task: sft"):
        validate_config({**base, "task": "sft", "grpo": {"rewards": ["exact_answer"]}})
    with pytest.raises(ConfigError, match="cannot load the reward function no_such_module:f"):
        build_rewards([RewardSpec(name="no_such_module:f")])


def test_two_grpo_steps_on_stories260k(stories_dir, tmp_path):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def short(prompts, completions, **columns):\n"
                       "    assert len(columns['answer']) == len(completions)\n"
                       "    return [1.0 if len(c) < 20 else 0.0 for c in completions]\n")
    out = tmp_path / "run"
    train(grpo_config(stories_dir, out, [{"name": "exact_answer", "pattern": r"(-?\d+)"},
                                         {"name": f"{rewards}:short", "weight": 0.5}]))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "loss" in row]
    assert len(steps) == 2
    assert all("reward" in row and "rewards/exact_answer/mean" in row and "rewards/short/mean" in row
               for row in steps)
    meta = json.loads((out / "tunesmith_run.json").read_text())
    assert meta["task"] == "grpo" and meta["data"]["columns"] == ["answer"]
    assert (meta["data"]["train_samples"], meta["data"]["dropped_long_prompt"]) == (8, 0)
    assert (out / "adapter_model.safetensors").is_file()


def test_a_reward_function_that_raises_names_itself(stories_dir, tmp_path, capsys):
    rewards = tmp_path / "bad_rewards.py"
    rewards.write_text("def boom(prompts, completions, **columns):\n    raise ValueError('cannot parse')\n")
    cfg = grpo_config(stories_dir, tmp_path / "run", [{"name": f"{rewards}:boom"}])
    with pytest.raises(RewardError) as caught:
        train(cfg)
    assert caught.value.where == "grpo.rewards[0]"
    assert f"reward function {rewards}:boom raised ValueError: cannot parse" in caught.value.message
    assert "What is" in caught.value.hint  # the prompt it failed on
    raw = cfg.model_dump(mode="json", include={"task", "grpo", "data"}, exclude_defaults=True)
    raw.update(model={"name_or_path": str(stories_dir)}, method={"name": "lora", "r": 8},
               training={"output_dir": str(tmp_path / "cli"), "max_steps": 1, "batch_size": 2, "tensorboard": False})
    (tmp_path / "bad.yaml").write_text(json.dumps(raw))
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "grpo.rewards[0]" in err and "raised ValueError: cannot parse" in err and "Traceback" not in err


def test_long_prompts_are_left_out_and_counted(stories_dir):
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.templates.registry import get_template
    from tunesmith.errors import DataError
    from tunesmith.tasks.grpo.data import build_prompt_data

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    template = get_template("alpaca_en", tokenizer)
    def length(a: int) -> int:
        prompt = template.render_prompt([{"role": "user", "content": f"What is {a} + 1? Answer with the number only."}])
        return len(tokenizer(prompt)["input_ids"])

    # one-digit sums fit, longer ones do not
    assert length(1) < length(12)
    data = DataConfig(train=[{"path": ARITHMETIC, "max_samples": 20}], max_length=length(1) + 8)
    rows, stats = build_prompt_data(data, template, tokenizer, completion_tokens=8)
    dropped = stats["dropped_long_prompt"]
    assert 0 < dropped < 20 and len(rows) == stats["train_samples"] == 20 - dropped
    assert set(rows.column_names) == {"prompt", "answer"}
    with pytest.raises(DataError, match="every prompt is longer"):
        build_prompt_data(data, template, tokenizer, completion_tokens=length(1) + 8)


def test_grpo_example_is_valid(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(EXAMPLES / "grpo.yaml")
    assert [r.name for r in cfg.grpo.rewards] == ["exact_answer", "format"]
    functions, _ = build_rewards(cfg.grpo.rewards)
    # what SmolLM2-135M-Instruct answered to the first four prompts (greedy, tunesmith generate)
    replies = ["12 + 13 = 25", "16 - 8 = 12", "12 - 9 = 1", "11 + 18 = 22"]
    assert functions[0](["p"] * 4, replies, answer=[25, 8, 3, 29]) == [1.0, 0.0, 0.0, 0.0]
    assert functions[1](["p"] * 3, ["25.", " 25 ", "12 + 13 = 25"]) == [1.0, 1.0, 0.0]
