"""The UI's handlers without a browser: the Build form's YAML is what `tunesmith train` reads and its messages are
the command line's; the plan; run folders read back (progress, status, the list); stop; who may open the UI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tunesmith.cli.main import main
from tunesmith.config.loading import load_config
from tunesmith.errors import ConfigError
from tunesmith.ui import build, plan, runs, use
from tunesmith.ui.access import access_token, is_loopback, password_check

from .conftest import EXAMPLES

STORIES_DATA = str(EXAMPLES / "data" / "stories_chat.jsonl")


def stories_form(stories_dir, out, **changes):
    return {**build.FORM_DEFAULTS, "model_path": str(stories_dir), "data_files": STORIES_DATA,
            "template": "alpaca_en", "max_length": 64, "output_dir": str(out), "max_steps": 6, "logging_steps": 1,
            "save_steps": 3, "learning_rate": 0.005, "r": 8, "cpu_kernels": "off", **changes}


def test_form_writes_the_yaml_that_train_reads(stories_dir, tmp_path):
    path = tmp_path / "run.yaml"
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out"), "", str(path))
    cfg, message = build.validate(text, str(path))
    assert message == f"valid: `tunesmith train {path}` accepts this config"
    path.write_text(text)
    assert load_config(path) == cfg  # the command line reads the saved file to the same config
    assert (cfg.method.name, cfg.method.r, cfg.data.template, cfg.data.max_length) == ("lora", 8, "alpaca_en", 64)
    assert (cfg.training.max_steps, cfg.training.learning_rate, cfg.speed.cpu_kernels) == (6, 0.005, "off")
    assert "learning_rate" not in yaml.safe_load(build.form_yaml(stories_form(stories_dir, "o", learning_rate=0),
                                                                 "", "x.yaml"))["training"]  # 0: derived


def test_form_keeps_the_keys_it_does_not_own_and_loads_back(stories_dir, tmp_path):
    path = str(tmp_path / "run.yaml")
    form = stories_form(stories_dir, tmp_path / "out")
    hand_edited = yaml.safe_load(build.form_yaml(form, "", path))
    hand_edited["eval"] = {"max_length": 256}
    hand_edited["method"]["bias"] = "lora_only"
    text = build.form_yaml({**form, "batch_size": 2}, yaml.safe_dump(hand_edited), path)
    raw = yaml.safe_load(text)
    assert raw["eval"] == {"max_length": 256} and raw["method"]["bias"] == "lora_only"
    assert raw["training"]["batch_size"] == 2
    # Another method: the old one's options go (they would be unknown keys there); the form's that it has stay.
    assert yaml.safe_load(build.form_yaml({**form, "method": "ia3"}, text, path))["method"] == {
        "name": "ia3", "target_modules": "all-linear"}
    assert build.save(text, path) == f"saved {path}"
    loaded_text, values, message = build.load(path)
    assert (loaded_text, message) == (text, f"loaded {path}")
    assert {k: values[k] for k in form} == {**form, "batch_size": 2, "model_path": str(stories_dir), "data_files": STORIES_DATA,
                                             "output_dir": str(tmp_path / "out"), "method_extra": "bias: lora_only"}


def cli_error(capsys, path) -> str:
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("change", [{"batch_size": 0}, {"max_length": 4}, {"lr_scheduler": "steep"}])
def test_a_bad_field_reads_as_the_command_line_says_it(stories_dir, tmp_path, capsys, change):
    path = tmp_path / "bad.yaml"
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out", **change), "", str(path))
    cfg, message = build.validate(text, str(path))
    assert cfg is None and "(line " in message
    path.write_text(text)
    assert " ".join(message.split()) == cli_error(capsys, path)


def test_bad_yaml_and_missing_paths_are_named(stories_dir, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    text = "model:\n  name_or_path: [unclosed\n"
    path.write_text(text)
    assert " ".join(build.validate(text, str(path))[1].split()) == cli_error(capsys, path)
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out", data_files=str(tmp_path / "gone.jsonl")),
                           "", str(path))
    assert build.validate(text, str(path))[1] == (f"error: {path}: data.train.0.path: data file "
                                                  f"{tmp_path / 'gone.jsonl'} does not exist")
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out", model_path="./no-such-model"), "", str(path))
    assert "model path ./no-such-model does not exist" in build.validate(text, str(path))[1]
    assert build.save(text, str(path)).startswith("error:")  # nothing invalid is saved
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        build.form_to_config({**build.FORM_DEFAULTS, "method_extra": "- a list"})


def test_preview_marks_the_trained_tokens(stories_dir, tmp_path):
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out"), "", "run.yaml")
    page = build.preview_html(text, "run.yaml", num=1)
    assert "### Response:\n<mark>" in page and "line 1): " in page


def test_the_doctor_reports_findings_per_file(stories_dir, tmp_path):
    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out"), "", "run.yaml")
    rows, summary = build.doctor_rows(text, "run.yaml")
    assert summary.startswith("stories_chat.jsonl: 64 records")
    assert ["stories_chat.jsonl", "warning", "duplicates.conflicting", "line 2",
            "same prompt as line 1 with a different reply"] in rows


def test_plan_shows_the_planners_peak_and_says_when_it_does_not_fit(stories_dir, tmp_path):
    from tunesmith import api
    from tunesmith.planning.units import human

    text = build.form_yaml(stories_form(stories_dir, tmp_path / "out"), "", "run.yaml")
    expected = api.plan(yaml.safe_load(text), device="cpu")
    shown = plan.plan_markdown(text, "run.yaml", device="cpu", budget=2**40)
    assert f"| **predicted peak** ({expected.peak_phase}) | **{human(expected.peak)}** |" in shown
    assert f"**fits**: predicted peak {human(expected.peak)}, the budget 1024.00 GiB" in shown
    tight = plan.plan_markdown(text, "run.yaml", device="cpu", budget=2**20)
    assert "**does not fit**" in tight and "nothing fits 1 MiB" in tight
    assert plan.plan_markdown("model: {}", "run.yaml").startswith("```\nerror: run.yaml: invalid configuration")


def write_run(folder, losses, *, max_steps=10, state=None, finished=False):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"training": {"max_steps": max_steps}}))
    lines = [json.dumps({"step": i + 1, "loss": loss}) for i, loss in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "lo')  # a line cut off by a kill
    if state is not None:
        (folder / runs.STATE_FILE).write_text(json.dumps(state))
    if finished:
        (folder / runs.RUN_META).write_text("{}")


def test_progress_status_and_the_list_of_runs_come_from_the_run_folders(tmp_path):
    dead = {"pid": 2**22 + 7, "command": ["python", "-m", "tunesmith.cli.main", "train", "c.yaml"], "started": 1.0}
    write_run(tmp_path / "a", [3.0, 2.5, 2.0], state=dead)
    write_run(tmp_path / "b", [3.0, 1.0], state={**dead, "stopped": 2.0})
    write_run(tmp_path / "c", [2.0] * 10, finished=True)
    (tmp_path / "not-a-run").mkdir()
    assert runs.progress(tmp_path / "a").line() == "failed · step 3 of 10 · loss points: 3 · last loss 2.0000"
    assert runs.status(tmp_path / "b")["status"] == "stopped"
    assert runs.status(tmp_path / "c")["status"] == "finished"
    assert runs.status(tmp_path / "not-a-run") == {"status": "not started"}
    rows = runs.run_rows(tmp_path)
    assert sorted(row[:4] for row in rows) == [[str(tmp_path / "a"), "failed", "3/10", "2.0000"],
                                               [str(tmp_path / "b"), "stopped", "2/10", "1.0000"],
                                               [str(tmp_path / "c"), "finished", "10/10", "2.0000"]]


def test_the_curve_doctor_reads_the_logged_metrics():
    records = [{"step": i, "loss": 2.0 - 0.01 * i, "grad_norm": 1.0} for i in range(1, 30)]
    records[20]["loss"] = 40.0
    findings = runs.curve_findings(records)
    assert any(row[0] in ("warning", "error") and row[1] == "21" for row in findings)
    assert runs.curve_findings(records[:3]) == []


def test_stop_terminates_the_runs_process_group_and_is_remembered(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(60)", "train", "c.yaml"]
    process = subprocess.Popen(command, start_new_session=True)
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / runs.STATE_FILE).write_text(json.dumps({"pid": process.pid, "command": command,
                                                          "started": time.time()}))
        assert runs.status(folder)["status"] == "running"
        with pytest.raises(ConfigError, match="already training"):
            runs.launch("c.yaml", str(folder))
        assert runs.stop(folder).startswith(f"stopped {folder}")
        assert process.wait(timeout=10) == -signal.SIGTERM
        assert runs.status(folder)["status"] == "stopped"
        assert runs.stop(folder) == f"{folder} is not training (stopped)"
    finally:
        process.kill()


def test_use_refuses_what_is_not_a_finished_run(tmp_path):
    (tmp_path / "half").mkdir()
    for run, expected in (("", "choose a run"), (str(tmp_path / "nope"), "is not a folder"),
                          (str(tmp_path / "half"), "holds no finished run")):
        assert expected in use.guarded(use.chat, run, "hi", [], [])[1]
    assert use.guarded(use.chat, str(tmp_path / "half"), "  ", [], [])[1] == "error: message: type a message"


def test_a_wider_host_needs_a_token(monkeypatch, capsys):
    monkeypatch.delenv("TUNESMITH_UI_TOKEN", raising=False)
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "example.org"))
    assert access_token("127.0.0.1", None) is None
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: --host: --host 0.0.0.0 opens the UI beyond this machine, and it needs an access token" in err
    assert "hint: pass --token SECRET (or set TUNESMITH_UI_TOKEN)" in err
    assert access_token("0.0.0.0", "s3cret") == "s3cret"
    monkeypatch.setenv("TUNESMITH_UI_TOKEN", "from-env")
    assert access_token("0.0.0.0", None) == "from-env"
    with pytest.raises(ConfigError, match="empty"):
        access_token("0.0.0.0", " ")
    check = password_check("s3cret")
    assert check("anyone", "s3cret") and not check("anyone", "s3cre") and not check("anyone", "")


@pytest.mark.slow
def test_a_stopped_run_resumes_from_its_checkpoint(stories_dir, tmp_path, monkeypatch):
    """Launched detached as the UI does, stopped with SIGTERM part way, resumed to the end."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")]))
    text = build.form_yaml(stories_form(stories_dir, "runs/r", max_steps=16, save_steps=4), "", "run.yaml")
    assert build.save(text, "run.yaml") == "saved run.yaml"

    def wait(condition, what, timeout=180):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}; console:\n{runs.console_tail('runs/r')}"
            time.sleep(0.5)

    runs.launch("run.yaml", "runs/r")
    wait(lambda: runs.progress("runs/r").step >= 6, "no step 6")
    assert runs.stop("runs/r").startswith("stopped")
    stopped_at = runs.progress("runs/r")
    assert stopped_at.status == "stopped" and stopped_at.step < 16
    runs.launch("run.yaml", "runs/r", resume=True)
    wait(lambda: runs.status("runs/r")["status"] != "running", "the resumed run did not end")
    done = runs.progress("runs/r")
    assert done.line().startswith("finished · step 16 of 16 · loss points: 16")
    assert "resuming from runs/r/checkpoints/checkpoint-" in runs.console_tail("runs/r", 200)
    assert [r["step"] for r in done.records if "loss" in r] == list(range(1, 17))


