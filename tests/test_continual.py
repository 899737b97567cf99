"""Continual learning (`tunesmith continual`): the retention metrics, the pipeline file's errors, each stage's run
config per strategy, and real two-stage pipelines on stories260K (a few steps per stage)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunesmith.continual import retention_summary, run_pipeline, validate_pipeline
from tunesmith.continual.config import load_pipeline
from tunesmith.continual.stages import retain_section, split_stage_data, stage_run_config
from tunesmith.errors import ConfigError

NAMES = ["Mia", "Sam", "Sue", "Tom"]
THINGS = ["red", "blue", "big", "small", "green"]


# --- the retention metrics --------------------------------------------------------------------------------------

def test_retention_metrics_for_a_loss_against_a_hand_computation():
    matrix = [[3.0, 3.0, 3.0],
              [1.0, None, None],
              [1.5, 1.0, None],
              [2.0, 1.2, 0.5]]
    s = retention_summary(matrix, lower_is_better=True)
    assert s["average"] == pytest.approx((2.0 + 1.2 + 0.5) / 3)
    # BWT: mean of (score when learned - final score) for a loss: (1.0 - 2.0, 1.0 - 1.2) -> -0.6
    assert s["bwt"] == pytest.approx(-0.6)
    # forgetting: final minus the best (lowest) after it was learned, before the last stage
    assert s["forgetting"][0] == pytest.approx(1.0) and s["forgetting"][1] == pytest.approx(0.2)
    assert s["forgetting"][2] is None
    assert s["forgetting_rate"][:2] == pytest.approx([1.0, 0.2])
    assert s["average_per_stage"][1:] == pytest.approx([1.0, 1.25, (2.0 + 1.2 + 0.5) / 3])


def test_retention_metrics_for_an_accuracy_against_a_hand_computation():
    matrix = [[0.1, 0.1, 0.1],
              [0.9, None, None],
              [0.7, 0.8, None],
              [0.6, 0.85, 0.9]]
    s = retention_summary(matrix, lower_is_better=False)
    assert s["average"] == pytest.approx(2.35 / 3)
    assert s["bwt"] == pytest.approx(((0.6 - 0.9) + (0.85 - 0.8)) / 2)
    assert s["forgetting"][:2] == pytest.approx([0.9 - 0.6, 0.8 - 0.85])
    assert s["forgetting_rate"][0] == pytest.approx(0.3 / 0.9)


# --- the pipeline file --------------------------------------------------------------------------------------------

def write_tasks(folder):
    """Two small tasks a stories model can tell apart: what someone saw, and what someone ate."""
    saw = [{"instruction": f"Tell me what {n} saw.", "input": "", "output": f"{n} saw a {t} ball. {n} was happy."}
           for n in NAMES for t in THINGS]
    ate = [{"instruction": f"What did {n} eat?", "input": "", "output": f"{n} ate a {t} cake. It was good."}
           for n in NAMES for t in THINGS]
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("saw", saw), ("ate", ate)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "saw.jsonl", folder / "ate.jsonl"


def pipeline_raw(model_dir, data_dir, out, strategy="sequential", **training):
    saw, ate = write_tasks(data_dir)
    return {
        "output_dir": str(out),
        "base": {"model": {"name_or_path": str(model_dir), "dtype": "float32"},
                 "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                 "data": {"template": "alpaca_en", "max_length": 128},
                 "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1,
                              "save_steps": 2, "warmup_ratio": 0.0, "tensorboard": False,
                              "lr_scheduler": "constant", **training},
                 # one thread: on a busy two-core machine two threads made a 3-step stage 10x slower
                 "speed": {"cpu_threads": 1}},
        "strategy": strategy,
        "stages": [{"name": "saw", "data": [{"path": str(saw)}], "heldout": 4},
                   {"name": "ate", "data": [{"path": str(ate)}], "heldout": 4}],
    }


REPLAY = {"name": "replay", "ratio": 0.2}


@pytest.mark.parametrize("strategy, change, field", [
    (REPLAY, lambda raw: raw["strategy"].update(ratio=1.5), "strategy.replay.ratio"),
    (REPLAY, lambda raw: raw["stages"][0].update(dta=[]), "stages.0.dta"),
    (REPLAY, lambda raw: raw["stages"][1].update(name="saw"), "repeated: saw"),
    (REPLAY, lambda raw: raw["stages"][1].update(name="a/b"), "stages.1.name"),
    (REPLAY, lambda raw: raw["base"]["training"].update(output_dir="x"), "base.training.output_dir"),
    (REPLAY, lambda raw: raw["base"]["data"].update(train=[]), "base.data.train"),
    (REPLAY, lambda raw: raw["base"]["training"].update(learnin_rate=1), "training.learnin_rate"),
    (REPLAY, lambda raw: raw["stages"][1].update(training={"max_step": 2}), "stages[1] (ate)"),
    (REPLAY, lambda raw: raw.update(strategy={"name": "forget_nothing"}), "strategy"),
    (REPLAY, lambda raw: raw["base"].update(method={"name": "houlsby"}), "base.method"),
    ({"name": "progressive_lora"}, lambda raw: raw["base"]["method"].update(name="dora"), "base.method"),
    ({"name": "merge", "parameters": {"densty": 0.5}}, lambda raw: None, "strategy.parameters.densty"),
])
def test_a_bad_pipeline_file_is_a_config_error_naming_file_and_field(stories_dir, tmp_path, strategy, change,
                                                                    field):
    import yaml

    raw = pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out", strategy=dict(strategy))
    change(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    assert str(path) in str(error.value) and field in str(error.value)


# --- each stage's run config --------------------------------------------------------------------------------------

def splits(cfg, folder):
    return [split_stage_data(stage, i, folder / stage.name, cfg.seed) for i, stage in enumerate(cfg.stages)]


def test_the_held_out_split_is_never_trained_on_and_stays_the_same(stories_dir, tmp_path):
    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out"))
    first, again = splits(cfg, tmp_path / "a"), splits(cfg, tmp_path / "b")
    for one, two in zip(first, again):
        held = one.eval_file.read_text().splitlines()
        trained = one.train[0][0].read_text().splitlines()
        assert len(held) == 4 and len(trained) == 16 and not set(held) & set(trained)
        assert held == two.eval_file.read_text().splitlines()


def test_replay_mixes_the_earlier_stages_data_at_its_ratio(stories_dir, tmp_path):
    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out",
                                         strategy={"name": "replay", "ratio": 0.2}))
    data = splits(cfg, tmp_path / "split")
    second = stage_run_config(cfg, 1, data, start_model=str(stories_dir), output_dir=tmp_path / "run")
    paths = [spec.path for spec in second.data.train]
    assert paths == [str(data[1].train[0][0]), str(data[0].train[0][0])]
    assert [spec.weight for spec in second.data.train] == pytest.approx([0.8, 0.2])
    assert second.data.num_samples == 20  # all 16 samples of the stage, and 4 replayed (20%)
    first = stage_run_config(cfg, 0, data, start_model=str(stories_dir), output_dir=tmp_path / "run")
    assert [spec.path for spec in first.data.train] == [str(data[0].train[0][0])] and not first.data.num_samples


def test_retain_strategies_write_the_agreed_retain_section(stories_dir, tmp_path):
    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out"))
    data = splits(cfg, tmp_path / "split")
    earlier = [{"path": str(data[0].train[0][0]), "format": "openai"}]

    def section(strategy):
        return retain_section(cfg.model_copy(update={"strategy": strategy}), data[:1])

    from tunesmith.continual.config import EWC, KD, L2SP

    assert section(L2SP(name="l2sp", weight=0.5)) == {"l2sp": {"weight": 0.5}}
    assert section(EWC(name="ewc", weight=2.0, samples=16)) == {"ewc": {"weight": 2.0, "data": earlier,
                                                                        "samples": 16}}
    assert section(KD(name="kd", weight=0.3, on="both", replay_ratio=0.1)) == {
        "kd": {"weight": 0.3, "temperature": 2.0, "on": "both"}, "replay": {"data": earlier, "ratio": 0.1}}
    assert retain_section(cfg.model_copy(update={"strategy": L2SP(name="l2sp", weight=0.5)}), []) is None


@pytest.mark.parametrize("strategy", [{"name": "l2sp", "weight": 0.1}, {"name": "ewc", "weight": 1.0},
                                      {"name": "kd", "weight": 0.5, "on": "both"}])
def test_retain_strategies_give_valid_stage_configs(stories_dir, tmp_path, strategy):
    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out", strategy=strategy))
    second = stage_run_config(cfg, 1, splits(cfg, tmp_path / "split"), start_model=str(stories_dir),
                              output_dir=tmp_path / "run")
    assert second.retain is not None


# --- real pipelines -----------------------------------------------------------------------------------------------

def independent_score(model_ref, eval_file):
    """A task's response loss computed here from the saved model, without the pipeline's evaluation path."""
    from tunesmith.data.templates.registry import get_template
    from tunesmith.evaluation.data import load_conversations
    from tunesmith.evaluation.metrics.perplexity import conversation_examples, score_examples
    from tunesmith.models.loading import load_for_inference

    loaded = load_for_inference(str(model_ref), dtype="float32", template="alpaca_en")
    examples = conversation_examples(loaded.tokenizer, get_template("alpaca_en", loaded.tokenizer),
                                     load_conversations(str(eval_file)), 128)
    return score_examples(loaded.model, examples, pad_id=loaded.tokenizer.pad_token_id or 0)["loss"]


def assert_same_matrix(matrix, expected, rel=1e-5):
    assert len(matrix) == len(expected)
    for row, want in zip(matrix, expected):
        assert [v is None for v in row] == [v is None for v in want]
        assert [v for v in row if v is not None] == pytest.approx([v for v in want if v is not None], rel=rel)


@pytest.fixture(scope="module")
def sequential_run(stories_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequential")
    return tmp, run_pipeline(validate_pipeline(pipeline_raw(stories_dir, tmp / "data", tmp / "out")))


@pytest.mark.slow
def test_the_retention_matrix_comes_from_real_evaluations_of_the_saved_models(sequential_run, stories_dir):
    tmp, result = sequential_run
    out = result.folder
    evals = {task: out / "data" / task / "eval.jsonl" for task in ("saw", "ate")}
    stage1, stage2 = out / "stages" / "1-saw", out / "stages" / "2-ate"
    expected = [[independent_score(stories_dir, evals["saw"]), independent_score(stories_dir, evals["ate"])],
                [independent_score(stage1, evals["saw"]), None],
                [independent_score(stage2, evals["saw"]), independent_score(stage2, evals["ate"])]]
    assert_same_matrix(result.matrix, expected)
    assert result.matrix[1][0] < result.matrix[0][0] and result.matrix[2][1] < result.matrix[0][1]  # it learned
    # stage 2 started from stage 1's result: its adapter folded into the weights
    meta = json.loads((stage2 / "tunesmith_run.json").read_text())
    assert meta["base_model"]["name_or_path"] == str(out / "models" / "start-2")
    assert independent_score(out / "models" / "start-2", evals["saw"]) == pytest.approx(result.matrix[1][0], rel=1e-4)
    saved = json.loads((out / "retention.json").read_text())
    assert saved["matrix"] == result.matrix and saved["bwt"] == pytest.approx(result.matrix[1][0] - result.matrix[2][0])
    assert (out / "retention.png").stat().st_size > 1000 and "| after ate |" in (out / "README.md").read_text()


@pytest.mark.slow
def test_resuming_a_stage_whose_config_changed_is_refused(sequential_run, stories_dir):
    tmp, result = sequential_run
    changed = pipeline_raw(stories_dir, tmp / "data", tmp / "out", learning_rate=1e-3)
    with pytest.raises(ConfigError, match="stage saw was trained with another config"):
        run_pipeline(validate_pipeline(changed), resume=True)


class KillInStage(TrainerCallback):
    """The process dies at `step` of the stage whose run folder ends with `stage`."""

    def __init__(self, stage, step):
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.stage in str(args.output_dir) and state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_a_killed_pipeline_resumes_without_retraining_and_ends_with_the_same_matrix(sequential_run, stories_dir,
                                                                                    tmp_path):
    _, straight = sequential_run
    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, extra_callbacks=[KillInStage("2-ate", 3)])
    stage1, stage2 = tmp_path / "out" / "stages" / "1-saw", tmp_path / "out" / "stages" / "2-ate"
    assert (stage2 / "checkpoints" / "checkpoint-2").is_dir() and not (stage2 / "tunesmith_run.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in stage1.iterdir()}

    resumed = run_pipeline(cfg, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in stage1.iterdir()} == before  # stage 1 was not trained again
    assert "resuming from" in (stage2 / "train.log").read_text() and "checkpoint-2" in (stage2 / "train.log").read_text()
    assert_same_matrix(resumed.matrix, straight.matrix)
    run_pipeline(cfg, resume=True)  # a finished pipeline resumed: nothing trains, nothing changes
    assert {p.name: p.stat().st_mtime_ns for p in stage1.iterdir()} == before


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class WatchStage2(TrainerCallback):
    """At the start of stage 2: the stage-1 adapter's bytes and the names of the parameters that train."""

    def __init__(self, stage1):
        self.stage1, self.seen = stage1, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if "2-ate" in str(args.output_dir):
            self.seen["stage1"] = digest(self.stage1 / "adapter_model.safetensors")
            self.seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.slow
