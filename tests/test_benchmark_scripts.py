"""The speed benchmarks end to end on tiny shapes, so a script does not rot between the sessions that run it for real
(the GPU one runs only when a GPU is lent). No timing is asserted: only that every contender trains and reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_sft_throughput_trains_and_scores_every_contender(tmp_path, stories_dir):
    output = _run(str(BENCHMARKS / "sft_throughput.py"), "--model", str(stories_dir), "--steps", "4", "--warmup", "1",
                  "--samples", "16", "--eval-samples", "4", "--max-length", "128",
                  "--only", "reference,trl,tunesmith,tunesmith-packed", "--plot", str(tmp_path / "curves.png"),
                  cwd=tmp_path)
    assert " failed: " not in output, output[-3000:]  # how the script reports a contender that did not train
    for label in ("(a) reference", "(b) TRL SFTTrainer", "(d) tunesmith, defaults", "(h) tunesmith, packing"):
        row = next((line for line in output.splitlines() if label in line and "│" in line), None)
        assert row is not None, f"no row for {label}:\n{output[-3000:]}"
        cells = [cell.strip() for cell in row.split("│")[2:-1]]
        assert cells[0] in ("no", "yes") and re.fullmatch(r"[\d,]+", cells[1]), row  # tokens/s measured
        assert re.fullmatch(r"\d+\.\d{3}", cells[-1]), row  # held-out loss computed for its adapter
    assert "vs (a)" in output  # tunesmith set against the reference
    # the held-out loss curve: every contender scored at steps 0 (base), 1-3 (its snapshots) and 4 (final adapter)
    curve = output[output.index("held-out loss curve"):]
    for label in ("(a) reference", "(d) tunesmith, defaults"):
        row = next(line for line in curve.splitlines() if label in line and "│" in line)
        cells = [cell.strip() for cell in row.split("│")[2:-1]]
        assert len(cells) == 5 and all(re.fullmatch(r"\d+\.\d{3}", cell) for cell in cells), row
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"conditions: .+ \((amx_bf16|avx512_bf16|no native bf16)\)", output)  # the CPU is named


@pytest.mark.slow
def test_gpu_throughput_dry_run_completes_every_variant(tmp_path):
    output = _run(str(BENCHMARKS / "gpu_throughput.py"), "--dry-run", cwd=tmp_path)
    assert not re.search(r"│\s*failed\s*│", output), output[-3000:]  # a variant's row when its worker failed
    rows = [line for line in output.splitlines() if "│" in line and "lora" in line]
    assert len(rows) == 8, output[-3000:]  # two shapes x four variants
