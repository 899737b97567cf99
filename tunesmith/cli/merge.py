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
  tunesmith merge examples/merge_ties.yaml --diagnose            compare the task vectors (sign conflict, cosine,
                                                                 magnitudes per layer), recommend a method or
                                                                 per-task adapters; merges nothing
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
    p.add_argument("--diagnose", action="store_true",
                   help="diagnose the task vectors and recommend a method (or per-task adapters); no merge")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="for --diagnose: the base of full models when the config has no base_model (linear, slerp)")
    p.add_argument("--density", type=float, default=None,
                   help="for the diagnosis: share of each tensor's largest entries kept (default: the config's "
                        "density, else 0.2 as TIES)")
    p.add_argument("--no-diagnose", action="store_true", help="skip the one-line diagnosis before a merge")
    p.set_defaults(func=merge_command)


def merge_command(args) -> int:
    from rich.console import Console
    from rich.markup import escape

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
    if args.diagnose:
        from ..merging.diagnose import summary_line

        diagnosis = api.diagnose_merge(config, base=args.base, density=args.density)
        print_diagnosis(diagnosis, console)
        console.print(f"[bold]recommendation:[/] {escape(summary_line(diagnosis))}")
        return 0
    if args.search and not (isinstance(config, MergeConfig) and config.search and args.suite):
        raise ConfigError("--search needs a model merge whose config has a `search:` section, and --eval SUITES",
                          where=args.config)
    suite = None
    if args.suite:
        if not isinstance(config, MergeConfig):
            raise ConfigError("--eval applies to model merges, not adapter operations", where=args.config)
        from ..merging.evaluate import load_suite, load_task_data, task_sources

        suite = load_suite(args.suite)  # suite, sources and data are checked before the merge starts
        task_sources(suite, api.merge_sources(config), args.suite)
        load_task_data(suite)
    if not args.no_diagnose:
        _diagnosis_line(config, args, console)
    if args.search:
        return _search(args, config, suite, console, reporter)
    out = api.merge(config, out=args.out, overwrite=args.overwrite,
                    reporter=Reporter() if args.no_progress else reporter)
    console.print(f"[green]merged →[/] {out}")
    if suite is None:
        return 0
    from ..merging.evaluate import evaluate_merge

    report = evaluate_merge(str(out), api.merge_sources(config), suite, reporter=reporter)
    print_merge_report(report, console)
    atomic_write_json(Path(out) / "merge_eval.json", report.to_dict())
    return 1 if (report.flags and args.fail_on_flag) else 0


def _diagnosis_line(config, args, console) -> None:
    """The diagnosis in one line before a merge; where there is nothing to compare (one task vector, full models
    without a base) it says why in one dim line instead."""
    from rich.markup import escape

    from .. import api
    from ..errors import TunesmithError
    from ..merging.diagnose import summary_line

    try:
        diagnosis = api.diagnose_merge(config, base=args.base, density=args.density)
    except TunesmithError as exc:
        console.print(f"[dim]no task-vector diagnosis: {escape(exc.message)}[/]")
        return
    except (ValueError, RuntimeError, KeyError) as exc:  # advisory only: the merge itself must not fail here
        console.print(f"[dim]no task-vector diagnosis: {type(exc).__name__}: {escape(str(exc))}[/]")
        return
    console.print(f"diagnosis: {escape(summary_line(diagnosis))}")


def print_diagnosis(diagnosis, console) -> None:
    """Per layer: sign conflict (and its chance level), cosine of every pair, each task vector's norm ratio. Tasks
    are numbered in the columns (names would not fit a terminal with three or more), with a legend."""
    from rich.markup import escape
    from rich.table import Table

    labels = diagnosis.labels
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    table = Table(title=f"task vectors (top {diagnosis.density:.0%} of each tensor kept for the sign conflict)")
    table.add_column("layer")
    table.add_column("conflict", justify="right")
    table.add_column("chance", justify="right")
    for i, j in pairs:
        table.add_column(f"cos {i + 1}·{j + 1}", justify="right")
    for i in range(len(labels)):
        table.add_column(f"norm {i + 1}", justify="right")
    for k, group in enumerate([*diagnosis.layers, diagnosis.whole]):
        style = "bold" if group is diagnosis.whole else None
        table.add_row(group.name, f"{group.conflict:.1%}", f"{group.chance:.1%}",
                      *(f"{group.cosine[i][j]:+.3f}" for i, j in pairs),
                      *(f"{r:.2f}x" for r in group.ratios), style=style,
                      end_section=k == len(diagnosis.layers) - 1)
    console.print(table)
    console.print("tasks: " + ", ".join(f"{i + 1} = {escape(label)}" for i, label in enumerate(labels)))
    console.print("[dim]conflict: of the coordinates two or more trimmed vectors share, the share whose signs "
                  "disagree (chance: what unrelated tasks give); norm: a vector's norm over the median of the "
                  "tasks'[/]")


def _search(args, config, suite, console, reporter) -> int:
    from rich.table import Table

    from .. import api
    from ..errors import ConfigError
    from ..io import atomic_write_json
    from ..merging.search import search_merge

    out = Path(args.out or config.output or "")
    if not str(out) or str(out) == ".":
        raise ConfigError("no output folder", where="output", hint="set `output:` or pass --out")

    def show(i, trial):
        console.print(f"trial {i}: {config.search.param}={list(trial.values)} worst retention "
                      f"{trial.objective[0]:.1%}, mean {trial.objective[1]:.1%}")

    chosen, trials = search_merge(config, suite, api.merge_sources(config), out, overwrite=args.overwrite, on_trial=show,
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
