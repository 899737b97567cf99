"""`tunesmith adapters`: write and check adapter-set manifests (several LoRA adapters over one base)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

EPILOG = """examples:
  tunesmith train examples/lora.yaml training.output_dir=runs/support data.train.0.path=support.json
  tunesmith train examples/lora.yaml training.output_dir=runs/sql data.train.0.path=sql.json
  tunesmith adapters add tasks.yaml support runs/support   # creates tasks.yaml, its base the run's own
  tunesmith adapters add tasks.yaml sql runs/sql
  tunesmith adapters check tasks.yaml
  tunesmith chat tasks.yaml --adapter sql                  # /adapter NAME switches
  tunesmith serve tasks.yaml                               # the request's model field picks the adapter
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("adapters", help="adapter sets: several LoRA adapters served over one base",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                              description="Write and check an adapter set's manifest (docs/multitask.md). chat, "
                                          "generate and serve take the manifest in place of a model.")
    sub = p.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND")
    pp = sub.add_parser("add", help="add a run folder (or a PEFT LoRA folder) to a set; creates the set if missing")
    pp.add_argument("set", help="the set's manifest (.yaml)")
    pp.add_argument("name", help="the adapter's name (also the OpenAI model id under `serve`)")
    pp.add_argument("adapter", help="run folder or PEFT adapter folder")
    pp.add_argument("--template", default=None, help="render its prompts with this template (default: the run's)")
    pp.add_argument("--base", default=None,
                    help="a new set's base model (default: the one the adapter was trained on)")
    pp.set_defaults(func=add)
    pp = sub.add_parser("remove", help="remove an adapter from a set (its folder stays)")
    pp.add_argument("set", help="the set's manifest (.yaml)")
    pp.add_argument("name")
    pp.set_defaults(func=remove)
    pp = sub.add_parser("check", help="check a set (same base, same tokenizer) without loading weights; list it")
    pp.add_argument("set", help="the set's manifest (.yaml)")
    pp.add_argument("--trust-remote-code", action="store_true",
                    help="allow code from the model's folder or repository")
    pp.set_defaults(func=check)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _show(console: Console, manifest) -> None:
    console.print(f"base: {escape(manifest.base)} (as '{escape(manifest.base_name)}', template "
                  f"{escape(manifest.template)})", highlight=False)
    for entry in manifest.adapters.values():
        mark = " (default)" if entry.name == manifest.default else ""
        console.print(f"  {escape(entry.name)}{mark}: {escape(str(entry.path))}  template {escape(entry.template)}",
                      highlight=False)


def _ensure_yaml(path: str) -> None:
    from ..errors import ConfigError
    from ..inference.adapter_set import is_adapter_set

    if not is_adapter_set(path):
        raise ConfigError(f"an adapter set is a .yaml file, got {path}", where="SET")


def add(args) -> int:
    from ..inference.adapter_set import add_to_manifest

    return _change(args, "added", "to", lambda: add_to_manifest(args.set, args.name, args.adapter,
                                                                template=args.template, base=args.base))


def remove(args) -> int:
    from ..inference.adapter_set import remove_from_manifest

    return _change(args, "removed", "from", lambda: remove_from_manifest(args.set, args.name))


def _change(args, done: str, preposition: str, change) -> int:
    _ensure_yaml(args.set)
    manifest = change()
    console = Console()
    console.print(f"{done} {escape(args.name)} {preposition} {escape(args.set)}", highlight=False)
    _show(console, manifest)
    return 0


def check(args) -> int:
    from ..inference.adapter_set import check_adapters, read_manifest

    _ensure_yaml(args.set)
    manifest = read_manifest(args.set)
    check_adapters(manifest, trust_remote_code=args.trust_remote_code)
    console = Console()
    console.print(f"[green]ok[/]: {len(manifest.adapters)} adapters over one base", highlight=False)
    _show(console, manifest)
    return 0
