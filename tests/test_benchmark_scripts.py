"""The speed benchmarks end to end on tiny shapes, so a script does not rot between the sessions that run it for real
(the GPU one runs only when a GPU is lent). No timing is asserted: only that every contender trains and reports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

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
def test_eval_throughput_prints_train_and_both_evaluations(tmp_path, stories_dir):
    output = _run(str(BENCHMARKS / "eval_throughput.py"), "--models", str(stories_dir), "--steps", "3",
                  "--samples", "16", "--val-samples", "6", "--max-length", "128", "--passes", "1", "--threads", "1",
                  cwd=tmp_path)
    row = next(line for line in output.splitlines() if line.startswith("stories260K |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in cells[1:4]), row  # train and both eval samples/s
    assert re.fullmatch(r"\d+\.\d{4} / \d+\.\d{4}", cells[5]), row  # each path's eval loss


def _device_script(script: Path, tmp_path: Path, *args: str, timeout: int = 900,
                   **env: str) -> subprocess.CompletedProcess:
    """A script prepared for the device tool, run here with this interpreter and the installed packages (no wheels),
    its results in tmp_path (stdout and stderr together in `.stdout`)."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "WHEELS": str(tmp_path / "no-wheels"), **env}
    return subprocess.run(["bash", str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)


def _gpu_check(tmp_path: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.sh --dry-run."""
    return _device_script(BENCHMARKS / "gpu_check.sh", tmp_path, "--dry-run", "--only", "llama-3.2-1b",
                          timeout=timeout, **env)


@pytest.mark.slow
def test_gpu_check_dry_run_compares_every_tool_on_the_same_tokens(tmp_path):
    """The device's one prepared call (benchmarks/gpu_check.sh), here with the installed packages and --dry-run: every
    tool that runs without a GPU trains the same tokenised records in the same order from the same weights, so its
    step losses match tunesmith's (the comparison is fair), and the planner's figure stands beside the runs it models."""
    proc = _gpu_check(tmp_path, timeout=600)
    output = proc.stdout
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"torch \S+ \(CUDA \S+\), GPU: none", output)  # what the machine has, said before any run
    assert re.search(r"data: alpaca_en_demo.json, mean \d+ tokens per record, \d+% supervised", output), output[-3000:]
    rows = {cells[2]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines()
                                          if "│ llama-3.2-1b" in line)}
    assert sorted(rows) == ["hf", "trl", "trl-padding-free", "tunesmith", "tunesmith+gc"], output[-3000:]
    for tool, cells in rows.items():
        assert re.fullmatch(r"[\d,]+", cells[3]), cells  # tokens/s measured
        gap = float(cells[9].rstrip("%"))
        assert gap < 1.0, f"{tool}'s losses differ from tunesmith's by {gap}%: not the same batches"
    assert all(re.fullmatch(r"\d+\.\d+", rows[tool][7]) for tool in ("hf", "tunesmith", "tunesmith+gc"))
    assert rows["trl"][7] == rows["trl-padding-free"][7] == "-"  # TRL's loss is not modelled
    records = [json.loads(line) for line in (tmp_path / "gpu_throughput.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == ["tunesmith", "hf", "trl", "trl-padding-free", "tunesmith+gc"]
    assert all(r["tokens_per_s"] > 0 and not r["error"] and len(r["losses"]) == 4 for r in records)


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
                        PYTHONPATH=str(tmp_path / "broken"), BUDGET_S="0").stdout  # the imports only: no runs
    assert re.search(r"datasets does not import \(AttributeError: module 'pyarrow' has no attribute 'json_'; "
                     r"pyarrow \d+\.\d+\.\d+\), so \S+/old-pyarrow/ goes in front", output), output[-3000:]
    assert (tmp_path / "site-old" / "datasets" / "__init__.py").exists()
    assert re.search(r"\bdatasets 0\.0\.1\b", output), output[-3000:]  # the fallback, not the broken one, is found


def test_gpu_throughput_with_no_budget_left_skips_every_run_and_records_none(tmp_path):
    output = _run(str(BENCHMARKS / "gpu_throughput.py"), "--dry-run", "--budget-s", "0", "--jsonl",
                  str(tmp_path / "runs.jsonl"), cwd=tmp_path)
    assert len(re.findall(r"│\s*skipped\s*│", output)) == 10, output[-3000:]  # 2 shapes x 5 tools (no Unsloth on CPU)
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


@pytest.mark.slow
def test_efficacy_scores_a_workflow_on_rows_it_never_trained_on(tmp_path):
    """benchmarks/efficacy.py on the SST-2 workflow, shrunk: the held-out rows are disjoint from the training rows,
    the run trains with the example's settings, and the table reports its held-out accuracy beside the majority label."""
    out = tmp_path / "bench"
    output = _run(str(BENCHMARKS / "efficacy.py"), "--only", "sst2", "--train", "48", "--held-classification", "40",
                  "--threads", "1", "--out", str(out), cwd=BENCHMARKS.parent)
    folder = out / "data" / "sst2"
    train, held = ((folder / name).read_text(encoding="utf-8").splitlines()[1:] for name in ("train.tsv", "held.tsv"))
    assert len(train) == 48 and len(held) == 40 and not set(train) & set(held)
    row = next(line for line in output.splitlines() if line.startswith("| sst2 (n 48) |"))  # --train: own row
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == "lora, r 8, lr 0.002, 3 ep, batch 16x1, 48 samples", row  # read back from the run's config.yaml
    assert re.fullmatch(r"0\.\d{3} \(majority label\)", cells[3]) and re.fullmatch(r"[01]\.\d{3}", cells[4]), row
    assert re.fullmatch(r"[+-]\d+\.\d pts \((meets|misses) 0\.85\)", cells[5]), row
    assert re.search(r"conditions: .+ 1 CPU thread\(s\) per run", output)


def _multitask():
    import importlib.util

    spec = importlib.util.spec_from_file_location("multitask_benchmark", BENCHMARKS / "multitask.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multitask_holds_out_its_data_routes_it_and_reports_the_check(tmp_path):
    """benchmarks/multitask.py's own parts, in seconds (its trainings take minutes): the seeded split keeps every
    held-out record out of training, the set's router sends the held-out prompts to their task, and the report sets
    the measured best merge against the diagnosis' recommendation."""
    import argparse

    from tunesmith.inference.adapter_set import read_manifest
    from tunesmith.inference.router import Router
    from tunesmith.merging.diagnose import diagnose_vectors

    bench = _multitask()
    args = argparse.Namespace(seed=0, held=20, samples=30, identity_held=8, model="smollm2", steps=4, lr=5e-4,
                              max_length=128, density=0.5, threads=1, latency_tokens=8, latency_requests=2,
                              min_kept=0.8)
    paths = bench.write_data(args, tmp_path / "data")
    for task in bench.TASKS:
        train, held = (json.loads(paths[f"{task}_{split}"].read_text()) for split in ("train", "held"))
        assert held and not any(r in train for r in held), task
    held = json.loads(paths["identity_held"].read_text())
    assert len(held) == 8 and all(bench.PERSONA["name"] in r["output"] for r in held)
    mixture = json.loads(paths["mixture_train"].read_text())
    assert {r["instruction"].split("]")[0] + "]" for r in mixture} == {f"[{t}]" for t in bench.TASKS}

    adapters = {}
    for task in bench.TASKS:  # just enough of an adapter folder for the manifest's checks
        adapters[task] = tmp_path / "runs" / task
        adapters[task].mkdir(parents=True)
        (adapters[task] / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    manifest = read_manifest(bench.write_manifest(adapters, tmp_path, str(tmp_path / "base")))
    router = Router(manifest.router, [manifest.base_name, *manifest.adapters])
    for task in ("sentiment", "identity"):
        chats = bench.conversations(json.loads(paths[f"{task}_held"].read_text()))
        routed = [r.adapter for r in router.route_many([c[:1] for c in chats])]
        assert routed.count(task) >= 0.75 * len(routed), (task, routed)

    def served(sentiment, identity, alpaca):
        return {"scores": {"sentiment": sentiment, "identity": identity, "alpaca": alpaca}, "peak_mib": 900.0,
                "latency_s": 0.5}

    results = {"_identity_train": 70, "base": served(0.5, 0.0, 2.0),
               "per-task adapters (routed)": served(0.9, 1.0, 1.5), "mixture adapter (prefixes)": served(0.8, 0.9, 1.6),
               "merged: linear": served(0.6, 0.2, 1.9), "merged: task_arithmetic": served(0.86, 0.85, 1.55),
               "merged: ties": served(0.7, 0.5, 1.7)}
    a = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    diagnosis = diagnose_vectors(["sentiment", "identity", "alpaca"],
                                 [("model.layers.0.q_proj.weight", [a, a.clone(), a.clone()])])
    text = bench.report(args, results, diagnosis, {"sentiment": 10.0}, {"sentiment": 1.0, "all": 0.9})
    assert "| merged: task_arithmetic | 86.0% | 85.0% | 1.550 | 85% |" in text, text  # identity: 0.85/1 of the gain
    assert "best merge task_arithmetic keeps 85% of the worst task's gain (≥ 80%) → task_arithmetic" in text, text
    assert "diagnosis recommended linear: MISMATCH" in text, text


def test_preference_padding_counts_padding_and_reply_positions(tmp_path, stories_dir):
    """benchmarks/preference_padding.py on three pairs of known lengths: its counts are the formula's."""
    pairs = [{"prompt": "Hi " * n, "chosen": "yes " * c, "rejected": "no " * r} for n, c, r in
             [(3, 5, 2), (8, 1, 1), (2, 20, 4)]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    output = _run(str(BENCHMARKS / "preference_padding.py"), "--data", str(data), "--model", str(stories_dir),
                  "--max-length", "64", "--batch", "3", cwd=tmp_path)
    rows = [line.split("|")[1:-1] for line in output.splitlines() if line.startswith("| random")]
    computed, real = (int(rows[0][i].replace(",", "")) for i in (1, 2))
    assert real < computed and computed % 6 == 0  # one batch of 3 pairs: 6 sequences padded to the longest
    assert f"{1 - real / computed:.1%}" == rows[0][3].strip()
