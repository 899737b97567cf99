"""Evaluation suites, data, the before/after comparison and its reports; end to end on stories260K with a real
fine-tune (forgetting in the model card) and an LLM judge served by `tunesmith serve`'s server."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tunesmith.cli.main import main
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluation.compare import compare_results
from tunesmith.evaluation.data import load_classification, load_generation_items
from tunesmith.evaluation.report import write_report
from tunesmith.evaluation.suite import load_suite, validate_suite

from .conftest import EXAMPLES, SHARED, PairwiseJudge

WIKI = str(SHARED / "data" / "general" / "wiki_demo.txt")
ALPACA = str(SHARED / "data" / "instruct" / "alpaca_en_demo.json")
STORIES_DATA = str(EXAMPLES / "data" / "stories_chat.jsonl")


def write_suite(folder, suite: dict):
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True))
    return path


# --- suites and data ---------------------------------------------------------------------------------------------

def test_example_suite_is_valid_and_its_paths_resolve():
    suite = load_suite(EXAMPLES / "eval_suite.yaml")
    assert [t.type for t in suite.tasks] == ["perplexity", "perplexity", "generation", "generation",
                                             "classification"]
    from pathlib import Path

    assert all(Path(t.data).is_file() for t in suite.tasks)
    assert len(load_generation_items(suite.tasks[3])) == 12


@pytest.mark.parametrize("suite, message", [
    ({"tasks": []}, "tasks"),
    ({"tasks": [{"name": "a", "type": "bleu", "data": "x"}]}, "tasks"),
    ({"tasks": [{"name": "a", "type": "generation", "data": "x", "metrics": ["meteor"]}]}, "meteor"),
    ({"tasks": [{"name": "a", "type": "generation", "data": "x", "checks": [{"type": "colour"}]}]},
     "unknown check type 'colour'"),
    ({"tasks": [{"name": "a", "type": "classification", "data": "x", "labels": ["yes", "no"],
                 "label_map": {"1": "maybe"}}]}, "not among labels"),
    ({"tasks": [{"name": "a", "type": "perplexity", "data": "x"}, {"name": "a", "type": "perplexity",
                                                                    "data": "y"}]}, "repeated: \\['a'\\]"),
])
def test_bad_suites_are_config_errors(suite, message):
    with pytest.raises(ConfigError, match=message):
        validate_suite(suite, source="s.yaml")


def test_eval_cli_rejects_a_bad_suite_before_loading_any_model(tmp_path, capsys):
    path = write_suite(tmp_path, {"tasks": [{"name": "a", "type": "generation", "data": "x",
                                             "checks": [{"type": "length", "max_word": 3}]}]})
    assert main(["eval", "no/such/model", "--suite", str(path)]) == 2
    err = capsys.readouterr().err
    assert "suite.yaml" in err and "max_word" in err and "parameters:" in err


def test_eval_cli_reports_bad_data_before_loading_any_model(tmp_path, capsys):
    data = tmp_path / "sst.tsv"
    data.write_text("label\tsentence\n1\tgreat\n7\todd\n")
    path = write_suite(tmp_path, {"tasks": [{"name": "s", "type": "classification", "data": str(data),
                                             "text_column": "sentence", "labels": ["neg", "pos"],
                                             "label_map": {"0": "neg", "1": "pos"}}]})
    assert main(["eval", "no/such/model", "--suite", str(path)]) == 2
    assert "sst.tsv, line 3, field 'label'" in capsys.readouterr().err
    data.write_text("label\tsentence\n1\tgreat\n")
    suite = load_suite(path)
    assert suite.tasks[0].prompt == "{sentence}"  # the default prompt is the text column
    assert load_classification(suite.tasks[0]) == ([[{"role": "user", "content": "great"}]], ["pos"])


def test_generation_items_from_each_record_shape(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Say hi", "reference": "hi", "checks": ["lowercase"]},
        {"instruction": "Add", "input": "2+2", "output": "4"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                      {"role": "assistant", "content": "Paris"}]},
    ]) + "\n")
    suite = validate_suite({"tasks": [{"name": "g", "type": "generation", "data": str(data)}]})
    items = load_generation_items(suite.tasks[0])
    assert [i.reference for i in items] == ["hi", "4", "Paris"]
    assert items[0].messages == [{"role": "user", "content": "Say hi"}] and items[0].checks == [{"type": "lowercase"}]
    assert items[1].messages == [{"role": "user", "content": "Add", "input": "2+2"}]  # the template renders input
    assert [m["role"] for m in items[2].messages] == ["system", "user"]
    data.write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "y", "checks": [{"type": "nope"}]}))
    with pytest.raises(ConfigError, match="unknown check type") as info:
        load_generation_items(suite.tasks[0])
    assert "line 2" in info.value.where


def test_classification_data_errors_name_the_line_and_field(tmp_path):
    data = tmp_path / "c.csv"
    data.write_text("label,text\n1,great film\n2,odd\n")
    suite = validate_suite({"tasks": [{"name": "c", "type": "classification", "data": str(data),
                                       "labels": ["neg", "pos"], "label_map": {"0": "neg", "1": "pos"}}]})
    with pytest.raises(DataError, match="label '2' is not one of") as info:
        load_classification(suite.tasks[0])
    assert info.value.line == 3 and info.value.field == "label"


# --- comparison and reports ---------------------------------------------------------------------------------------

def _result(model, ppl, rouge, acc):
    return {"model": model, "suite": "s", "tasks": {
        "wiki": {"type": "perplexity", "general": True, "metrics": {"loss": math.log(ppl), "perplexity": ppl},
                 "samples": []},
        "qa": {"type": "generation", "general": False, "metrics": {"rouge_l": rouge, "check_pass_rate": 0.5},
               "checks": {"lowercase": 0.5},
               "samples": [{"prompt": "Q|1 <b>", "reference": "a", "reply": "x" * 2000, "checks": {"lowercase": True}}]},
        "sst2": {"type": "classification", "general": False, "metrics": {"accuracy": acc, "unparsed_rate": 0.0},
                 "confusion_matrix": [[1, 0, 0], [1, 0, 0]], "matrix_columns": ["neg", "pos", "(none)"],
                 "samples": [{"prompt": "p", "reference": "neg", "reply": "negative", "predicted": "neg"}]}}}


def test_compare_marks_better_and_worse_by_direction():
    comparison = compare_results(_result("base", 20.0, 0.2, 0.5), _result("tuned", 30.0, 0.4, 0.5))
    rows = {(r["task"], r["metric"]): r for r in comparison["rows"]}
    assert rows["wiki", "perplexity"]["improved"] is False and rows["wiki", "perplexity"]["delta"] == 10.0
    assert rows["qa", "rouge_l"]["improved"] is True and rows["qa", "rouge_l"]["headline"]
    assert rows["sst2", "accuracy"]["improved"] is None
    assert comparison["forgetting"] == [{"task": "wiki", "metric": "perplexity", "before": 20.0, "after": 30.0,
                                         "rate": 0.5}]


def test_report_markdown_and_html_with_plots(tmp_path):
    base, tuned = _result("base", 20.0, 0.2, 0.5), _result("tuned", 30.0, 0.4, 0.5)
    md, page = write_report([base, tuned], tmp_path, compare_results(base, tuned))
    text = md.read_text()
    assert "| task | metric | base | tuned | change |" in text
    assert "| wiki | perplexity ★ | 20 | 30 | +10 worse |" in text
    assert "| wiki | perplexity | 20 | 30 | +50.0% |" in text and "Warning: the worst forgetting rate is +50.0%" in text
    assert "Q\\|1 <b>" in text and "x" * 600 + " …" in text and "x" * 601 not in text  # escaped, long replies cut
    html = page.read_text()
    assert "<img src='metrics.png'" in html and "<img src='confusion_sst2.png'" in html and "Q|1 &lt;b&gt;" in html
    for png in ("metrics.png", "confusion_sst2.png"):
        assert (tmp_path / png).stat().st_size > 5_000


# --- end to end on stories260K ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_suite_tells_its_reporter_progress_and_metrics(stories_dir, tmp_path):
    """The runner prints nothing: each task's progress and metrics go to the reporter it is given."""
    from tunesmith.evaluation.runner import evaluate_suite
    from tunesmith.models.loading import load_for_inference

    from .conftest import RecordingReporter

    suite = load_suite(write_suite(tmp_path, {"name": "small", "generation": {"max_new_tokens": 4}, "tasks": [
        {"name": "wiki", "type": "perplexity", "data": WIKI, "max_samples": 2, "max_length": 64},
        {"name": "stories", "type": "generation", "data": STORIES_DATA, "max_samples": 3, "metrics": ["rouge_l"]}]}))
    reporter = RecordingReporter()
    result = evaluate_suite(load_for_inference(str(stories_dir), dtype="float32"), suite, label="m",
                            reporter=reporter)
    assert ("progress", "m: wiki") in reporter.lines and reporter.advanced["m: stories"] == 3
    shown = [text for kind, text in reporter.lines if kind == "info"]
    assert len(shown) == 2 and "m · wiki: loss" in shown[0] and "perplexity" in shown[0]
    assert "m · stories: rouge_l" in shown[1] and result["tasks"]["stories"]["metrics"]["rouge_l"] >= 0


