"""`type: preference` eval tasks: held-out preference accuracy by log-prob (checked against a float64 recomputation
on stories260K) and by a reward run's score head, with --compare base."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.cli.main import main
from tunesmith.config.schema import DatasetSpec
from tunesmith.data.preference import load_preference, render
from tunesmith.evaluation.suite import load_suite
from tunesmith.tasks.preference.accuracy import preference_accuracy, reply_logps

from .conftest import EXAMPLES
from .test_eval_report import write_suite
from .test_preference import preference_config, write_jsonl

PAIRS = [{"prompt": "Where did Tom go?", "chosen": "Tom went to the park.", "rejected": "I do not know at all."},
         {"prompt": "What did Lily see?", "chosen": "Lily saw a big dog.", "rejected": "A cat."},
         {"prompt": "Who is happy?", "chosen": "The little girl was happy.", "rejected": "Nobody."},
         {"prompt": "What is the sun?", "chosen": "The sun is hot and bright.", "rejected": "It is a cold stone."}]


def _rows(path, tokenizer):
    from tunesmith.data.templates.registry import get_template

    template = get_template("alpaca_en", tokenizer)
    return [render(template, pair) for pair in load_preference(DatasetSpec(path=str(path)), unpaired=False)]


def _hand_logp(model, tokenizer, prompt: str, reply: str) -> tuple[float, int]:
    """float64: log softmax of every position, the reply tokens' log-probs summed; (sum, reply tokens)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
    total = sum(logps[len(prompt_ids) + i - 1, token].item() for i, token in enumerate(reply_ids))
    return total, len(reply_ids)


