"""`tunesmith merge`: combine fine-tuned models (or LoRA adapters) from a YAML config, optionally evaluated."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  tunesmith merge examples/merge_ties.yaml                       merge, write a plain HF model
  tunesmith merge examples/merge_ties.yaml --eval examples/merge_eval.yaml
                                                                 score merged + sources per task, flag failures
  tunesmith merge examples/merge_ties.yaml --eval SUITE --search try the config's `search:` grid, keep the
                                                                 candidate with the best worst-case task
  tunesmith merge --methods                                      list the merge methods
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge fine-tuned models or LoRA adapters (linear, SLERP, TIES, DARE…)",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                              description="Merge models tensor by tensor from a YAML config (method, models, "
                                          "base_model, parameters, output); see docs/merging.md.")
    p.add_argument("config", nargs="?", help="merge YAML")
    p.add_argument("--out", default=None, help="output folder (overrides `output:` in the config)")
    p.add_argument("--overwrite", action="store_true", help="replace the weights of a non-empty output folder")
    p.add_argument("--eval", dest="suite", default=None, metavar="SUITES.yaml",
                   help="score the merge and every source model on each task")
    p.add_argument("--search", action="store_true", help="run the config's `search:` grid (needs --eval)")
    p.add_argument("--fail-on-flag", action="store_true", help="exit 1 when a task falls below its source")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--methods", action="store_true", help="list the merge methods and exit")
    p.set_defaults(func=merge_command)


def merge_command(args) -> int:
    from rich.console import Console

    from ..errors import ConfigError
    from ..io import atomic_write_json
    from .. import api
    from ..merging import MergeConfig, available_methods, load_config
    from ..reporting import Reporter
    from .render import ConsoleReporter

    console = Console(stderr=True)
    reporter = ConsoleReporter(console)
    if args.methods:
        for name, summary in available_methods().items():
            console.print(f"[bold]{name:16}[/] {summary}")
        console.print(f"[bold]{'lora_to_base':16}[/] fold a LoRA adapter into its base model")
        console.print(f"[bold]{'lora_combine':16}[/] several LoRA adapters → one (concat ranks, or SVD to a rank)")
        return 0
    if not args.config:
        raise ConfigError("no merge config given", hint="tunesmith merge CONFIG.yaml (see --help)")
    config = load_config(args.config)
    if args.search and not (isinstance(config, MergeConfig) and config.search and args.suite):
        raise ConfigError("--search needs a model merge whose config has a `search:` section, and --eval SUITES",
                          where=args.config)
    suite = None
    if args.suite:
        if not isinstance(config, MergeConfig):
            raise ConfigError("--eval applies to model merges, not adapter operations", where=args.config)
        from ..merging.evaluate import load_suite, load_task_data, task_sources

        suite = load_suite(args.suite)  # suite, sources and data are checked before the merge starts
        task_sources(suite, _sources(config), args.suite)
        load_task_data(suite)
    if args.search:
        return _search(args, config, suite, console, reporter)
    out = api.merge(config, out=args.out, overwrite=args.overwrite,
                    reporter=Reporter() if args.no_progress else reporter)
    console.print(f"[green]merged →[/] {out}")
    if suite is None:
        return 0
    from ..merging.evaluate import evaluate_merge

    report = evaluate_merge(str(out), _sources(config), suite, reporter=reporter)
    print_merge_report(report, console)
    atomic_write_json(Path(out) / "merge_eval.json", report.to_dict())
    return 1 if (report.flags and args.fail_on_flag) else 0


def _sources(config) -> dict[str, str]:
    from ..api import merge_sources

    return merge_sources(config)


def _search(args, config, suite, console, reporter) -> int:
    from rich.table import Table

    from ..errors import ConfigError
    from ..io import atomic_write_json
    from ..merging.search import search_merge

    out = Path(args.out or config.output or "")
    if not str(out) or str(out) == ".":
        raise ConfigError("no output folder", where="output", hint="set `output:` or pass --out")

    def show(i, trial):
        console.print(f"trial {i}: {config.search.param}={list(trial.values)} worst retention "
                      f"{trial.objective[0]:.1%}, mean {trial.objective[1]:.1%}")

    chosen, trials = search_merge(config, suite, _sources(config), out, overwrite=args.overwrite, on_trial=show,
                                  reporter=reporter)
    table = Table(title=f"search over {config.search.param} (objective: worst-task retention)")
    table.add_column(config.search.param)
    table.add_column("worst retention", justify="right")
    table.add_column("mean retention", justify="right")
    best = max(trials, key=lambda t: t.objective)
    for trial in trials:
        mark = " ←" if trial is best else ""
        table.add_row(str(list(trial.values)) + mark, f"{trial.objective[0]:.1%}", f"{trial.objective[1]:.1%}")
    console.print(table)
    print_merge_report(best.report, console)
    atomic_write_json(out / "merge_eval.json", {**best.report.to_dict(), "search": [
        {"values": list(t.values), "worst_retention": t.objective[0], "mean_retention": t.objective[1]}
        for t in trials]})
    console.print(f"[green]best merge →[/] {out}")
    return 1 if (best.report.flags and args.fail_on_flag) else 0


def print_merge_report(report, console) -> None:
    """Each model's score per task, the merge's retention of its sources, and the flags."""
    from rich.markup import escape
    from rich.table import Table

    better = "lower is better" if report.metric == "loss" else "higher is better"
    table = Table(title=f"merge evaluation — {report.metric} ({better})")
    table.add_column("model")
    for task in report.tasks:
        table.add_column(task, justify="right")
    table.add_column("average", justify="right")
    table.add_column("worst", justify="right")
    for label, scores in report.scores.items():
        table.add_row(label, *(f"{scores[t]:.4f}" for t in report.tasks), f"{report.average(label):.4f}",
                      f"{report.worst(label):.4f}")
    if report.retention:
        table.add_row("[dim]merged retention[/]", *(f"{report.retention[t]:.0%}" if t in report.retention else "-"
                                                    for t in report.tasks), "", f"{report.worst_retention:.0%}")
    console.print(table)
    for flag in report.flags:
        console.print(f"[bold yellow]warning:[/] {escape(flag)}")
    if not report.flags:
        console.print("[green]no task fell below its source's min_retention[/]")
