"""`tunesmith eval RUN_OR_MODEL --suite SUITE.yaml [--compare BASE]`: metrics, before/after report."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

EPILOG = """examples:
  tunesmith eval runs/lora --suite examples/eval_suite.yaml            metrics of the fine-tuned run
  tunesmith eval runs/lora --suite examples/eval_suite.yaml --compare base   the same prompts through the base model
  tunesmith eval runs/lora --suite suite.yaml --compare other/model --out reports/lora
  tunesmith eval tasks.yaml --compare base   every adapter of a set on its own suite, and the base alone
  tunesmith eval tasks.yaml --router-data routing.jsonl   the set's router's accuracy on labelled prompts
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a run or model with a suite; --compare for a before/after report",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Run the tasks of SUITE.yaml (perplexity, generation metrics and instruction checks, "
                    "classification, LLM judge, preference accuracy; see docs/evaluation.md) and write results.json, report.md and "
                    "report.html with plots.")
    p.add_argument("model", help="run folder, HF folder, GGUF file, hub id, smollm2-135m-instruct, or an adapter set "
                                 "(.yaml: every adapter on its manifest `suite:`, one summary report)")
    p.add_argument("--suite", default=None,
                   help="SUITE.yaml (an adapter set: for the adapters without a suite of their own)")
    p.add_argument("--compare", default=None, metavar="BASE",
                   help="a second model to run the same prompts through; 'base' = the run's own base model")
    p.add_argument("--out", default=None, help="report folder (default: RUN/eval/SUITE_NAME, or eval/SUITE_NAME)")
    p.add_argument("--router-data", nargs="?", const="", default=None, metavar="LABELLED",
                   help="an adapter set: score its router instead of the suites, on prompts labelled with their "
                        "adapter (JSONL/CSV with 'prompt' and 'adapter'; alone: the manifest's router.eval_data)")
    p.add_argument("--template", default=None, help="override the template (default: the run's own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from .. import api
    from ..errors import ConfigError
    from ..inference.adapter_set import is_adapter_set
    from .render import ConsoleReporter

    console = Console(stderr=True)
    if args.router_data is not None:
        if not is_adapter_set(args.model):
            raise ConfigError("--router-data scores an adapter set's router: pass the set's manifest (.yaml)",
                              where="--router-data")
        return _eval_router(args, console)
    if is_adapter_set(args.model):
        return _eval_set(args, console)
    if args.suite is None:
        raise ConfigError("name the evaluation suite", where="--suite", hint="--suite SUITE.yaml (docs/evaluation.md)")
    result = api.evaluate(args.model, args.suite, compare=args.compare, out=args.out, dtype=args.dtype,
                          template=args.template, trust_remote_code=args.trust_remote_code,
                          reporter=ConsoleReporter(console))
    if result.comparison is None:
        _print_single(console, result.tuned)
    else:
        _print_comparison(console, result.comparison)
    console.print(f"[green]report[/] {result.report_md}  ·  {result.report_html}")
    return 0


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
    for r in comparison.get("head_to_head", []):
        console.print(f"head to head on {r['task']} ({r['judge']} judging): win rate {r['win_rate']:.3f}, "
                      f"{r['wins']} wins / {r['ties']} ties / {r['losses']} losses, "
                      f"order consistency {r['consistency']:.2f}" + (f", {r['unparsed']} unparsed" if r["unparsed"]
                                                                     else ""))


def _eval_router(args, console: Console) -> int:
    from .. import api
    from ..errors import ConfigError

    for flag, value in (("--suite", args.suite), ("--compare", args.compare), ("--template", args.template)):
        if value is not None:
            raise ConfigError("--router-data scores the router alone; run the suites without it", where=flag)
    with console.status("loading the router"):
        evaluation = api.evaluate_router(args.model, args.router_data or None, out=args.out, dtype=args.dtype,
                                         trust_remote_code=args.trust_remote_code)
    result = evaluation.result
    console.print(f"router accuracy {result['accuracy']:.4f} ({result['correct']} of {result['samples']} prompts)",
                  highlight=False)
    table = Table(title="true (rows) vs routed (columns)")
    table.add_column("true \\ routed")
    for name in result["labels"]:
        table.add_column(name, justify="right")
    for name, row in zip(result["labels"], result["confusion_matrix"]):
        table.add_row(name, *map(str, row))
    console.print(table)
    console.print(f"[green]report[/] {evaluation.report_md}")
    return 0


def _eval_set(args, console: Console) -> int:
    from .. import api
    from ..errors import ConfigError
    from .render import ConsoleReporter

    if args.compare not in (None, "base"):
        raise ConfigError("an adapter set compares with its own base only", where="--compare", hint="--compare base")
    if args.template is not None:
        raise ConfigError("an adapter set keeps a template per adapter; set it in the manifest", where="--template")
    result = api.evaluate_set(args.model, suite=args.suite, compare_base=args.compare == "base", out=args.out,
                              dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                              reporter=ConsoleReporter(console))
    for comparison in (result.comparison or {}).values():
        _print_comparison(console, comparison)
    if result.comparison is None:
        for tuned in result.tuned.values():
            _print_single(console, tuned)
    console.print(f"[green]report[/] {result.report_md}")
    return 0