def test_progressive_lora_keeps_earlier_adapters_and_its_stack_loads_with_plain_peft(stories_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out",
                                         strategy={"name": "progressive_lora", "fold": True}))
    out = tmp_path / "out"
    watch = WatchStage2(out / "stages" / "1-saw")
    result = run_pipeline(cfg, extra_callbacks=[watch])
    stage1, stage2 = out / "stages" / "1-saw", out / "stages" / "2-ate"
    # the earlier adapter is untouched by stage 2, and stage 2 trains one new adapter only
    assert digest(stage1 / "adapter_model.safetensors") == watch.seen["stage1"]
    assert digest(out / "progressive" / "adapters" / "1-saw" / "adapter_model.safetensors") == watch.seen["stage1"]
    assert watch.seen["trainable"] and all(".lora_" in n and ".default." in n for n in watch.seen["trainable"])
    assert len(watch.seen["trainable"]) == len(load_file(stage2 / "adapter_model.safetensors"))
    # the stack holds both adapters' factors side by side
    final = out / "progressive" / "after-2"
    assert result.final_model == str(final)
    stacked, one, two = (load_file(f / "adapter_model.safetensors") for f in (final, stage1, stage2))
    for key, a in one.items():
        if "lora_A" in key:
            assert torch.equal(stacked[key][:8], a) and torch.equal(stacked[key][8:], two[key])
    # plain PEFT on the untouched base gives the model stage 2 trained (stage 1 folded in, plus its adapter)
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(final)).eval()
    ids = torch.tensor([[1, 400, 300, 200, 100, 50]])
    from tunesmith.models.loading import load_for_inference

    trained = load_for_inference(str(stage2), dtype="float32").model
    folded = AutoModelForCausalLM.from_pretrained(out / "progressive" / "folded").eval()  # fold: true
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, trained(ids).logits, atol=1e-4)
        assert torch.allclose(folded(ids).logits, trained(ids).logits, atol=1e-4)
    assert result.matrix[2][0] == pytest.approx(independent_score(final, out / "data" / "saw" / "eval.jsonl"),
                                                rel=1e-5)


