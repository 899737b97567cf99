"""Continual learning on real data: SmolLM2-135M-Instruct learns English instructions, then Chinese instructions,
then a persona (examples/continual.yaml, cut to --samples records per stage), once per strategy; the retention
matrix of each, side by side.

    python benchmarks/continual.py --out runs/bench-continual                      # sequential, replay, progressive_lora
    python benchmarks/continual.py --out runs/bench-continual --strategies replay,ewc

Scores: response-token loss on each task's held-out records (lower is better), after every stage (row 0: the
starting model). Each strategy's pipeline folder keeps its runs, retention.json and retention.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "continual.yaml"
STRATEGIES = {"sequential": {}, "replay": {"ratio": 0.2}, "progressive_lora": {},
              "l2sp": {"weight": 1.0}, "ewc": {"weight": 1e5}, "kd": {"weight": 1.0, "on": "train"}}


def pipeline(args, strategy: str) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    raw["output_dir"] = str(Path(args.out) / strategy)
    raw["strategy"] = {"name": strategy, **STRATEGIES[strategy]}
    raw["base"]["data"]["max_length"] = args.max_length
    raw["base"]["training"].update(save_steps=10_000, tensorboard=False)
    if args.threads:
        raw["base"]["speed"] = {"cpu_threads": args.threads}
    for stage in raw["stages"]:
        for source in stage["data"]:
            source["path"] = str((EXAMPLE.parents[1] / source["path"]).resolve())
            source["max_samples"] = min(source.get("max_samples") or args.samples, args.samples)
    raw["evaluation"]["max_samples"] = args.eval_samples
    return raw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default="sequential,replay,progressive_lora")
    parser.add_argument("--samples", type=int, default=160, help="records per stage (before the held-out split)")
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/bench-continual")
    args = parser.parse_args()

    from tunesmith.continual import run_pipeline, validate_pipeline

    tables = []
    for strategy in args.strategies.split(","):
        start = time.perf_counter()
        result = run_pipeline(validate_pipeline(pipeline(args, strategy), source=f"{strategy} pipeline"),
                              resume=True)
        seconds = time.perf_counter() - start
        s = result.summary
        lines = [f"### {strategy} ({seconds / 60:.0f} min)", "",
                 "| after stage | " + " | ".join(result.tasks) + " |", "|---|" + "---|" * len(result.tasks)]
        for i, row in enumerate(result.matrix):
            label = "start" if i == 0 else f"{i} ({result.tasks[i - 1]})"
            lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
        forgetting = ", ".join(f"{task} {value:+.3f}" for task, value in zip(result.tasks, s["forgetting"])
                               if value is not None)
        lines += ["", f"average loss {s['average']:.3f}, backward transfer {s['bwt']:+.3f}, forgetting: {forgetting}",
                  ""]
        tables.append("\n".join(lines))
    print(f"SmolLM2-135M-Instruct, examples/continual.yaml with {args.samples} records per stage, max_length "
          f"{args.max_length}; held-out response loss (lower is better)\n")
    print("\n".join(tables))


if __name__ == "__main__":
    main()
