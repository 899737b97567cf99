"""Preference-tuning efficacy: held-out preference accuracy of SmolLM2-135M-Instruct before and after a short LoRA
run of each preference task on LLaMA-Factory's dpo_en_demo.json, a reward model's held-out pair accuracy, and GRPO
on checkable arithmetic (held-out greedy exact-match accuracy before and after).

    python benchmarks/alignment.py --steps 24 --lr 5e-4 --max-length 256 --held-out 80 --threads 1
    python benchmarks/alignment.py --tasks reward --max-length 512 ...
    python benchmarks/alignment.py --tasks grpo --steps 30 ...

The file is split once (seeded) into a training file and a held-out file that no run reads for training; every
task trains on the same training file (KTO on its pairs split into desirable / undesirable replies, twice the
steps so it sees as many sequences). Each held-out pair is scored by the base model once and by each trained policy
(`tasks.preference.accuracy.reply_logps`, rendered with the model's chat template, cut at --max-length as the
runs cut them), and three accuracies are taken from those log-probs: summed over the reply's tokens (what DPO
compares), per token (a long reply not penalised for its length), and the implicit reward (the policy's log-prob
minus the base's, which is the reference of a fresh LoRA adapter: DPO's and KTO's reward, up to beta; TRL's
eval rewards/accuracies). For the reward model, the share of pairs whose chosen side its head scores higher
(`reward_accuracy`); it reads whole sequences, so pairs longer than --max-length are cut to fit, as the reward run
cuts them (replies keep their beginning, prompts their end).
Pairs whose prompt leaves no reply token within --max-length are left out of both files, as the runs leave them out.

GRPO (`--tasks grpo`): examples/grpo.yaml's task (exact_answer on the last number, format 0.5) shrunk to CPU size,
on examples/data/arithmetic.jsonl split the same way; the held-out prompts are answered greedily before and after
and scored by exact_answer.

Each run trains in its own process, which reports its wall time and peak resident memory (VmHWM) beside the
pre-flight's predicted peak from the run's train.log. Rows append to <out>/results.jsonl (one per task, steps, lr
and max_length); the tables print every row there.
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
GRPO_DATA = "examples/data/arithmetic.jsonl"


def split_file(source: str, held_out: int, seed: int, folder: Path) -> tuple[Path, Path]:
    text = Path(source).read_text(encoding="utf-8")
    lines = source.endswith(".jsonl")
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    random.Random(seed).shuffle(records)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl" if lines else ".json"
    train, held = folder / f"train{suffix}", folder / f"held_out{suffix}"
    for path, part in ((train, records[held_out:]), (held, records[:held_out])):
        dumped = [json.dumps(r, ensure_ascii=False) for r in part]
        path.write_text("\n".join(dumped) + "\n" if lines else "[" + ",".join(dumped) + "]", encoding="utf-8")
    return train, held


def run_config(task: str, args, train: Path, held: Path, out: Path):
    from tunesmith.config.loading import validate_config

    steps = args.steps * 2 if task == "kto" else args.steps
    preference = {"beta": args.beta} if task in ("dpo", "kto", "orpo") else {}
    return validate_config({
        "task": task, "model": {"name_or_path": args.model},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "preference": preference, "speed": speed_section(args),
        "data": {"train": [{"path": str(train)}], "validation": [{"path": str(held)}], "template": args.template,
                 "max_length": args.max_length},
        "training": {"output_dir": str(out / run_name(task, steps, args.lr, args.max_length, args.allocator)), "max_steps": steps,
                     "batch_size": args.batch_size, "learning_rate": args.lr, "warmup_ratio": 0.1,
                     "logging_steps": 4, "save_steps": 10_000, "eval_steps": 10_000, "tensorboard": False,
                     "overwrite_output_dir": True}})


def grpo_config(args, train: Path, out: Path):
    """examples/grpo.yaml's task at a CPU size: --grpo-generations completions of up to --grpo-completion tokens for
    each of 2 prompts a step, the adapter on the attention and MLP projections as there."""
    import yaml

    from tunesmith.config.loading import validate_config

    raw = yaml.safe_load(Path("examples/grpo.yaml").read_text())
    raw["model"]["name_or_path"] = args.model
    raw["grpo"].update(num_generations=args.grpo_generations, max_completion_length=args.grpo_completion)
    raw["data"].update(train=[{"path": str(train)}], template=args.template)
    raw["speed"] = speed_section(args)
    raw["training"].update(output_dir=str(out / run_name("grpo", args.steps, args.lr, args.max_length, args.allocator)),
                           max_steps=args.steps, learning_rate=args.lr, batch_size=args.grpo_generations,
                           grad_accum=2, logging_steps=1, save_steps=10_000, tensorboard=False,
                           overwrite_output_dir=True)
    return validate_config(raw)


def run_name(task: str, steps: int, lr: float, max_length: int, allocator: str = "auto") -> str:
    return f"{task}-s{steps}-lr{lr:g}-L{max_length}" + ("" if allocator == "auto" else f"-{allocator}")


def speed_section(args) -> dict:
    """--threads and --allocator (speed.cpu_allocator: `lean` keeps the process at its live tensors, which is what
    the pre-flight predicts; `auto` keeps glibc's settings here, as no tcmalloc is preloaded into the workers)."""
    return {**({"cpu_threads": args.threads} if args.threads else {}), "cpu_allocator": args.allocator}


def held_rows(cfg) -> list[dict]:
    from tunesmith.data.preference_build import build_preference_data
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    data = build_preference_data(cfg.data, tokenizer, get_template(cfg.data.template, tokenizer),
                                 whole=cfg.task == "reward")
    return list(data.validation)


def base_logps(cfg, rows: list[dict], max_length: int):
    from tunesmith.models.loading import load_model, load_tokenizer
    from tunesmith.tasks.preference.accuracy import reply_logps

    return reply_logps(load_model(cfg.model), load_tokenizer(cfg.model), rows, max_length=max_length)


def trained_scores(task: str, cfg, rows: list[dict], max_length: int):
    """The run's saved result, loaded as a user loads it: the policy's reply log-probs, or the reward model's
    summary."""
    from tunesmith.evaluation.runner import load_evaluated
    from tunesmith.tasks.preference.accuracy import reply_logps, reward_accuracy

    loaded = load_evaluated(str(cfg.training.output_dir))  # a reward run: its sequence classifier with the head
    if task == "reward":
        return reward_accuracy(loaded.model, loaded.tokenizer, rows, max_length=max_length)
    return reply_logps(loaded.model, loaded.tokenizer, rows, max_length=max_length)


def accuracies(before, after) -> dict:
    """Summed, per-token and implicit-reward accuracy (chosen strictly above rejected) and mean margins, from each
    pair's ((chosen sum, tokens), (rejected sum, tokens)) before (the base: the reference) and after."""
    def share(margins):
        return sum(m > 0 for m in margins) / len(margins)

    def summed(logps):
        return [c[0] - r[0] for c, r in logps]

    def per_token(logps):
        return [c[0] / max(c[1], 1) - r[0] / max(r[1], 1) for c, r in logps]

    implicit = [(ca[0] - cb[0]) - (ra[0] - rb[0]) for (cb, rb), (ca, ra) in zip(before, after)]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"sum_before": share(summed(before)), "sum_after": share(summed(after)),
            "token_before": share(per_token(before)), "token_after": share(per_token(after)),
            "implicit": share(implicit), "implicit_margin": mean(implicit),
            "margin_before": mean(summed(before)), "margin_after": mean(summed(after))}