@pytest.mark.slow
def test_with_a_token_the_server_asks_for_it():
    """Gradio's login guards every route: nothing without the token, everything with it (any user name)."""
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    pytest.importorskip("gradio", reason="the ui extra: pip install 'tunesmith[ui]'")
    from tunesmith.ui.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = serve(host="127.0.0.1", port=port, token="s3cret", block=False)

    def request(path, form=None, cookie=None):
        req = urllib.request.Request(url.rstrip("/") + path, data=urllib.parse.urlencode(form).encode()
                                     if form else None, headers={"Cookie": cookie} if cookie else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.headers.get_all("set-cookie") or []
        except urllib.error.HTTPError as exc:
            return exc.code, []

    try:
        assert request("/config")[0] == 401
        assert request("/login", {"username": "anyone", "password": "wrong"})[0] == 400
        status, cookies = request("/login", {"username": "anyone", "password": "s3cret"})
        assert status == 200 and cookies
        assert request("/config", cookie="; ".join(c.split(";")[0] for c in cookies))[0] == 200
    finally:
        app.close()


@pytest.mark.slow
def test_the_use_tab_generates_evaluates_and_exports_a_run(stories_dir, tmp_path):
    from tunesmith import api

    api.train(build.form_to_config(stories_form(stories_dir, tmp_path / "run", max_steps=4)))
    run = str(tmp_path / "run")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me what Mia saw.\nTell me what Tom saw.\n")
    message, rows = use.batch_generate(run, str(prompts), str(tmp_path / "answers.jsonl"), max_new_tokens=8)
    assert message == f"wrote 2 responses to {tmp_path / 'answers.jsonl'}"
    assert [row[0] for row in rows] == ["Tell me what Mia saw.", "Tell me what Tom saw."] and all(r[1] for r in rows)
    eval_suite = tmp_path / "suite.yaml"
    eval_suite.write_text(yaml.safe_dump({"name": "mini", "generation": {"max_new_tokens": 8, "batch_size": 4},
                                          "tasks": [{"name": "stories", "type": "generation", "data": STORIES_DATA,
                                                     "max_samples": 4, "metrics": ["rouge_l"]}]}))
    report = use.evaluate(run, str(eval_suite), compare_base=True)
    assert report.startswith(f"report: {tmp_path / 'run' / 'eval' / 'mini' / 'report.md'}")
    assert "| task | metric | base: stories260K | tuned: run | change |" in report  # before/after
    assert use.export(run, str(tmp_path / "merged")).startswith(f"exported {tmp_path / 'merged'}")
    assert (tmp_path / "merged" / "config.json").exists()
    assert "is not a folder" in use.guarded(use.export, str(tmp_path / "nope"), str(tmp_path / "x"))[1]
    # Merge, then its evaluation: the merged model scored against each source.
    merge_config = tmp_path / "merge.yaml"
    merge_config.write_text(yaml.safe_dump({"method": "linear", "dtype": "float32", "output": str(tmp_path / "mix"),
                                            "models": [{"model": str(tmp_path / "merged"), "weight": 0.5},
                                                       {"model": str(stories_dir), "weight": 0.5}]}))
    suite = tmp_path / "merge_eval.yaml"
    suite.write_text(yaml.safe_dump({"metric": "loss", "max_samples": 8, "max_length": 64, "min_retention": 0.1,
                                     "tasks": [{"name": "stories", "path": STORIES_DATA, "template": "alpaca_en",
                                                "source": str(tmp_path / "merged")}]}))
    shown = use.merge(str(merge_config), str(suite))
    assert shown.startswith(f"merged → {tmp_path / 'mix'}") and "| merged retention |" in shown
    assert (tmp_path / "mix" / "merge_eval.json").exists()