def test_before_after_on_stories260k_with_forgetting_in_the_model_card(stories_dir, tmp_path):
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    run = tmp_path / "run"
    train(validate_config({
        "model": {"name_or_path": str(stories_dir)},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": [{"path": STORIES_DATA}], "template": "alpaca_en", "max_length": 128},
        "training": {"output_dir": str(run), "max_steps": 15, "batch_size": 8, "learning_rate": 1e-2,
                     "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "tensorboard": False,
                     "lr_scheduler": "constant"},
        "eval": {"general": [{"path": WIKI, "max_samples": 6}, {"path": ALPACA, "max_samples": 8}],
                 "max_length": 128},
    }))
    meta = json.loads((run / "tunesmith_run.json").read_text())
    forgetting = {r["task"]: r for r in meta["forgetting"]}
    assert set(forgetting) == {"wiki_demo", "alpaca_en_demo"}
    for row in forgetting.values():
        assert row["metric"] == "perplexity" and row["before"] > 1 and row["after"] > 1
        assert row["rate"] == pytest.approx((row["after"] - row["before"]) / row["before"])
    # Training on one narrow story pattern at a high learning rate costs general ability.
    assert forgetting["wiki_demo"]["rate"] > 0
    card = (run / "README.md").read_text()
    assert "## General ability (forgetting)" in card and "| wiki_demo | perplexity |" in card
    assert "## Training diagnostics" in card

    suite = write_suite(tmp_path, {"name": "e2e", "generation": {"max_new_tokens": 24, "batch_size": 8}, "tasks": [
        {"name": "wiki", "type": "perplexity", "data": WIKI, "max_samples": 6, "max_length": 128, "general": True},
        {"name": "stories", "type": "generation", "data": STORIES_DATA, "max_samples": 8,
         "metrics": ["exact_match", "rouge_l", "bleu", "chrf"], "checks": [{"type": "keywords", "words": ["saw"]}]},
        {"name": "sst2", "type": "classification", "data": str(SHARED / "data" / "sentiment" / "sst2_train.tsv"),
         "max_samples": 4, "text_column": "sentence", "labels": ["negative", "positive"],
         "label_map": {"0": "negative", "1": "positive"}, "max_new_tokens": 4}]})
    assert main(["eval", str(run), "--suite", str(suite), "--compare", "base"]) == 0
    out = run / "eval" / "e2e"
    results = json.loads((out / "results.json").read_text())
    base, tuned = results["base"]["tasks"], results["tuned"]["tasks"]
    # The same numbers as right after training: the base through a fresh load, the run reloaded from disk.
    assert base["wiki"]["metrics"]["perplexity"] == pytest.approx(forgetting["wiki_demo"]["before"], rel=1e-4)
    assert tuned["wiki"]["metrics"]["perplexity"] == pytest.approx(forgetting["wiki_demo"]["after"], rel=1e-4)
    # The fine-tune learnt the story pattern: its answers overlap the references far more than the base's.
    assert tuned["stories"]["metrics"]["rouge_l"] > base["stories"]["metrics"]["rouge_l"] + 0.2
    assert tuned["stories"]["checks"]["keywords(words=['saw'])"] == 1.0
    text = (out / "report.md").read_text()
    assert "## Forgetting" in text and "| wiki | perplexity |" in text and "tuned: run" in text
    assert (out / "report.html").is_file() and (out / "metrics.png").is_file()
    assert (out / "confusion_sst2.png").is_file()

    assert main(["analyze", str(run)]) == 0
    analysis = json.loads((run / "analysis" / "lora_rank.json").read_text())
    assert analysis["r"] == 8 and 1 <= analysis["suggested_rank"] <= 8 and analysis["layers"]