@pytest.mark.slow
def test_the_merge_strategy_trains_each_stage_from_the_base_and_merges_them(stories_dir, tmp_path):
    import yaml
    from transformers import AutoModelForCausalLM

    from tunesmith.cli.main import main

    raw = pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out",
                       strategy={"name": "merge", "method": "ties", "density": 0.5})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["continual", str(path)]) == 0
    out = tmp_path / "out"
    for stage in ("1-saw", "2-ate"):  # each trained apart from the base
        meta = json.loads((out / "stages" / stage / "tunesmith_run.json").read_text())
        assert meta["base_model"]["name_or_path"] == str(stories_dir)
    merged = out / "merged" / "after-2"
    provenance = json.loads((merged / "tunesmith_merge.json").read_text())["tunesmith_merge"]
    assert provenance["method"] == "ties" and len(provenance["models"]) == 2
    model = AutoModelForCausalLM.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, base.state_dict()[n].float())]
    assert any("q_proj" in n for n in changed)
    saved = json.loads((out / "retention.json").read_text())
    assert saved["final_model"] == str(merged) and all(math.isfinite(v) for v in saved["matrix"][2])


def test_the_example_pipeline_validates():
    from pathlib import Path

    cfg = load_pipeline(Path(__file__).parent.parent / "examples" / "continual.yaml")
    assert [stage.name for stage in cfg.stages] == ["english", "chinese", "persona"]