def test_preference_accuracy_matches_a_float64_recomputation(stories_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    rows = _rows(write_jsonl(tmp_path / "p.jsonl", PAIRS), tokenizer)
    model = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    summed = preference_accuracy(model, tokenizer, rows)
    mean = preference_accuracy(model, tokenizer, rows, normalize=True)
    raw = reply_logps(model, tokenizer, rows)
    model64 = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float64).eval()
    hand_sum, hand_mean = [], []
    for row in rows:
        (c, nc), (r, nr) = (_hand_logp(model64, tokenizer, row["prompt"], row[side]) for side in ("chosen", "rejected"))
        hand_sum.append((c, r))
        hand_mean.append((c / nc, r / nr))
        # reply_logps: each side's sum and its reply-token count, from which both scores (and, with a second
        # model's pass, the implicit reward) are taken
        (got_c, got_nc), (got_r, got_nr) = raw[len(hand_sum) - 1]
        assert (got_nc, got_nr) == (nc, nr)
        assert (got_c, got_r) == pytest.approx((c, r), abs=1e-4)
    for got, hand in ((summed, hand_sum), (mean, hand_mean)):
        assert got["pairs"] == len(PAIRS)
        torch.testing.assert_close(torch.tensor(got["scores"], dtype=torch.float64), torch.tensor(hand, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-4)
        wins = [c > r for c, r in hand]
        assert got["accuracy"] == sum(wins) / len(wins)
        assert got["mean_margin"] == pytest.approx(sum(c - r for c, r in hand) / len(hand), abs=1e-4)
    # the two measures disagree on at least one pair here: a short rejected reply wins the sum, not the mean
    assert [c > r for c, r in hand_sum] != [c > r for c, r in hand_mean]


def test_example_preference_suite_is_valid():
    suite = load_suite(EXAMPLES / "eval_preference.yaml")
    assert [(t.type, t.normalize) for t in suite.tasks] == [("preference", False), ("preference", True),
                                                            ("preference", False)]


def test_eval_a_dpo_run_against_its_base(stories_dir, tmp_path):
    from tunesmith.models.loading import load_for_inference
    from tunesmith.recipes import train

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    run = tmp_path / "dpo"
    train(preference_config(stories_dir, data, run))
    suite = write_suite(tmp_path, {"name": "prefs", "tasks": [
        {"name": "sum", "type": "preference", "data": str(data)},
        {"name": "mean", "type": "preference", "data": str(data), "normalize": True}]})
    assert main(["eval", str(run), "--suite", str(suite), "--compare", "base"]) == 0
    results = json.loads((run / "eval" / "prefs" / "results.json").read_text())
    base, tuned = results["base"]["tasks"], results["tuned"]["tasks"]
    assert (base["sum"]["scorer"], base["mean"]["scorer"]) == ("summed log-prob", "mean log-prob per token")
    # the base row is the base model's own log-probs; the tuned row is the run reloaded from disk
    loaded = load_for_inference(str(stories_dir), dtype="float32")
    expected = preference_accuracy(loaded.model, loaded.tokenizer, _rows(data, loaded.tokenizer))
    assert base["sum"]["metrics"]["accuracy"] == expected["accuracy"]
    assert base["sum"]["metrics"]["mean_margin"] == pytest.approx(expected["mean_margin"], rel=1e-5)
    tuned_loaded = load_for_inference(str(run), dtype="float32")
    after = preference_accuracy(tuned_loaded.model, tuned_loaded.tokenizer, _rows(data, tuned_loaded.tokenizer))
    assert tuned["sum"]["metrics"]["mean_margin"] == pytest.approx(after["mean_margin"], rel=1e-5)
    assert after["mean_margin"] != pytest.approx(expected["mean_margin"])  # the run moved
    rows = {(r["task"], r["metric"]) for r in results["comparison"]["rows"]}
    assert {("sum", "accuracy"), ("mean", "mean_margin")} <= rows
    assert "chosen" in tuned["sum"]["samples"][0]["reply"] and len(tuned["sum"]["samples"]) == len(PAIRS)


def test_eval_a_reward_run_scores_with_its_head(stories_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.recipes import train

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)
    run = tmp_path / "reward"
    train(preference_config(stories_dir, data, run, task="reward"))
    suite = write_suite(tmp_path, {"name": "prefs", "tasks": [{"name": "rm", "type": "preference",
                                                               "data": str(data), "max_samples": 4}]})
    assert main(["eval", str(run), "--suite", str(suite)]) == 0
    result = json.loads((run / "eval" / "prefs" / "results.json").read_text())["tasks"]["rm"]
    assert result["scorer"] == "reward score"
    # by hand: the documented way to load a reward run, prompt + reply + EOS, as TRL's RewardTrainer reads it
    tokenizer = AutoTokenizer.from_pretrained(run)
    base = AutoModelForSequenceClassification.from_pretrained(stories_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, run).eval()
    hand = []
    for row in _rows(tmp_path / "pairs.jsonl", tokenizer)[:4]:
        with torch.no_grad():
            hand.append(tuple(model(**tokenizer(row["prompt"] + row[side] + tokenizer.eos_token,
                                                return_tensors="pt")).logits[0, 0].item()
                              for side in ("chosen", "rejected")))
    torch.testing.assert_close(torch.tensor([[s["chosen_score"], s["rejected_score"]] for s in result["samples"]]),
                               torch.tensor(hand), rtol=1e-4, atol=1e-5)
    assert result["metrics"]["accuracy"] == sum(c > r for c, r in hand) / 4
    # --compare base: the base has no score head, so it is scored by its log-probs
    assert main(["eval", str(run), "--suite", str(suite), "--compare", "base", "--out", str(tmp_path / "cmp")]) == 0
    both = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert (both["base"]["tasks"]["rm"]["scorer"], both["tuned"]["tasks"]["rm"]["scorer"]) == (
        "summed log-prob", "reward score")
    # a reward model generates nothing: other task types are refused before any model loads
    other = write_suite(tmp_path, {"tasks": [{"name": "g", "type": "generation", "data": str(data), "metrics": []}]})
    assert main(["eval", str(run), "--suite", str(other)]) == 2
    assert "a reward model runs only `type: preference` tasks" in capsys.readouterr().err