def train_log(run_dir: Path, names: tuple[str, ...]) -> dict:
    """The last logged value of each name in the run's metrics.jsonl (training entries; TRL's names)."""
    last: dict = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        last.update({name: entry[name] for name in names if name in entry})
    return last


def per_step(run_dir: Path, name: str) -> list[float]:
    """One logged training number per step (TRL's GRPO names: reward, completions/clipped_ratio, ...)."""
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [entry[name] for entry in entries if name in entry]


def grpo_accuracy(model, tokenizer, cfg, held: Path) -> float:
    """Greedy exact-match accuracy on the held-out prompts, rendered and scored as the run renders and scores."""
    import torch

    from tunesmith.data.templates.registry import get_template
    from tunesmith.tasks.grpo.data import build_prompt_data
    from tunesmith.tasks.grpo.rewards import build_rewards

    held_cfg = cfg.data.model_copy(update={"train": [cfg.data.train[0].model_copy(update={"path": str(held)})]})
    rows, _ = build_prompt_data(held_cfg, get_template(cfg.data.template, tokenizer), tokenizer,
                                cfg.grpo.max_completion_length)
    exact = build_rewards([spec for spec in cfg.grpo.rewards if spec.name == "exact_answer"])[0][0]
    model.eval()
    completions = []
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["prompt"], return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=cfg.grpo.max_completion_length, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            completions.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    scores = exact(prompts=rows["prompt"], completions=completions, answer=rows["answer"])
    return sum(scores) / len(scores)


