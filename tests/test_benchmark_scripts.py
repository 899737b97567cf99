"""The speed benchmarks end to end on tiny shapes, so a script does not rot between the sessions that run it for real
(the GPU one runs only when a GPU is lent). No timing is asserted: only that every contender trains and reports."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
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


def _device_script(script: Path, tmp_path: Path, *args: str, timeout: int = 900,
                   **env: str) -> subprocess.CompletedProcess:
    """A script prepared for the device tool, run here with this interpreter and the installed packages (no wheels),
    its results in tmp_path (stdout and stderr together in `.stdout`)."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "WHEELS": str(tmp_path / "no-wheels"), **env}
    return subprocess.run(["bash", str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)


def _gpu_check(tmp_path: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.sh --dry-run."""
    return _device_script(BENCHMARKS / "gpu_check.sh", tmp_path, "--dry-run", timeout=timeout, **env)


@pytest.mark.slow
def test_gpu_check_dry_run_completes_every_variant(tmp_path):
    """The device's one prepared call (benchmarks/gpu_check.sh), here with the installed packages and --dry-run."""
    proc = _gpu_check(tmp_path)
    output = proc.stdout
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"torch \S+ \(CUDA \S+\), GPU: none", output)  # what the machine has, said before any run
    assert not re.search(r"│\s*(failed|stopped|skipped)\s*│", output), output[-3000:]
    rows = [line for line in output.splitlines() if "│" in line and "lora" in line]
    assert len(rows) == 10, output[-3000:]  # two shapes x five variants
    records = [json.loads(line) for line in (tmp_path / "gpu_throughput.jsonl").read_text().splitlines()]
    assert [(r["model"], r["variant"]) for r in records] == GPU_SCHEDULE  # kept as each run finished, in this order
    assert all(r["tokens_per_s"] > 0 and not r["error"] for r in records)
    assert (tmp_path / "gpu_throughput.txt").read_text().count(" tokens/s, peak ") == 10
    # the planner's figure beside each run it models (the plain HF loss and tunesmith's chunked one), not Liger's
    planned = {row.split("│")[3].strip(): row.split("│")[8].strip() for row in rows if "llama-3-8b" in row}
    assert all(re.fullmatch(r"\d+\.\d+", planned[v]) and float(planned[v]) > 0 for v in ("hf", "tunesmith-chunked"))
    assert planned["hf+liger (no Liger: CPU)"] == planned["tunesmith (no Liger: CPU)"] == "-"
    assert planned["tunesmith-chunked+liger (no Liger: CPU)"] == "-"
    # the head and loss alone ran first, three times (2048 and 8192 tokens, an fp32 head): HF's loss, the
    # supervised-only one and every chunk size, each with its loss beside HF's
    heads = (tmp_path / "head_loss.txt").read_text()
    assert heads.count("LM head + loss") == 3 and "frozen fp32 head" in heads and "8192 tokens" in heads, heads
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in heads.splitlines() if "│ tiny" in line]
    assert [row[1] for row in rows[:8]] == ["hf", "supervised", "chunk-16777 (auto)", "chunk-130", "chunk-128",
                                            "chunk-256", "chunk-512", "chunk-1024"], heads
    assert len(rows) == 24 and all(abs(float(row[5])) < 1e-5 for row in rows), heads  # the same loss as HF's


def test_gpu_check_puts_the_old_pyarrow_wheels_in_front_when_datasets_does_not_import(tmp_path):
    """The device image's pyarrow was never read; datasets 5.2 needs pyarrow 19 at import. A datasets that fails to
    import stands in for that here, and a stub wheel for the fallback (datasets 4.0) that gpu_wheels.sh downloads."""
    broken = tmp_path / "broken" / "datasets"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise AttributeError(\"module 'pyarrow' has no attribute 'json_'\")\n")
    old = tmp_path / "wheels" / "old-pyarrow"
    old.mkdir(parents=True)
    info = "datasets-0.0.1.dist-info"
    files = {"datasets/__init__.py": "", f"{info}/METADATA": "Metadata-Version: 2.1\nName: datasets\nVersion: 0.0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(old / "datasets-0.0.1-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    output = _gpu_check(tmp_path, timeout=300, WHEELS=str(tmp_path / "wheels"), SITE=str(tmp_path / "site"),
                        PYTHONPATH=str(tmp_path / "broken")).stdout
    assert re.search(r"datasets does not import \(AttributeError: module 'pyarrow' has no attribute 'json_'; "
                     r"pyarrow \d+\.\d+\.\d+\), so \S+/old-pyarrow/ goes in front", output), output[-3000:]
    assert (tmp_path / "site-old" / "datasets" / "__init__.py").exists()
    assert re.search(r"\bdatasets 0\.0\.1\b", output), output[-3000:]  # the fallback, not the broken one, is found


GPU_SCHEDULE = [("llama-3.2-1b", "hf"), ("llama-3-8b", "hf"), ("llama-3.2-1b", "tunesmith-chunked"),
                ("llama-3-8b", "tunesmith-chunked"), ("llama-3.2-1b", "hf+liger"), ("llama-3-8b", "hf+liger"),
                ("llama-3.2-1b", "tunesmith"), ("llama-3-8b", "tunesmith"),
                ("llama-3.2-1b", "tunesmith-chunked+liger"), ("llama-3-8b", "tunesmith-chunked+liger")]


def test_gpu_throughput_spends_a_short_budget_on_every_shapes_baseline_first(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCHMARKS / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.schedule(["llama-3.2-1b", "llama-3-8b"], list(module.VARIANTS)) == GPU_SCHEDULE
    output = _run(str(BENCHMARKS / "gpu_throughput.py"), "--dry-run", "--budget-s", "0", "--jsonl",
                  str(tmp_path / "runs.jsonl"), cwd=tmp_path)
    assert len(re.findall(r"│\s*skipped\s*│ .* skipped: --budget-s spent", output)) == 10, output[-3000:]
    assert not (tmp_path / "runs.jsonl").exists()  # nothing ran, so nothing was recorded


@pytest.mark.slow
def test_gpu_smoke_trains_and_reloads_on_cpu(tmp_path, stories_dir):
    """scripts/gpu_smoke.sh, the device's CLI check, runs here without a GPU: LoRA and QLoRA through `tunesmith
    train`, each adapter reloaded with PeftModel; the Liger run is left out with a reason."""
    proc = _device_script(BENCHMARKS.parent / "scripts" / "gpu_smoke.sh", tmp_path, MODEL=str(stories_dir),
                          RUNS=str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "no CUDA GPU, so no Liger run" in proc.stdout
    for name in ("lora", "qlora"):
        assert re.search(rf"^{name}: loss [\d.]+ -> [\d.]+ .* loads with PeftModel on cpu: 'Once upon a time",
                         proc.stdout, re.M), proc.stdout[-3000:]
        assert (tmp_path / "runs" / name / "adapter_model.safetensors").exists()
        assert "saved " in (tmp_path / f"smoke-{name}.log").read_text()
