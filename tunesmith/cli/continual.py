"""`tunesmith continual PIPELINE.yaml [--resume]`: train stages one after another, score every task seen so far
after each, and show the retention matrix."""

from __future__ import annotations

import argparse
import math

from rich.console import Console
from rich.table import Table

EPILOG = """examples:
  tunesmith continual examples/continual.yaml            three stages of LoRA on SmolLM2, scored after each
  tunesmith continual examples/continual.yaml --resume   continue a stopped pipeline (finished stages stay)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "continual", help="continual learning: train stages in order, score every task after each",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train the stages of PIPELINE.yaml in order with a strategy against forgetting (sequential, "
                    "replay, l2sp, ewc, kd, progressive_lora, merge) and write the retention matrix (table, "
                    "retention.json, retention.png, README.md) into its output_dir; see docs/continual.md.")
    p.add_argument("pipeline", help="PIPELINE.yaml")
    p.add_argument("--resume", action="store_true",
                   help="skip the finished stages and continue the running one from its last checkpoint")
    p.add_argument("-v", "--verbose", action="store_true", dest="show_log", default=argparse.SUPPRESS,
                   help="also show tunesmith's internal log on the console")
    p.set_defaults(func=run_continual)


def run_continual(args) -> int:
    from ..continual import load_pipeline
    from ..io import check_writable
    from .commands import restart_with_allocator

    cfg = load_pipeline(args.pipeline)  # every stage's run config is checked before anything trains
    check_writable(cfg.output_dir, f"{args.pipeline}: output_dir", folder=True)
    restart_with_allocator(args, (cfg.base.get("speed") or {}).get("cpu_allocator", "auto"))
    from ..continual import run_pipeline
    from .render import ConsoleReporter

    console = Console(stderr=True, soft_wrap=True)
    result = run_pipeline(cfg, resume=args.resume, reporter=ConsoleReporter(console), source=args.pipeline)
    Console().print(retention_table(result, cfg.evaluation.metric))
    console.print(f"[green]results →[/] {result.folder / 'README.md'}  (final model: {result.final_model})")
    return 0


def _cell(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def retention_table(result, metric: str) -> Table:
    table = Table(title=f"retention matrix: {metric} on each task's held-out data (lower is better)")
    table.add_column("after")
    for task in result.tasks:
        table.add_column(task, justify="right")
    table.add_column("average", justify="right")
    averages = result.summary.get("average_per_stage") or [None] * len(result.matrix)
    labels = ["start"] + list(result.tasks)
    for label, row, average in zip(labels, result.matrix, averages):
        table.add_row(label, *(_cell(v) for v in row), _cell(average))
    if result.summary:
        forgetting = result.summary["forgetting"]
        table.add_row("forgetting", *(_cell(v) for v in forgetting), "", style="dim")
        table.caption = f"backward transfer (BWT) {_cell(result.summary['bwt'])} (negative: earlier tasks got worse)"
    return table