@pytest.mark.slow
def test_llm_judge_through_tunesmith_serve(stories_dir, tmp_path):
    """A real judge: stories260K fine-tuned to grade every answer "Score: 7", served over HTTP by tunesmith's
    OpenAI-compatible server; the suite's judge scores another model's replies through it."""
    from tunesmith.config.loading import validate_config
    from tunesmith.evaluation.metrics.judge import PROMPT
    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer
    from tunesmith.models.loading import load_for_inference
    from tunesmith.recipes import train

    rubric = "Grade it."
    grading = tmp_path / "grading.jsonl"
    grading.write_text("".join(json.dumps({"instruction": PROMPT.format(
        rubric=rubric, question=f"Tell me what {name} saw.", reference="(none)", answer=f"{name} saw a {thing}.",
        max_score=10), "output": "Score: 7"}) + "\n" for name in ("Mia", "Tom", "Lily", "Ben")
        for thing in ("ball", "tree")))
    judge_run = tmp_path / "judge"
    train(validate_config({
        "model": {"name_or_path": str(stories_dir)}, "method": {"name": "full"},
        "data": {"train": [{"path": str(grading)}], "template": "alpaca_en", "max_length": 512},
        "training": {"output_dir": str(judge_run), "max_steps": 12, "batch_size": 8, "learning_rate": 3e-3,
                     "logging_steps": 4, "save_steps": 100, "warmup_ratio": 0.0, "tensorboard": False,
                     "lr_scheduler": "constant"}}))
    suite = write_suite(tmp_path, {"name": "judged", "generation": {"max_new_tokens": 16}, "tasks": [
        {"name": "stories", "type": "generation", "data": STORIES_DATA, "max_samples": 4, "metrics": [],
         "judge": {"model": "judge", "base_url": "http://127.0.0.1:1/v1", "rubric": rubric}}]})
    with ModelServer(Generator(load_for_inference(str(judge_run))), "judge", max_requests=None) as server:
        raw = yaml.safe_load(suite.read_text())
        raw["tasks"][0]["judge"]["base_url"] = server.url
        suite.write_text(yaml.safe_dump(raw))
        assert main(["eval", str(stories_dir), "--suite", str(suite), "--out", str(tmp_path / "out")]) == 0
        assert server.served == 4
    task = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["stories"]
    assert task["metrics"]["judge_mean"] == 7 and task["metrics"]["judge_unparsed"] == 0
    assert task["metrics"]["judge_score"] == pytest.approx(6 / 9)  # (7 - 1) / (10 - 1)
    assert all(s["judge"] == {"score": 7, "reply": "Score: 7"} for s in task["samples"])


