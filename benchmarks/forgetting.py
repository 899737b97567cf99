"""Forgetting-aware training: SmolLM2-135M-Instruct learns a new ability (LoRA: the demo's persona by default, or
Chinese instructions) while its old abilities are measured on held-out data, for plain LoRA and each `retain:` option (replay, L2-SP, EWC, distillation from the base)
with a small weight sweep and combinations.

    python benchmarks/forgetting.py --out runs/bench-forgetting              # every row (minutes a row on 2 cores)
    python benchmarks/forgetting.py --out runs/bench-forgetting --only 'plain LoRA,replay 0.25'   # some rows; others kept
    python benchmarks/forgetting.py --out runs/bench-forgetting --reuse      # re-print the table

Data (split once, seeded; no training run reads a held-out file):
- new ability: `identity.json` with the demo's name filled in (--task persona; --new-held records held out, the
  rest trained on for --epochs) or `alpaca_zh_demo.json` (--task zh, --train records);
- old abilities: English instructions (`alpaca_en_demo.json`, --held records held out: response-token loss) and
  general text (`wiki_demo.txt`: perplexity of every token);
- replay / EWC / distillation data: the general web text `c4_demo.jsonl` and the English records not held out.

Each row trains in its own process (`tunesmith.recipes.train`, the run's `eval.general` scores base and result on
the three held-out sets after training); the process reports wall time and its peak resident memory (VmHWM).
new-task gain = relative drop of the new task's held-out perplexity; forgetting = relative rise of each old-ability loss
(`evaluation.forgetting.forgetting_rate` on perplexities); a row keeps the gain if it has >= 90% of plain LoRA's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rows(replay: list[dict]) -> dict[str, dict]:
    """name -> the run's `retain:` section."""
    ewc_data = {"data": replay, "samples": 128}
    return {
        "plain LoRA": {},
        "replay 0.25": {"replay": {"data": replay, "ratio": 0.25}},
        "L2-SP 0.1": {"l2sp": {"weight": 0.1}},
        "L2-SP 1": {"l2sp": {"weight": 1.0}},
        "L2-SP 10": {"l2sp": {"weight": 10.0}},
        "EWC 1e5": {"ewc": {"weight": 1e5, **ewc_data}},
        "EWC 1e6": {"ewc": {"weight": 1e6, **ewc_data}},
        "KD 0.5 (train data)": {"kd": {"weight": 0.5, "temperature": 2.0, "on": "train"}},
        "replay 0.25 + KD 1 (replay data)": {"replay": {"data": replay, "ratio": 0.25},
                                             "kd": {"weight": 1.0, "temperature": 2.0, "on": "replay"}},
    }


PERSONA = {"name": "Tuney", "author": "the tunesmith project"}


