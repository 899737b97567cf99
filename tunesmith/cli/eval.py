"""`tunesmith eval RUN_OR_MODEL --suite SUITE.yaml [--compare BASE]`: metrics, before/after report."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

EPILOG = """examples:
  tunesmith eval runs/lora --suite examples/eval_suite.yaml            metrics of the fine-tuned run
  tunesmith eval runs/lora --suite examples/eval_suite.yaml --compare base   the same prompts through the base model
  tunesmith eval runs/lora --suite suite.yaml --compare other/model --out reports/lora
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a run or model with a suite; --compare for a before/after report",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Run the tasks of SUITE.yaml (perplexity, generation metrics and instruction checks, "
                    "classification, LLM judge, preference accuracy; see docs/evaluation.md) and write results.json, report.md and "
                    "report.html with plots.")
    p.add_argument("model", help="run folder, HF folder, GGUF file, hub id, or smollm2-135m-instruct")
    p.add_argument("--suite", required=True, help="SUITE.yaml")
    p.add_argument("--compare", default=None, metavar="BASE",
                   help="a second model to run the same prompts through; 'base' = the run's own base model")
    p.add_argument("--out", default=None, help="report folder (default: RUN/eval/SUITE_NAME, or eval/SUITE_NAME)")
    p.add_argument("--template", default=None, help="override the template (default: the run's own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    import gc
    from pathlib import Path

    from ..errors import ConfigError
    from ..evaluation.suite import load_suite
    from ..io import atomic_write_json
    from ..models.loading import read_run_meta

    console = Console(stderr=True)
    from ..evaluation.data import check_task_data

    from ..evaluation.runner import check_suite_for

    suite = load_suite(args.suite)  # the suite and all its data are validated before any model loads
    check_task_data(suite)
    meta = read_run_meta(args.model) if Path(args.model).is_dir() else None
    check_suite_for(meta, suite)
    base_ref = args.compare
    if base_ref == "base":
        if meta is None:
            raise ConfigError("--compare base needs a tunesmith run folder (it names its base model)",
                              where="--compare", hint="pass the base model's path instead")
        base_ref = meta["base_model"]["name_or_path"]
    out = Path(args.out) if args.out else (Path(args.model) / "eval" if meta else Path("eval")) / suite.name

    from ..evaluation.compare import compare_results
    from ..evaluation.report import write_report

    tuned_label = _label(args.model, "tuned" if base_ref else None)
    tuned, template = _evaluate(args, args.model, suite, tuned_label, args.template, console)
    out.mkdir(parents=True, exist_ok=True)
    if not base_ref:
        atomic_write_json(out / "results.json", tuned)
        md, page = write_report([tuned], out)
        _print_single(console, tuned)
    else:
        gc.collect()
        # The base answers the same prompts, rendered with the fine-tuned model's template.
        base, _ = _evaluate(args, base_ref, suite, _label(base_ref, "base"), template, console)
        comparison = compare_results(base, tuned)
        atomic_write_json(out / "results.json", {"base": base, "tuned": tuned, "comparison": comparison})
        md, page = write_report([base, tuned], out, comparison)
        _print_comparison(console, comparison)
    console.print(f"[green]report[/] {md}  ·  {page}")
    return 0


def _label(ref: str, role: str | None) -> str:
    from pathlib import Path

    name = Path(ref.rstrip("/")).name or ref
    return f"{role}: {name}" if role else name


def _evaluate(args, ref: str, suite, label: str, template: str | None, console: Console):
    from ..evaluation.runner import evaluate_suite, load_evaluated
    from .render import ConsoleReporter

    with console.status(f"loading {ref}"):
        loaded = load_evaluated(ref, dtype=args.dtype, template=template, trust_remote_code=args.trust_remote_code)
    result = evaluate_suite(loaded, suite, label=label, reporter=ConsoleReporter(console))
    return result, loaded.template_name


def _print_single(console: Console, result: dict) -> None:
    table = Table(title=result["model"])
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, t in result["tasks"].items():
        for metric, value in t["metrics"].items():
            table.add_row(task, metric, f"{value:.4g}")
    console.print(table)


def _print_comparison(console: Console, comparison: dict) -> None:
    table = Table(title=f"{comparison['tuned']} vs {comparison['base']}")
    for col in ("task", "metric", "before", "after", "change"):
        table.add_column(col)
    for r in comparison["rows"]:
        colour = {True: "green", False: "red", None: "white"}[r["improved"]]
        table.add_row(r["task"], r["metric"], f"{r['before']:.4g}", f"{r['after']:.4g}",
                      f"[{colour}]{r['delta']:+.4g}[/]")
    console.print(table)
    for r in comparison["forgetting"]:
        console.print(f"forgetting on {r['task']} ({r['metric']}): {100 * r['rate']:+.1f}%")