# --- head to head ------------------------------------------------------------------------------------------------

def _results(label, replies):
    return {"model": label, "tasks": {"qa": {"type": "generation", "metrics": {}, "samples": [
        {"prompt": f"question {i}", "reference": None, "reply": r} for i, r in enumerate(replies)]}}}


@pytest.mark.parametrize("rule", ["longer", "first", "mute"])
def test_head_to_head_asks_both_orders_and_cancels_position_bias(tmp_path, rule):
    """The judge sees each prompt twice, tuned reply first and base reply first. A judge that prefers the longer
    reply gives the tuned model 1 / 0.5 / 0 per prompt as its reply is longer / as long / shorter; a judge that
    always names the first answer gives every prompt 0.5 with consistency 0; no verdict counts as unparsed."""
    from tunesmith.evaluation.compare import head_to_head
    from tunesmith.reporting import Reporter

    tuned_replies, base_replies = ["a long reply", "same", "x"], ["short", "same", "much longer reply"]
    judge = PairwiseJudge(rule)
    try:
        suite = validate_suite({"name": "s", "tasks": [{"name": "qa", "type": "generation", "data": ALPACA,
                                                         "judge": {"model": "j", "base_url": judge.url}}]})
        tuned = _results("tuned", tuned_replies)
        rows = head_to_head(suite, _results("base", base_replies), tuned, Reporter())
    finally:
        judge.close()
    assert len(judge.seen) == 6
    orders = sorted((p.split("[Answer A]\n")[1].split("\n\n")[0], p.split("[Answer B]\n")[1].split("\n\n")[0])
                    for p in judge.seen)
    assert orders == sorted([(t, b) for t, b in zip(tuned_replies, base_replies)] +
                            [(b, t) for t, b in zip(tuned_replies, base_replies)])
    (row,) = rows
    if rule == "longer":
        assert [s["head_to_head"]["score"] for s in tuned["tasks"]["qa"]["samples"]] == [1.0, 0.5, 0.0]
        assert (row["win_rate"], row["wins"], row["ties"], row["losses"], row["consistency"]) == (0.5, 1, 1, 1, 1.0)
    elif rule == "first":
        assert (row["win_rate"], row["ties"], row["consistency"]) == (0.5, 3, 0.0)
    else:
        assert row["unparsed"] == 3 and math.isnan(row["win_rate"])


