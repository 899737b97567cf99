"""`tunesmith classify RUN`: label texts with a classification run (`--text ...` or `--file F --out out.jsonl`)."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="label texts with a trained classifier (a `task: classification` run)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  tunesmith classify runs/sst2 --text \"a gripping, funny film\" --text \"dull and long\"\n"
               "  tunesmith classify runs/sst2 --file reviews.csv --out predictions.jsonl\n"
               "A file that also has the label column gets accuracy, macro-F1 and a confusion matrix.")
    p.add_argument("run", help="run folder of a classification run")
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument("--pair", action="append", default=None,
                   help="second text of a sentence pair, one per --text (pair tasks)")
    p.add_argument("--file", default=None, help="CSV/TSV/JSON/JSONL/Parquet file of texts")
    p.add_argument("--out", default=None, help="output JSONL for --file (default: standard output)")
    p.add_argument("--text-column", default=None, help="text column of --file (default: the run's own)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code from the model's folder or repository (never allowed by a run folder itself)")
    p.set_defaults(func=classify)


def classify(args) -> int:
    from ..errors import ConfigError
    from ..tasks.classification.inference import load_classifier

    if bool(args.text) == bool(args.file):
        raise ConfigError("give either --text (one or more) or --file", where="tunesmith classify",
                          hint="e.g. --text \"great hotel\" or --file reviews.csv --out predictions.jsonl")
    if args.pair is not None and len(args.pair) != len(args.text):
        raise ConfigError(f"{len(args.pair)} --pair for {len(args.text)} --text", where="tunesmith classify",
                          hint="give one --pair per --text")
    console = Console(stderr=True)
    with console.status(f"loading {args.run}"):
        classifier = load_classifier(args.run, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    if args.text:
        for text, result in zip(args.text, classifier.predict(args.text, args.pair, batch_size=args.batch_size)):
            print(json.dumps({"text": text, **result}, ensure_ascii=False))
        return 0
    return _classify_file(args, classifier, console)


def _classify_file(args, classifier, console: Console) -> int:
    from ..config.schema import ClassificationConfig, DatasetSpec
    from ..tasks.classification.data import label_id, read_examples
    from ..tasks.classification.metrics import classification_report
    from ..tasks.classification.report import confusion_table

    task = ClassificationConfig(**{k: v for k, v in classifier.meta["classification"].items()})
    if args.text_column:
        task = task.model_copy(update={"text_column": args.text_column})
    examples = read_examples(DatasetSpec(path=args.file), task, with_labels=False)
    pairs = [e.pair for e in examples] if task.text_pair_column else None
    with console.status(f"classifying {len(examples)} texts"):
        results = classifier.predict([e.text for e in examples], pairs, batch_size=args.batch_size)
    lines = [json.dumps({"line": e.record.line, "text": e.text, **r}, ensure_ascii=False)
             for e, r in zip(examples, results)]
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, "".join(line + "\n" for line in lines))
        console.print(f"wrote {len(lines)} predictions to {args.out}")
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    if all(task.label_column in e.record.data for e in examples):
        labelled = read_examples(DatasetSpec(path=args.file), task)
        truth = [label_id(e, classifier.label_names, task.label_column) for e in labelled]
        report = classification_report(truth, [r["label_id"] for r in results], classifier.label_names)
        console.print(f"against the file's '{task.label_column}' column: accuracy {report['accuracy']:.4f}, "
                      f"macro-F1 {report['macro_f1']:.4f} on {report['samples']} samples")
        console.print("\n".join(confusion_table(report["confusion_matrix"], classifier.label_names)), markup=False)
    return 0