def worker(task: str, config_file: str) -> None:
    """Train one task in this process; print seconds, the peak RSS and the pre-flight's prediction."""
    from sft_throughput import peak_rss_mb  # this folder is on sys.path when a script here runs
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    cfg = validate_config(json.loads(Path(config_file).read_text()))
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    # train.log keeps the lines of earlier runs in the same folder: this run's pre-flight is the last one
    predicted = re.findall(r"pre-flight: predicted peak ([0-9.]+) GiB", (result.run_dir / "train.log").read_text())
    print(json.dumps({"seconds": seconds, "peak_gib": peak_rss_mb() / 1024, "train_examples":
                      result.data_stats["train_samples"], "predicted_gib": float(predicted[-1]) if predicted else None}))


def train_in_process(task: str, cfg, out: Path) -> dict:
    config_file = Path(f"{cfg.training.output_dir}.json")
    config_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.run([sys.executable, __file__, "--worker", task, str(config_file)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def preference_row(task: str, args, out: Path) -> dict:
    train_file, held_file = split_file(args.data, args.held_out, args.seed, out / "data")
    cfg = run_config(task, args, train_file, held_file, out)
    rows = held_rows(cfg)
    before_file = out / f"before-L{args.max_length}.json"
    if task != "reward" and not before_file.exists():
        before_file.write_text(json.dumps(base_logps(cfg, rows, args.max_length)))
    # The run itself evaluates nothing: the held-out pairs are scored here, before and after, the same way.
    trained = train_in_process(task, cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"validation": []})}), out)
    after = trained_scores(task, cfg, rows, args.max_length)
    run_dir = Path(cfg.training.output_dir)
    row = {"task": task, "steps": cfg.training.max_steps, "batch_size": args.batch_size, "lr": args.lr,
           "allocator": args.allocator,
           "max_length": args.max_length, "held_out_pairs": len(rows), **trained,
           "train_log": train_log(run_dir, ("loss", "rewards/accuracies", "rewards/margins", "accuracy"))}
    if task == "reward":
        row.update(reward_accuracy=after["accuracy"], reward_margin=after["mean_margin"])
    else:
        (run_dir / "held_out_logps.json").write_text(json.dumps(after))
        row.update(accuracies(json.loads(before_file.read_text()), after))
    return row