def test_parse_winner():
    from tunesmith.evaluation.metrics.judge import parse_winner

    assert parse_winner("A is clearer.\nWinner: B") == "B"
    assert parse_winner("**Winner:** a") == "A"
    assert parse_winner("winner: TIE") == "tie"
    assert parse_winner("Winner: A ... on reflection, Winner: B") == "B"
    assert parse_winner("I prefer the first.") is None


def test_eval_compare_reports_the_judges_win_rate(stories_dir, tmp_path, capsys):
    """`tunesmith eval A --compare B` with a judged generation task: results.json, the report and the console carry
    the head-to-head row, computed from the two models' own replies."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(str(stories_dir))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(other))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (stories_dir / name).exists():
            shutil.copy(stories_dir / name, other / name)
    judge = PairwiseJudge("longer")
    try:
        suite = write_suite(tmp_path, {"name": "h2h", "generation": {"max_new_tokens": 12}, "tasks": [
            {"name": "stories", "type": "generation", "data": STORIES_DATA, "max_samples": 3, "metrics": [],
             "judge": {"model": "j", "base_url": judge.url}}]})
        assert main(["eval", str(stories_dir), "--suite", str(suite), "--compare", str(other), "--template",
                     "alpaca_en", "--out", str(tmp_path / "out")]) == 0
    finally:
        judge.close()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["comparison"]["head_to_head"]
    tuned, base = (results[k]["tasks"]["stories"]["samples"] for k in ("tuned", "base"))
    expected = [1.0 if len(t["reply"]) > len(b["reply"]) else 0.5 if len(t["reply"]) == len(b["reply"]) else 0.0
                for t, b in zip(tuned, base)]
    assert [s["head_to_head"]["score"] for s in tuned] == expected
    assert row["win_rate"] == pytest.approx(sum(expected) / 3)
    assert len(judge.seen) == 3 + 3 + 6  # each model's replies graded alone, then both orders of each pair
    assert "Head to head (judge)" in (tmp_path / "out" / "report.md").read_text()
    assert "head to head on stories" in capsys.readouterr().err
