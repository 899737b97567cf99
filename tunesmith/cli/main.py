"""The `tunesmith` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from rich.console import Console
from rich.markup import escape

from ..errors import TunesmithError
from . import commands

# Further command groups live in their own modules under tunesmith/cli/, each exposing `register(subparsers)`;
# `data` subcommands likewise expose `register_data(data_subparsers)`.
COMMAND_MODULES: list[str] = ["serve", "adapters", "classify", "merge", "eval", "plan", "analyze", "continual", "ui"]
DATA_COMMAND_MODULES: list[str] = ["data_tools"]

EPILOG = """examples:
  tunesmith demo                                   fine-tune SmolLM2-135M offline and show before/after
  tunesmith train examples/lora.yaml               fine-tune with a config
  tunesmith train examples/lora.yaml training.learning_rate=1e-4 method.r=8
  tunesmith train examples/lora.yaml --resume      continue from the latest complete checkpoint
  tunesmith data preview examples/lora.yaml        see which tokens are trained on
  tunesmith chat runs/lora                         talk to the result
  tunesmith generate runs/lora --prompts prompts.jsonl --out answers.jsonl
  tunesmith export runs/lora --merge --out merged  a standalone Hugging Face model
  tunesmith export runs/lora --gguf q4_k_m --out gguf   a GGUF file and an Ollama Modelfile
  tunesmith adapters add tasks.yaml sql runs/sql   several adapters over one base (docs/multitask.md)
"""


VERBOSE_HELP = "also show tunesmith's internal log on the console (what a run chose and why; always in its train.log)"


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=256)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0)
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--template", default=None, help="override the template (default: the run's own)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow code from the model's folder or repository (never allowed by a run folder itself)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn a general pretrained language model into your own: fine-tune, chat, export.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", dest="show_log", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fine-tune a model. The YAML has sections model, method, data, training "
                                   "(see examples/). Any field can be overridden as section.key=value.",
                       epilog="example: tunesmith train examples/lora.yaml training.max_steps=50 method.r=8")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.learning_rate=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing folder that is not a tunesmith run (training.overwrite_output_dir)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train in N processes on this machine (one per GPU; on CPUs gloo), as distributed.strategy "
                        "says; several machines: docs/distributed.md")
    p.add_argument("-v", "--verbose", action="store_true", dest="show_log", default=argparse.SUPPRESS,
                   help=VERBOSE_HELP)
    p.set_defaults(func=commands.train)

    p = sub.add_parser("data", help="inspect training data")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    pp = data_sub.add_parser("preview", help="show rendered samples with trained and masked tokens told apart")
    pp.add_argument("config", help="YAML config file")
    pp.add_argument("overrides", nargs="*", help="section.key=value overrides")
    pp.add_argument("-n", "--num", type=int, default=1, help="how many samples")
    pp.set_defaults(func=commands.data_preview)
    for name in DATA_COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register_data(data_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    p = sub.add_parser("chat", help="chat with a run or a model in the terminal (streamed)")
    p.add_argument("model", help="run folder, HF folder, GGUF file, hub id, smollm2-135m-instruct, or an adapter set "
                                 "(.yaml, docs/multitask.md)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--adapter", default=None, metavar="NAME",
                   help="with an adapter set (MODEL is its .yaml): the adapter to start with (/adapter NAME switches; auto: the "
                        "manifest's router picks one per message)")
    _sampling_args(p)
    p.set_defaults(func=commands.chat)

    p = sub.add_parser("generate", help="batched generation from a prompts file to JSONL")
    p.add_argument("model", help="run folder, HF folder, GGUF file, hub id, or an adapter set (.yaml)")
    p.add_argument("--prompts", required=True,
                   help="JSON/JSONL with prompt, instruction(+input) or messages (and, for a set, an optional "
                        "'adapter'); or .txt, one prompt a line")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--adapter", default=None, metavar="NAME",
                   help="with an adapter set (MODEL is its .yaml): the adapter for records without an 'adapter' field "
                        "(auto: the manifest's router picks)")
    _sampling_args(p)
    p.set_defaults(func=commands.generate)

    p = sub.add_parser("export", help="write a run as a standalone Hugging Face model, or as GGUF for llama.cpp/Ollama",
                       epilog="examples:\n  tunesmith export runs/lora --merge --out merged\n"
                              "  tunesmith export runs/lora --gguf q4_k_m --out gguf   # GGUF + Ollama Modelfile",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    p.add_argument("--gguf", default=None, metavar="TYPE",
                   help="write a GGUF file (merged; tokenizer and chat template inside) and an Ollama Modelfile: "
                        "f16, q8_0, q4_k_m (also f32, q5_k_m, q6_k; k-quants need llama-cpp-python)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code from the model's folder or repository (never allowed by a run folder itself)")
    p.set_defaults(func=commands.export)

    p = sub.add_parser("demo", help="offline demo: teach SmolLM2-135M a persona with LoRA, show before/after")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model")
    p.set_defaults(func=commands.demo)

    p = sub.add_parser("methods", help="list fine-tuning methods")
    p.add_argument("--model", default=None,
                   help="also show each method's exact trainable parameter count and %% on this model")
    p.set_defaults(func=commands.methods)
    p = sub.add_parser("templates", help="list chat templates")
    p.set_defaults(func=commands.templates)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_library_chatter() -> None:
    """Messages from the libraries underneath that a tunesmith user cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside the libraries
    # datasets draws a bar for every cache write and map; tunesmith's own "preparing data" line covers that step.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes logs this when imported on an AVX512-BF16 CPU without the `kernels` package, which fetches kernels
    # from the Hugging Face hub. PEFT imports bitsandbytes, so every LoRA command printed it, quantised or not. The
    # kernel it names serves one-row 4-bit inference (gemv); bitsandbytes' built-in path is used instead.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # ... and the `kernels` package (a transformers dependency) says so first when the hub is offline.
    logging.getLogger("kernels._internals.hf_hub").addFilter(_DropMessage("Skipping publisher trust check"))


def _rank() -> str:
    """`[rank N] ` in a process of several but rank 0 (a launcher set RANK): which one failed."""
    rank = os.environ.get("RANK")
    return escape(f"[rank {rank}] ") if rank not in (None, "0") else ""


def _report(console: Console, exc: TunesmithError) -> int:
    console.print(f"{_rank()}[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    # Only a real command line (not main([...]) called from Python, e.g. a test) may restart its own process
    # (speed.cpu_allocator: tcmalloc or tbbmalloc is preloaded by starting the command again).
    args.may_restart = argv is None
    # Long paths in messages must stay on one line so that file, line and field can be read (and grepped).
    console = Console(stderr=True, soft_wrap=True)
    quiet_library_chatter()
    if getattr(args, "show_log", False):
        from .render import show_internal_log

        show_internal_log(console)
    try:
        return int(args.func(args) or 0)
    except TunesmithError as exc:
        return _report(console, exc)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:  # an internal failure, not the user's input
        if os.environ.get("TUNESMITH_DEBUG"):
            raise
        from ..io import environment_error

        if (machine := environment_error(exc)) is not None:  # disk full, read-only place: the machine's, not ours
            return _report(console, machine)
        console.print(f"{_rank()}[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                      f"  rerun with TUNESMITH_DEBUG=1 for the full traceback, and please report it",
                      highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