def new_task_records(task: str) -> list[dict]:
    """The new ability's records: the demo's persona (identity.json, its placeholders filled in) or Chinese Alpaca."""
    if task == "zh":
        return json.loads((SHARED / "instruct" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    text = (SHARED / "instruct" / "identity.json").read_text(encoding="utf-8")
    for key, value in PERSONA.items():
        text = text.replace("{{" + key + "}}", value)
    return json.loads(text)


def split_data(args, folder: Path) -> dict[str, Path]:
    """The seeded train / held-out files."""
    rng = random.Random(args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    new = new_task_records(args.task)
    en = json.loads((SHARED / "instruct" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    rng.shuffle(new)
    rng.shuffle(en)
    held_new = args.new_held or args.held
    files = {"new_train": new[held_new:held_new + args.train], "new_held": new[:held_new],
             "en_held": en[:args.held], "en_replay": en[args.held:]}
    paths = {}
    for name, records in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return paths


def run_config(args, name: str, retain: dict, paths: dict[str, Path], out: Path) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
    config = {
        "model": {"name_or_path": args.model},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05},
        "data": {"train": [{"path": str(paths["new_train"])}], "template": "model", "max_length": args.max_length,
                 "seed": args.seed},
        "training": {"output_dir": str(out / "runs" / slug), "num_epochs": args.epochs, "batch_size": 4,
                     "learning_rate": args.lr, "logging_steps": 5, "save_steps": 10_000, "tensorboard": False,
                     "overwrite_output_dir": True, "seed": args.seed},
        "eval": {"general": [{"path": str(paths["new_held"]), "max_samples": args.held},
                             {"path": str(paths["en_held"]), "max_samples": args.held},
                             {"path": str(SHARED / "general" / "wiki_demo.txt"), "max_samples": 30}],
                 "max_length": args.max_length},
    }
    if retain:
        config["retain"] = retain
    if args.threads:
        config["speed"] = {"cpu_threads": args.threads}
    return config


def worker(config_file: str) -> None:
    """Train one row; print its result as the last line."""
    from sft_throughput import peak_rss_mb  # this folder is on sys.path when a script here runs

    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    config = json.loads(Path(config_file).read_text())
    start = time.perf_counter()
    result = train(validate_config(config))
    seconds = time.perf_counter() - start
    forgetting = {Path(r["task"]).stem: r for r in result.extra_meta["forgetting"]}
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mb(), "forgetting": forgetting,
                      "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}))


def measure(args, name: str, config: dict, out: Path) -> dict:
    config_file = out / "configs" / (Path(config["training"]["output_dir"]).name + ".json")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, ensure_ascii=False))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(config_file)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"row {name!r} failed:\n{proc.stderr[-4000:]}")
    return {"name": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def table(results: list[dict], args) -> str:
    plain = next((r for r in results if r["name"] == "plain LoRA"), None)

    def rate(r, task):
        return r["forgetting"][task]["rate"]

    def gain(r):
        return -rate(r, "new_held")  # the relative drop of the new task's held-out perplexity

    def forgetting(r):
        return (rate(r, "en_held") + rate(r, "wiki_demo")) / 2

    base = results[0]["forgetting"]
    trained = len(json.loads((Path(args.out) / "data" / "new_train.json").read_text(encoding="utf-8")))
    lines = [f"{args.model}, LoRA r16, lr {args.lr}, {args.epochs:g} epoch(s) of {trained} {args.task} records, "
             f"batch 4, max_length {args.max_length}, seed {args.seed}"
             + (f", {args.threads} CPU thread(s) per run" if args.threads else ""),
             f"base model: {args.task} held-out ppl {base['new_held']['before']:.3f}, en held-out response ppl "
             f"{base['en_held']['before']:.3f}, wiki ppl {base['wiki_demo']['before']:.3f}", "",
             "| row | new-task ppl after | new-task gain | en ppl after | en forgetting | wiki ppl after | wiki forgetting "
             "| mean forgetting | vs plain | gain kept | time s | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["forgetting"]
        vs = forgetting(r) / forgetting(plain) if plain and forgetting(plain) > 0 else math.nan
        kept = gain(r) / gain(plain) if plain and gain(plain) > 0 else math.nan
        lines.append(f"| {r['name']} | {f['new_held']['after']:.3f} | {100 * gain(r):.1f}% | "
                     f"{f['en_held']['after']:.3f} | {100 * rate(r, 'en_held'):+.1f}% | {f['wiki_demo']['after']:.3f} "
                     f"| {100 * rate(r, 'wiki_demo'):+.1f}% | {100 * forgetting(r):+.1f}% | {vs:.2f}x | "
                     f"{100 * kept:.0f}% | {r['seconds']:.0f} | {r['peak_mib']:,.0f} |")
    if plain:
        hits = [r["name"] for r in results if r is not plain and forgetting(r) <= forgetting(plain) / 2
                and gain(r) >= 0.9 * gain(plain)]
        lines += ["", "target (forgetting halved or better, >= 90% of plain LoRA's gain): "
                  + (", ".join(hits) if hits else "met by no row")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", choices=("persona", "zh"), default="persona", help="the new ability")
    parser.add_argument("--train", type=int, default=200, help="new-task records to train on (at most)")
    parser.add_argument("--held", type=int, default=48, help="English records held out")
    parser.add_argument("--new-held", type=int, default=16, help="new-task records held out")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated row names")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", default="runs/bench-forgetting")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a machine other jobs share)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)

    out = Path(args.out)
    paths = split_data(args, out / "data")
    replay = [{"path": str(SHARED / "general" / "c4_demo.jsonl")}, {"path": str(paths["en_replay"])}]
    results_file = out / "results.jsonl"
    done = {}
    if results_file.exists():
        done = {r["name"]: r for r in map(json.loads, results_file.read_text().splitlines())}
    wanted = rows(replay)
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    for name, retain in wanted.items():
        if args.reuse or (only and name not in only) or (name in done and not only):
            continue
        print(f"training: {name}", file=sys.stderr, flush=True)
        done[name] = measure(args, name, run_config(args, name, retain, paths, out), out)
        results_file.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    print(table([done[n] for n in wanted if n in done], args))


if __name__ == "__main__":
    main()