def grpo_row(args, out: Path) -> dict:
    from tunesmith.models.loading import load_for_inference, load_model, load_tokenizer

    train_file, held_file = split_file(GRPO_DATA, args.grpo_held_out, args.seed, out / "grpo-data")
    cfg = grpo_config(args, train_file, out)
    before_file = out / f"grpo-before-c{args.grpo_completion}.json"
    if not before_file.exists():
        tokenizer = load_tokenizer(cfg.model)
        before_file.write_text(json.dumps(grpo_accuracy(load_model(cfg.model), tokenizer, cfg, held_file)))
    trained = train_in_process("grpo", cfg, out)
    loaded = load_for_inference(str(cfg.training.output_dir))
    run_dir = Path(cfg.training.output_dir)
    rewards, clipped = per_step(run_dir, "reward"), per_step(run_dir, "completions/clipped_ratio")
    quarter = max(len(rewards) // 4, 1)
    return {"task": "grpo", "steps": args.steps, "lr": args.lr, "max_length": args.max_length,  # (the key)
            "allocator": args.allocator,
            "generations": args.grpo_generations, "completion_tokens": args.grpo_completion,
            "held_out_prompts": args.grpo_held_out, **trained,
            "exact_before": json.loads(before_file.read_text()),
            "exact_after": grpo_accuracy(loaded.model, loaded.tokenizer, cfg, held_file),
            "reward_first_quarter": sum(rewards[:quarter]) / quarter,
            "reward_last_quarter": sum(rewards[-quarter:]) / quarter, "rewards": rewards, "clipped": clipped,
            "exact_per_step": per_step(run_dir, "rewards/exact_answer/mean"),
            "format_per_step": per_step(run_dir, "rewards/format/mean")}


def _allocator(row: dict) -> str:
    allocator = row.get("allocator", "auto")
    return "" if allocator == "auto" else f" ({allocator})"


def print_tables(results_file: Path) -> None:
    rows = [json.loads(line) for line in results_file.read_text().splitlines()]
    pref = [r for r in rows if r["task"] not in ("reward", "grpo")]
    if pref:
        print("| task | steps | lr | max_length | sequences seen | held-out pairs | summed acc before → after | "
              "per-token acc before → after | implicit-reward acc | implicit margin | summed margin before → after "
              "| train s | peak RSS GiB | pre-flight GiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in pref:
            sequences = r["steps"] * r["batch_size"] * (1 if r["task"] == "kto" else 2)
            print(f"| {r['task']} | {r['steps']} | {r['lr']:g} | {r['max_length']} | {sequences} | "
                  f"{r['held_out_pairs']} | {r['sum_before']:.3f} → {r['sum_after']:.3f} | "
                  f"{r['token_before']:.3f} → {r['token_after']:.3f} | {r['implicit']:.3f} | "
                  f"{r['implicit_margin']:+.2f} | {r['margin_before']:+.1f} → {r['margin_after']:+.1f} | "
                  f"{r['seconds']:.0f} | {r['peak_gib']:.2f}{_allocator(r)} | {r['predicted_gib']} |")
    for r in (r for r in rows if r["task"] == "reward"):
        print(f"\nreward: {r['steps']} steps, lr {r['lr']:g}, max_length {r['max_length']}, {r['train_examples']} "
              f"training pairs, held-out pair accuracy {r['reward_accuracy']:.3f} of {r['held_out_pairs']} "
              f"(mean margin {r['reward_margin']:+.3f}); last training log {r['train_log']}; "
              f"{r['seconds']:.0f} s, peak RSS {r['peak_gib']:.2f} GiB{_allocator(r)}, pre-flight {r['predicted_gib']} GiB")
    for r in (r for r in rows if r["task"] == "grpo"):
        print(f"\ngrpo: {r['steps']} steps, lr {r['lr']:g}, {r['generations']} completions of up to "
              f"{r['completion_tokens']} tokens per prompt, 2 prompts a step, {r['train_examples']} training prompts; "
              f"held-out greedy exact-match {r['exact_before']:.3f} → {r['exact_after']:.3f} "
              f"({r['held_out_prompts']} prompts); mean reward first quarter {r['reward_first_quarter']:.3f}, last "
              f"quarter {r['reward_last_quarter']:.3f}; {r['seconds']:.0f} s, peak RSS {r['peak_gib']:.2f} GiB"
              f"{_allocator(r)}, "
              f"pre-flight {r['predicted_gib']} GiB")
        for name, key in (("reward", "rewards"), ("exact_answer", "exact_per_step"), ("format", "format_per_step"),
                          ("clipped share", "clipped")):
            print(f"{name} per step: " + " ".join(f"{x:.2f}" for x in r[key]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--template", default="model", help="data.template (chatml for a model without one)")
    parser.add_argument("--data", default="../shared/data/preference/dpo_en_demo.json")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"of {', '.join(TASKS)}, grpo")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=80, help="records set aside before the length filter")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpo-generations", type=int, default=4)
    parser.add_argument("--grpo-completion", type=int, default=16, help="max_completion_length of the grpo task")
    parser.add_argument("--grpo-held-out", type=int, default=50, help="arithmetic prompts set aside")
    parser.add_argument("--out", default="runs/bench-alignment")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: one per physical core); 1 on a machine that other jobs share")
    parser.add_argument("--allocator", choices=("auto", "lean", "default"), default="auto",
                        help="speed.cpu_allocator of the runs (lean: the process holds its live tensors only)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = ({(*(r[k] for k in ("task", "steps", "lr", "max_length")), r.get("allocator", "auto"))
             for r in map(json.loads, results_file.read_text().splitlines())} if results_file.exists() else set())
    for task in args.tasks.split(","):
        steps = args.steps * 2 if task == "kto" else args.steps
        if (task, steps, args.lr, args.max_length, args.allocator) in done:
            continue
        row = grpo_row(args, out) if task == "grpo" else preference_row(task, args, out)
        with results_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)
    print(f"\n{args.model}, LoRA r16 (grpo: examples/grpo.yaml's adapter), batch {args.batch_size} pairs, "
          f"beta {args.beta} (dpo, kto, orpo), {args.data} split with seed {args.seed} ({args.held_out} records held "
          f"out; grpo: {GRPO_DATA}, {args.grpo_held_out} held out)\n")
    print_tables(results_file)


if __name__ == "__main__":
    main()
