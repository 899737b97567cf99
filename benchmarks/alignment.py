"""Preference-tuning efficacy: held-out preference accuracy of SmolLM2-135M-Instruct before and after a short LoRA
run of each preference task on LLaMA-Factory's dpo_en_demo.json, and a reward model's held-out pair accuracy.

    python benchmarks/alignment.py --steps 16 --held-out 40 --out runs/bench-alignment

The file is split once (seeded) into a training file and a held-out file that no run reads for training; every
task trains on the same training file (KTO on its pairs split into desirable / undesirable replies, twice the
steps so it sees as many sequences). Accuracy: the share of held-out pairs whose chosen reply gets the higher summed
log-prob under the policy (`tasks.preference.accuracy.preference_accuracy`), rendered with the model's chat
template; for the reward model, the share whose chosen side its head scores higher (`reward_accuracy`). Pairs
that do not fit in --max-length are left out of both files, as the runs leave them out.

Each run trains in its own process, which reports its wall time and peak resident memory (VmHWM) beside the
pre-flight's predicted peak from the run's train.log.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("dpo", "simpo", "orpo", "kto", "reward")


def split_file(source: str, held_out: int, seed: int, folder: Path) -> tuple[Path, Path]:
    records = json.loads(Path(source).read_text(encoding="utf-8"))
    random.Random(seed).shuffle(records)
    folder.mkdir(parents=True, exist_ok=True)
    train, held = folder / "train.json", folder / "held_out.json"
    train.write_text(json.dumps(records[held_out:], ensure_ascii=False), encoding="utf-8")
    held.write_text(json.dumps(records[:held_out], ensure_ascii=False), encoding="utf-8")
    return train, held


def run_config(task: str, args, train: Path, held: Path, out: Path):
    from tunesmith.config.loading import validate_config

    steps = args.steps * 2 if task == "kto" else args.steps
    preference = {"beta": args.beta} if task in ("dpo", "kto", "orpo") else {}
    return validate_config({
        "task": task, "model": {"name_or_path": args.model},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "preference": preference, "speed": {"cpu_threads": args.threads} if args.threads else {},
        "data": {"train": [{"path": str(train)}], "validation": [{"path": str(held)}], "template": "model",
                 "max_length": args.max_length},
        "training": {"output_dir": str(out / task), "max_steps": steps, "batch_size": args.batch_size,
                     "learning_rate": args.lr, "warmup_ratio": 0.1, "logging_steps": 4, "save_steps": 10_000,
                     "eval_steps": 10_000, "tensorboard": False, "overwrite_output_dir": True}})


def held_rows(cfg) -> list[dict]:
    from tunesmith.data.preference_build import build_preference_data
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    data = build_preference_data(cfg.data, tokenizer, get_template("model", tokenizer),
                                 whole=cfg.task == "reward")
    return list(data.validation)


def score(task: str, cfg, rows: list[dict], *, trained: bool, max_length: int) -> dict:
    """The policy's (or the reward model's) held-out accuracy; `trained`: the run's saved result, as a user loads it."""
    from tunesmith.evaluation.runner import load_evaluated
    from tunesmith.models.loading import load_model, load_tokenizer
    from tunesmith.tasks.preference.accuracy import preference_accuracy, reward_accuracy

    if not trained:
        return preference_accuracy(load_model(cfg.model), load_tokenizer(cfg.model), rows, max_length=max_length)
    loaded = load_evaluated(str(cfg.training.output_dir))  # a reward run: its sequence classifier with the head
    scorer = reward_accuracy if task == "reward" else preference_accuracy
    return scorer(loaded.model, loaded.tokenizer, rows, max_length=max_length)


def worker(task: str, config_file: str) -> None:
    """Train one task in this process; print seconds, the peak RSS and the pre-flight's prediction."""
    from sft_throughput import peak_rss_mb  # this folder is on sys.path when a script here runs
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    cfg = validate_config(json.loads(Path(config_file).read_text()))
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    predicted = re.search(r"pre-flight: predicted peak ([0-9.]+) GiB", (result.run_dir / "train.log").read_text())
    print(json.dumps({"seconds": seconds, "peak_gib": peak_rss_mb() / 1024, "train_examples":
                      result.data_stats["train_samples"], "predicted_gib": float(predicted[1]) if predicted else None}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="../shared/data/preference/dpo_en_demo.json")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=60, help="records set aside before the length filter")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-alignment")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: one per physical core); 1 on a machine that other jobs share")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    train_file, held_file = split_file(args.data, args.held_out, args.seed, out / "data")
    results_file, before_file = out / "results.jsonl", out / "before.json"
    done = {json.loads(line)["task"] for line in results_file.read_text().splitlines()} if results_file.exists() else set()
    for task in args.tasks.split(","):
        if task in done:
            continue
        cfg = run_config(task, args, train_file, held_file, out)
        rows = held_rows(cfg)
        if task != "reward" and not before_file.exists():
            before_file.write_text(json.dumps(score(task, cfg, rows, trained=False, max_length=args.max_length)))
        before = json.loads(before_file.read_text()) if task != "reward" else None
        config_file = out / f"{task}.json"
        # The run itself evaluates nothing: the held-out pairs are scored here, before and after, the same way.
        train_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"validation": []})})
        config_file.write_text(json.dumps(train_cfg.model_dump(mode="json")))
        proc = subprocess.run([sys.executable, __file__, "--worker", task, str(config_file)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{task} failed:\n{proc.stderr[-4000:]}")
        trained = json.loads(proc.stdout.strip().splitlines()[-1])
        after = score(task, cfg, rows, trained=True, max_length=args.max_length)
        row = {"task": task, "steps": cfg.training.max_steps, "batch_size": args.batch_size, "lr": args.lr,
               "held_out_pairs": len(rows), "before": before and before["accuracy"], "after": after["accuracy"],
               "mean_margin_after": after.get("mean_margin"), **trained}
        with results_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(f"\n{args.model}, LoRA r16, lr {args.lr}, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.data} split with seed {args.seed} ({args.held_out} records held out)\n")
    print("| task | steps | sequences seen | held-out pairs | accuracy before | after | train s | peak RSS GiB | "
          "pre-flight GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for line in results_file.read_text().splitlines():
        r = json.loads(line)
        before_text = "(untrained head)" if r["before"] is None else f"{r['before']:.3f}"
        sequences = r["steps"] * r["batch_size"] * (1 if r["task"] == "kto" else 2)
        print(f"| {r['task']} | {r['steps']} | {sequences} | {r['held_out_pairs']} | {before_text} | {r['after']:.3f} "
              f"| {r['seconds']:.0f} | {r['peak_gib']:.2f} | {r['predicted_gib']} |")


if __name__ == "__main__":
    main()
