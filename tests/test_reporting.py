"""Library code does not print: a run called from Python is silent, and what it would have said is in its train.log;
the CLI's console reporter shows the user's lines, and --verbose the internal ones."""

from __future__ import annotations

from tunesmith.cli.main import main
from tunesmith.recipes import train

from .conftest import RecordingReporter, run_log
from .test_training import make_config


def test_a_run_from_python_prints_nothing_of_its_own(stories_dir, tmp_path, capfd):
    run = tmp_path / "run"
    train(make_config(stories_dir, run, max_steps=1))
    out, err = capfd.readouterr()
    for line in ("trainable parameters", "pre-flight", "speed plan", "saved"):
        assert line not in out + err, line
        assert line in run_log(run), line


def test_the_reporter_gets_the_users_lines_and_the_log_keeps_the_internal_ones(stories_dir, tmp_path):
    run, reporter = tmp_path / "run", RecordingReporter()
    train(make_config(stories_dir, run, max_steps=1), reporter=reporter)
    told = reporter.text()
    assert "trainable parameters" in told and "pre-flight: predicted peak" in told and f"saved {run}" in told
    assert "speed plan" not in told and "speed plan: loss = chunked" in run_log(run)


def test_verbose_shows_the_internal_choices_on_the_console(stories_dir, tmp_path, capfd):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_config(stories_dir, tmp_path / "run", max_steps=1).model_dump(mode="json")))
    assert main(["train", str(config)]) == 0
    quiet = capfd.readouterr().err
    assert "trainable parameters" in quiet and "speed plan" not in quiet
    assert main(["train", str(config), "--verbose"]) == 0
    assert "speed plan: loss = chunked" in capfd.readouterr().err
