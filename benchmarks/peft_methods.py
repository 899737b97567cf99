"""Train every fine-tuning method on the same model, data and step budget; print one comparison table.

Each method runs in its own fresh process so that peak memory (the process's high-water RSS, VmHWM) is its
own. `full` is the plain baseline. Columns: trainable parameters as training reports them; peak RSS of the
worker process (Python, torch and the data included); tokens/s = non-padding tokens seen / train runtime;
first loss = the first logged step's; final train loss = mean of the last 3 logged steps; val loss on the 10%
held out after training; artifact = the run folder's safetensors files. Run:

    python benchmarks/peft_methods.py                                   # stories260K, fast
    python benchmarks/peft_methods.py --model smollm2-135m-instruct --steps 20 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = str(SHARED / "models" / "stories260K")
DEFAULT_DATA = str(SHARED / "data" / "instruct" / "alpaca_en_demo.json")
# Each method at the learning rate it is normally used with (soft prompts and scaling vectors need more).
LEARNING_RATES = {"full": 5e-5, "freeze": 1e-4, "progressive": 1e-4, "prompt": 3e-2, "prefix": 1e-2,
                  "ptuning_v2": 3e-2, "ia3": 3e-2, "vera": 1e-2, "hybrid": 5e-3}
DEFAULT_LR = 2e-4
OPTIONS = {"houlsby": {"size": 64}, "pfeiffer": {"size": 64}, "vera": {"r": 256},
           "adalora": {"init_r": 12, "target_r": 8}, "freeze": {"trainable_layers": 2},
           "progressive": {"top_k": 2}}


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    method = {"name": args.worker, **OPTIONS.get(args.worker, {})}
    if args.worker in ("lora", "dora", "rslora", "qlora", "loraplus", "pissa", "olora"):
        method.update(r=16, alpha=32, target_modules="all-linear")
    cfg = validate_config({
        "model": {"name_or_path": args.model},
        "method": method,
        "data": {"train": [{"path": args.data, "max_samples": args.samples}], "val_size": 0.1,
                 "template": args.template, "max_length": args.max_length},
        "training": {"output_dir": args.out, "max_steps": args.steps, "batch_size": args.batch,
                     "learning_rate": LEARNING_RATES.get(args.worker, DEFAULT_LR), "logging_steps": 1,
                     "save_steps": 10_000, "eval_steps": 10_000, "warmup_ratio": 0.1, "tensorboard": False,
                     "seed": 0},
    })
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    artifact = sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors"))
    artifact += sum(f.stat().st_size for f in Path(args.out).glob("*/*.safetensors"))
    runtime = result.metrics.get("train_runtime", elapsed)
    print(json.dumps({
        "method": args.worker, "trainable": result.trainable_params, "total": result.total_params,
        "tokens_per_s": result.data_stats.get("train_tokens", 0) and records[-1].get("tokens", 0) / runtime,
        "train_loss": sum(losses[-3:]) / len(losses[-3:]), "first_loss": losses[0],
        "eval_loss": result.metrics.get("eval_loss"), "artifact_mb": artifact / 2**20,
        "peak_rss_mb": _peak_rss_mb(), "seconds": runtime,
    }))


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--template", default="alpaca_en")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: every method)")
    parser.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT))
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from tunesmith.hardware import cpu_model
    from tunesmith.methods.registry import all_methods

    # The plain baselines first (full, then LoRA), so that even a cut-short run compares against them.
    names = args.methods.split(",") if args.methods else sorted(all_methods(), key=lambda n: (n != "full",
                                                                                             n != "lora", n))
    rows = []
    load_before = os.getloadavg()[0]  # the CPU may be shared: the load average goes into the conditions
    conditions = (f"model {Path(args.model).name}, data {Path(args.data).name} ({args.samples} samples, 10% "
                  f"validation), {args.steps} steps x batch {args.batch}, max length {args.max_length}, "
                  f"{args.threads} CPU threads, {cpu_model()}, "
                  f"torch {_torch_version()} CPU, fresh process per method; 1-min load average {load_before:.1f} "
                  f"at start")
    with tempfile.TemporaryDirectory() as tmp, Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("methods", total=len(names))
        for name in names:
            progress.update(task, description=name)
            cmd = [sys.executable, __file__, "--worker", name, "--out", str(Path(tmp) / name)]
            for flag in ("model", "data", "template", "samples", "steps", "batch", "max_length", "threads"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                rows.append({"method": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:80]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            progress.advance(task)
            if args.markdown:  # rows so far, so that an interrupted run still leaves what it measured
                _write_markdown(args.markdown, f"{conditions}; {len(rows)} of {len(names)} methods done", rows)

    conditions += f", {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores"
    table = Table(title="PEFT methods, same budget", caption=conditions)
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "method" else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console(width=200).print(table)
    if args.markdown:
        _write_markdown(args.markdown, conditions, rows)


HEADERS = ["method", "trainable", "trainable %", "peak RSS MB", "tokens/s", "first loss", "final train loss",
           "val loss", "artifact MB"]


def _write_markdown(path: str, conditions: str, rows: list[dict]) -> None:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    Path(path).write_text(f"Conditions: {conditions}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _torch_version() -> str:
    import torch

    return torch.__version__


def _cells(row: dict) -> list[str]:
    if "error" in row:
        return [row["method"], "error: " + row["error"]] + [""] * 7
    return [row["method"], f"{row['trainable']:,}", f"{100 * row['trainable'] / row['total']:.3f}",
            f"{row['peak_rss_mb']:.0f}", f"{row['tokens_per_s']:.0f}", f"{row['first_loss']:.3f}",
            f"{row['train_loss']:.3f}", f"{row['eval_loss']:.3f}" if row["eval_loss"] is not None else "-",
            f"{row['artifact_mb']:.2f}"]


if __name__ == "__main__":
    main()