def test_the_command_reports_a_bad_pipeline_file_and_exits_2(stories_dir, tmp_path, capsys):
    import yaml

    from tunesmith.cli.main import main

    raw = pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out", strategy={"name": "replay", "ratio": 2})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["continual", str(path)]) == 2
    assert "strategy.replay.ratio" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_replay_trains_stage_two_on_all_its_data_and_a_share_of_stage_ones(stories_dir, tmp_path):
    result = run_pipeline(validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out",
                                                         strategy={"name": "replay", "ratio": 0.2})))
    meta = json.loads((result.folder / "stages" / "2-ate" / "tunesmith_run.json").read_text())
    drawn = {d["path"].split("/data/")[-1]: d["train"] for d in meta["data"]["datasets"]}
    assert drawn == {"ate/train-0.jsonl": 16, "saw/train-0.jsonl": 4} and meta["data"]["train_samples"] == 20
    assert all(v is not None for v in result.matrix[2])


def test_a_folder_that_is_not_a_pipeline_is_refused(stories_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("mine")
    with pytest.raises(ConfigError, match="not a pipeline folder"):
        run_pipeline(validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out")))
    assert (tmp_path / "out" / "README.md").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [{"name": "l2sp", "weight": 0.5}, {"name": "ewc", "weight": 10.0, "samples": 8},
                                      {"name": "kd", "weight": 0.5, "on": "both"}])
def test_retain_strategies_pull_stage_two_toward_stage_one(stories_dir, tmp_path, strategy):
    import yaml

    result = run_pipeline(validate_pipeline(pipeline_raw(stories_dir, tmp_path / "data", tmp_path / "out",
                                                         strategy=strategy)))
    stages = result.folder / "stages"

    def terms(stage):
        return {key for line in (stages / stage / "metrics.jsonl").read_text().splitlines()
                for key in json.loads(line)}

    term = f"loss_{strategy['name']}"
    assert term not in terms("1-saw") and term in terms("2-ate")  # the first stage has nothing earlier to keep
    second = yaml.safe_load((stages / "2-ate" / "config.yaml").read_text())
    # θ₀ / the teacher / the Fisher's model is the model the run starts from: stage 1 folded into the weights
    assert second["model"]["name_or_path"] == str(result.folder / "models" / "start-2")
    assert second["retain"][strategy["name"]]["weight"] == strategy["weight"]
    assert all(v is not None for v in result.matrix[2])
