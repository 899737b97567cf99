"""`training.report_to`: MLflow (a real local tracking store, read back) and W&B (offline) receive the run's
parameters, every metric of metrics.jsonl step by step, and its config, loss plot and model card."""

from __future__ import annotations

import json

import pytest

import tunesmith
from tunesmith.errors import ConfigError

from .test_api import stories_config


def tracked_config(stories_dir, tmp_path, report_to, **tracking):
    raw = stories_config(stories_dir, tmp_path / "run")
    del raw["training"]["tensorboard"]
    raw["training"].update(report_to=report_to, tracking=tracking)
    return raw


def logged_metrics(run_dir) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {metric: {step: value}}, the numbers the Trainer logged."""
    metrics: dict[str, dict[int, float]] = {}
    for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        for key, value in row.items():
            if key not in ("step", "epoch", "tokens"):
                metrics.setdefault(key, {})[row["step"]] = value
    return metrics


def test_trackers_default_to_tensorboard_and_the_old_key_still_works(stories_dir, tmp_path):
    raw = stories_config(stories_dir, tmp_path / "run")
    del raw["training"]["tensorboard"]
    assert tunesmith.load_config(raw).training.trackers() == ["tensorboard"]
    assert tunesmith.load_config(raw, {"training.tensorboard": False}).training.trackers() == []
    assert tunesmith.load_config(raw, {"training.report_to": []}).training.trackers() == []
    assert tunesmith.load_config(raw, {"training.report_to": ["mlflow"]}).training.trackers() == ["mlflow"]
    resolved = tunesmith.load_config(raw, {"training.report_to": ["mlflow"]})
    assert tunesmith.load_config(resolved.model_dump(mode="json")) == resolved  # a run's config.yaml reads back
    assert tunesmith.load_config(resolved, {"training.max_steps": 5}).training.trackers() == ["mlflow"]
    with pytest.raises(ConfigError, match=r"training\.tensorboard.*contradicts"):
        tunesmith.load_config(raw, {"training.report_to": ["mlflow"], "training.tensorboard": True})
    with pytest.raises(ConfigError, match=r"training\.report_to\.0"):
        tunesmith.load_config(raw, {"training.report_to": ["comet"]})
    with pytest.raises(ConfigError, match=r"training\.tracking\.experimnt: unknown key"):
        tunesmith.load_config(raw, {"training.tracking.experimnt": "x"})


def test_a_tracker_that_is_not_installed_is_a_config_error_with_the_pip_command(stories_dir, tmp_path,
                                                                                  monkeypatch):
    import tunesmith.training.tracking as tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match="wandb package is not installed") as error:
        tunesmith.train(tracked_config(stories_dir, tmp_path, ["wandb"]))
    assert error.value.where.endswith("training.report_to") and "pip install wandb" in error.value.hint
    assert not (tmp_path / "run" / "train.log").exists()  # failed before the run began


def test_mlflow_gets_params_every_metric_and_the_run_folder_artifacts(stories_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow keeps a sqlite store's artifacts under ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = tunesmith.train(tracked_config(stories_dir, tmp_path, ["mlflow", "tensorboard"], experiment="stories",
                                            run_name="lora-r4", mlflow_tracking_uri=uri))
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))  # beside MLflow, as before
    assert mlflow.active_run() is None  # the run tunesmith started was ended
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("stories")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "lora-r4" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.005" and params["method.r"] == "4" and params["max_steps"] == "3"
    expected = logged_metrics(result.run_dir)
    assert {"loss", "grad_norm", "learning_rate"} <= set(expected)
    for name, by_step in expected.items():
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert history == pytest.approx(by_step), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss.png", "README.md"} <= artifacts
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert open(config).read() == (result.run_dir / "config.yaml").read_text()


def wandb_records(path):
    """The records of an offline W&B run file: a LevelDB-style log (7-byte file header, 32 KiB blocks, each chunk
    with a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST), each record a `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_every_metric(stories_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = tunesmith.train(tracked_config(stories_dir, tmp_path, ["wandb"], experiment="stories"))
    [folder] = (result.run_dir / "wandb").glob("offline-run-*")
    history: dict[int, dict] = {}  # step -> {metric: value}
    summary, files = {}, set()
    for record in wandb_records(next(folder.glob("*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row["train/global_step"], {}).update(
                {key.removeprefix("train/"): value for key, value in row.items() if key.startswith("train/")})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind == "files":
            files.update(file.path for file in record.files.files)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    *steps, final = rows
    assert len(steps) == 3 and all("loss" in row for row in steps)
    # transformers' WandbCallback keeps these in the run summary (their latest value), not in the step history.
    totals = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
    for row in steps:  # every other metric of every step, at its step
        logged = {k: v for k, v in row.items() if k not in ("step", "epoch", "tokens", *totals)}
        assert {"loss", "grad_norm", "learning_rate", "train_tokens_per_second"} <= set(logged)
        assert {k: history[row["step"]][k] for k in logged} == pytest.approx(logged), row["step"]
    assert {k: summary[k] for k in totals} == pytest.approx({k: final[k] for k in totals})
    assert {"config.yaml", "loss.png", "README.md"} <= files
