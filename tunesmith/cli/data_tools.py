"""`tunesmith data check|generate|augment|mix|dedup|split|convert`: the data doctor and dataset tools."""

from __future__ import annotations

import argparse

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
FORMATS = ["auto", "alpaca", "sharegpt", "openai"]
OUT_FORMATS = ["alpaca", "sharegpt", "openai"]


def register_data(sub) -> None:
    p = sub.add_parser("check", help="data doctor: schema, lengths, diversity, accuracy, consistency, duplicates, "
                                           "preference pairs",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  tunesmith data check train.json --html report.html\n"
                              "  tunesmith data check train.json --tokenizer smollm2-135m-instruct --max-len 1024\n"
                              "  tunesmith data check train.json --against eval.json --fail-if contaminated>0 "
                              "--fail-if invalid>0\nexit codes: 0 fine, 1 a --fail-if condition (or --strict) "
                              "failed, 2 unusable input")
    p.add_argument("file", help="JSON/JSONL/CSV/Parquet file (Alpaca, ShareGPT or OpenAI records)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--tokenizer", default=None, help="measure lengths in this model's tokens")
    p.add_argument("--template", default=None, help="count the template's tokens too (with --tokenizer)")
    p.add_argument("--max-len", type=int, default=None, help="flag samples longer than this many tokens")
    p.add_argument("--against", action="append", default=[], metavar="EVAL_FILE",
                   help="eval set to check for overlap (contamination); repeatable")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--html", default=None, metavar="OUT", help="write an HTML report with charts")
    p.add_argument("--fail-if", action="append", default=[], metavar="COND",
                   help="CI gate, e.g. 'invalid>0', 'near_duplicate_rate>0.02' (metrics: see the JSON summary)")
    p.add_argument("--strict", action="store_true", help="fail on any error-severity finding")
    p.add_argument("--show", type=int, default=3, help="examples printed per check")
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard for near duplicates")
    p.add_argument("--max-task-share", type=float, default=0.6, help="warn when one task type exceeds this share")
    p.set_defaults(func=check)

    p = sub.add_parser("generate", help="Self-Instruct: new samples from seed tasks with a teacher model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  export TUNESMITH_TEACHER_BASE_URL=https://api.example.com/v1 "
                              "TUNESMITH_TEACHER_API_KEY=...\n"
                              "  tunesmith data generate --seeds examples/seed_tasks_zh.jsonl --teacher openai:MODEL "
                              "--num 500 --out gen.jsonl\n"
                              "  tunesmith data generate --seeds seeds.txt --teacher local:smollm2-135m-instruct "
                              "--num 20 --out gen.jsonl\nrerunning with the same --out resumes.")
    p.add_argument("--seeds", required=True, help="seed tasks: JSON/JSONL records with instruction, or .txt")
    p.add_argument("--out", required=True, help="output JSONL (appended; what is there counts as done)")
    p.add_argument("--num", type=int, default=100, help="samples wanted in --out")
    p.add_argument("--lang", choices=["zh", "en"], default=None, help="keep instructions in this language only")
    p.add_argument("--max-rouge", type=float, default=0.7, help="reject instructions this similar to the pool")
    p.add_argument("--batch-size", type=int, default=4, help="task-generation prompts per round")
    p.add_argument("--max-rounds", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _teacher_args(p)
    p.set_defaults(func=generate)

    p = sub.add_parser("augment", help="paraphrase / back-translate samples with a teacher model")
    p.add_argument("file")
    p.add_argument("--out", required=True, help="output JSONL of the variants (appended; resumable)")
    p.add_argument("--method", action="append", choices=["paraphrase", "backtranslate"], default=None,
                   help="repeatable; default paraphrase")
    p.add_argument("--field", choices=["instruction", "output", "both"], default="instruction")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--to", default="alpaca", choices=OUT_FORMATS)
    p.add_argument("--max-rouge", type=float, default=0.9, help="reject variants this close to the original")
    p.add_argument("--batch-size", type=int, default=8)
    _teacher_args(p)
    p.set_defaults(func=augment)

    p = sub.add_parser("mix", help="mix datasets by ratio (replay/general data, task prefixes)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: tunesmith data mix zh.json=0.7 'translate.json=0.2=[翻译]' "
                              "general.jsonl=0.1 --num 2000 --out mixed.jsonl")
    p.add_argument("sources", nargs="+", help="PATH, PATH=WEIGHT or PATH=WEIGHT=PREFIX")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=None, help="total samples (default: largest without repeats)")
    p.add_argument("--task-prefix", action="store_true", help="prefix each instruction with its task, e.g. [翻译]")
    p.add_argument("--to", default="alpaca", choices=OUT_FORMATS)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=mix)

    p = sub.add_parser("dedup", help="drop exact and near duplicates (and eval-set overlap)")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard for near duplicates")
    p.add_argument("--exact-only", action="store_true")
    p.add_argument("--against", action="append", default=[], metavar="EVAL_FILE", help="also drop eval overlap")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--to", default=None, choices=OUT_FORMATS, help="convert too (default: records unchanged)")
    p.set_defaults(func=dedup)

    p = sub.add_parser("split", help="train/validation/test split, stratified by task, near-duplicate safe")
    p.add_argument("file")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--validation", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.0)
    p.add_argument("--no-stratify", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--to", default=None, choices=OUT_FORMATS)
    p.set_defaults(func=split)

    p = sub.add_parser("convert", help="convert between Alpaca, ShareGPT and OpenAI messages")
    p.add_argument("file")
    p.add_argument("--to", required=True, choices=OUT_FORMATS)
    p.add_argument("--out", required=True, help=".jsonl or .json")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.set_defaults(func=convert)


def _teacher_args(p) -> None:
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=True, help="openai:MODEL (any OpenAI-compatible endpoint) or local:PATH")
    g.add_argument("--base-url", default=None, help="endpoint (default: $TUNESMITH_TEACHER_BASE_URL, "
                                                    "$OPENAI_BASE_URL); the key comes from "
                                                    "$TUNESMITH_TEACHER_API_KEY or $OPENAI_API_KEY")
    g.add_argument("--concurrency", type=int, default=4, help="parallel HTTP requests")
    g.add_argument("--rpm", type=float, default=None, help="at most this many requests per minute")
    g.add_argument("--max-retries", type=int, default=5)
    g.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for one reply (raise it for a slow local server: a request that times out "
                        "is sent again and queues behind the others)")
    g.add_argument("--max-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.7)


def _teacher(args):
    from ..data.construct.teachers import make_teacher

    with console.status(f"preparing teacher {args.teacher}"):
        return make_teacher(args.teacher, base_url=args.base_url, concurrency=args.concurrency,
                            requests_per_minute=args.rpm, max_retries=args.max_retries, timeout=args.timeout)


def _progress(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def check(args) -> int:
    from rich.console import Console as RichConsole

    from .. import api
    from ..data.doctor.gate import evaluate, parse_condition
    from ..data.doctor.report import write_html, write_json
    from .render import ConsoleReporter
    from .render_data import print_check_report

    from ..io import check_writable

    for condition in args.fail_if:
        parse_condition(condition)  # a typo fails before the work
    for flag, out in (("--json", args.json), ("--html", args.html)):
        if out:
            check_writable(out, flag)  # a missing folder or a read-only place fails before the work
    report = api.check_data(args.file, format=args.format, tokenizer=args.tokenizer, template=args.template,
                            max_len=args.max_len, against=args.against, near_duplicate_threshold=args.near_threshold,
                            max_task_share=args.max_task_share, reporter=ConsoleReporter(console))
    failures = evaluate(report.summary, args.fail_if, args.strict)
    gate = failures if (args.fail_if or args.strict) else None
    print_check_report(report, RichConsole(soft_wrap=True), show=args.show)
    if args.json:
        write_json(report, args.json, gate)
        console.print(f"JSON report: {args.json}")
    if args.html:
        write_html(report, args.html, gate)
        console.print(f"HTML report: {args.html}")
    if failures:
        console.print("[bold red]gate failed:[/] " + "; ".join(failures), highlight=False)
        return 1
    if gate is not None:
        console.print("[green]gate passed[/]")
    return 0


def generate(args) -> int:
    from ..data.construct.self_instruct import SelfInstructConfig, read_seed_tasks, self_instruct
    from ..data.construct.teachers import TeacherOptions

    seeds = read_seed_tasks(args.seeds)
    teacher = _teacher(args)
    cfg = SelfInstructConfig(num=args.num, batch_size=args.batch_size, max_rouge=args.max_rouge,
                             language=args.lang, max_rounds=args.max_rounds, seed=args.seed,
                             instruction_options=TeacherOptions(max_tokens=min(args.max_tokens, 384),
                                                                temperature=max(args.temperature, 0.7)),
                             answer_options=TeacherOptions(max_tokens=args.max_tokens,
                                                           temperature=args.temperature))
    with _progress("generating") as progress:
        task = progress.add_task("generating", total=args.num)
        result = self_instruct(teacher, seeds, args.out, cfg,
                               progress=lambda done, total: progress.update(task, completed=done))
    console.print(f"{result.written} new samples ({result.total} in {args.out}) after {result.rounds} rounds")
    if result.rejected:
        console.print("rejected: " + ", ".join(f"{k} {v}" for k, v in result.rejected.most_common()))
    if result.total < args.num:
        console.print(f"[yellow]stopped short of --num {args.num}: the teacher's tasks kept failing the filters "
                      f"(raise --max-rounds, or use a stronger teacher); rerun to continue[/]")
        return 1
    return 0


def augment(args) -> int:
    from ..data.construct.augment import AugmentConfig, augment_file
    from ..data.construct.teachers import TeacherOptions

    teacher = _teacher(args)
    cfg = AugmentConfig(methods=tuple(args.method or ["paraphrase"]), field=args.field, batch_size=args.batch_size,
                        max_rouge=args.max_rouge,
                        options=TeacherOptions(max_tokens=args.max_tokens, temperature=args.temperature))
    with _progress("augmenting") as progress:
        task = progress.add_task("augmenting", total=None)
        written, rejected = augment_file(teacher, args.file, args.out, cfg, fmt=args.format, to=args.to,
                                         progress=lambda done, total: progress.update(task, completed=done,
                                                                                      total=total))
    console.print(f"{written} variants appended to {args.out}")
    if rejected:
        console.print("rejected: " + ", ".join(f"{k} {v}" for k, v in rejected.most_common()))
    return 0


def mix(args) -> int:
    from ..data.tools.mix import mix_files, parse_source

    sources = [parse_source(text) for text in args.sources]
    counts = mix_files(sources, args.out, to=args.to, total=args.num, seed=args.seed, task_prefix=args.task_prefix)
    total = sum(counts.values())
    for path, count in counts.items():
        console.print(f"  {path}: {count} ({count / total:.1%})", highlight=False)
    console.print(f"{total} samples written to {args.out}")
    return 0


def dedup(args) -> int:
    from ..data.tools.dedup import dedup_file

    with console.status("deduplicating"):
        result = dedup_file(args.file, args.out, to=args.to, fmt=args.format, threshold=args.threshold,
                            near=not args.exact_only, against=args.against)
    console.print(f"kept {result.kept}; removed {result.exact} exact, {result.near} near duplicates"
                  + (f", {result.contaminated} overlapping the eval set" if args.against else "")
                  + f" → {args.out}")
    return 0


def split(args) -> int:
    from ..data.tools.split import split_file

    with console.status("splitting"):
        counts = split_file(args.file, args.out_dir, validation=args.validation, test=args.test, seed=args.seed,
                            stratify=not args.no_stratify, fmt=args.format, to=args.to)
    console.print(", ".join(f"{name} {count}" for name, count in counts.items()) + f" → {args.out_dir}")
    return 0


def convert(args) -> int:
    from ..data.tools.convert import convert_file

    count = convert_file(args.file, args.out, args.to, args.format)
    console.print(f"{count} records written to {args.out} ({args.to})")
    return 0
