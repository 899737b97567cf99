"""What each CLI subcommand does; heavy imports happen here, inside the command, so `--help` is instant."""

from __future__ import annotations

from argparse import Namespace

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def restart_with_allocator(args: Namespace, allocator: str) -> None:
    """For commands that train on the CPU: may start this command again with tcmalloc or tbbmalloc preloaded
    (speed.cpu_allocator), but only from a real command line, never from main([...]) called in Python."""
    if getattr(args, "may_restart", False):
        from ..speed.cpu.allocator import preload_allocator

        preload_allocator(allocator)


def train(args: Namespace) -> int:
    from .. import api
    from ..config.loading import load_config
    from ..data.check import check_data_files
    from ..models.reference import check_model_reference
    from ..speed.cpu.allocator import restarted_with_allocator

    overrides = [*args.overrides, *(["training.overwrite_output_dir=true"] if args.overwrite else [])]
    cfg = load_config(args.config, overrides)  # validate before the heavy imports
    api.prepare_output(cfg, args.config)
    # The user's mistakes are reported here, before the training libraries load (twice, with the restart below).
    check_model_reference(cfg.model)
    if getattr(args, "may_restart", False) and not restarted_with_allocator():
        check_data_files(cfg)
    restart_with_allocator(args, cfg.speed.cpu_allocator)
    if getattr(args, "nproc", None) is not None:
        api.train_processes(cfg, args.config, overrides, nproc=args.nproc, resume=args.resume,
                            show_log=getattr(args, "show_log", False))
        return 0
    from .render import ConsoleReporter

    api.train(cfg, resume=args.resume, reporter=ConsoleReporter(console))
    return 0


def data_preview(args: Namespace) -> int:
    from ..config.loading import load_config
    from ..data.preview import preview_samples
    from ..data.templates.registry import get_template
    from ..models.loading import load_tokenizer
    from .render_data import preview_renderable

    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.data.template, tokenizer)
    Console().print(preview_renderable(preview_samples(cfg.data, tokenizer, template, n=args.num)))
    return 0


def _generator(args: Namespace):
    from .. import api
    from ..errors import ConfigError
    from ..inference.adapter_set import is_adapter_set, load_adapter_set, unknown_adapter

    adapter = getattr(args, "adapter", None)
    if not is_adapter_set(args.model):
        if adapter is not None:
            raise ConfigError("--adapter chooses an adapter of a set: pass the set's manifest (.yaml)",
                              where="--adapter")
        with console.status(f"loading {args.model}"):
            model = api.load(args.model, dtype=args.dtype, template=args.template,
                             trust_remote_code=args.trust_remote_code)
        return model.generator()
    from ..inference.adapter_set import read_manifest
    from ..inference.generation import Generator

    if args.template is not None:
        raise ConfigError("an adapter set keeps a template per adapter; set it in the manifest", where="--template")
    manifest = read_manifest(args.model)  # a bad manifest or --adapter fails before the model loads
    if adapter == "auto" and manifest.router is None:
        raise ConfigError("'auto' needs a router: the set has no `router:` section", where="--adapter",
                          hint="docs/multitask.md, Routing")
    if adapter not in (None, "auto") and adapter != manifest.base_name and adapter not in manifest.adapters:
        raise unknown_adapter(args.model, adapter, [manifest.base_name, *manifest.adapters], where="--adapter")
    with console.status(f"loading {args.model} ({len(manifest.adapters)} adapters)"):
        adapter_set = load_adapter_set(manifest, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        if manifest.router is not None and manifest.router.classifier is not None:  # loaded once, for every request
            api.load_router(adapter_set, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    generator = Generator(adapter_set.loaded(), adapter_set)
    if adapter is not None:
        generator.use(adapter)
    return generator


def _sampling(args: Namespace):
    from ..inference.generation import SamplingOptions

    options = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)
    return options.check({name: "--" + name.replace("_", "-") for name in vars(options)})  # before the model loads


def chat(args: Namespace) -> int:
    from .chat import chat_loop

    options = _sampling(args)
    chat_loop(_generator(args), options, system=args.system, console=Console())
    return 0


def generate(args: Namespace) -> int:
    from ..errors import ConfigError
    from ..inference.batch import generate_file, load_prompts
    from ..io import check_writable

    from .render import ConsoleReporter

    options = _sampling(args)
    if not 1 <= args.batch_size <= 4096:
        raise ConfigError(f"must be from 1 to 4096, got {args.batch_size}", where="--batch-size")
    check_writable(args.out, "--out")
    load_prompts(args.prompts)  # a bad prompts file fails before the model loads
    count = generate_file(_generator(args), args.prompts, args.out, options, batch_size=args.batch_size,
                          reporter=ConsoleReporter(console))
    console.print(f"wrote {count} responses to {args.out}")
    return 0


def export(args: Namespace) -> int:
    from .. import api
    from ..io import check_writable

    if args.gguf is not None:  # checks the type, the run and --out, in that order, before any loading
        return _export_gguf(args)
    check_writable(args.out, "--out", folder=True)  # a file, or a place that cannot be written: before any loading
    if not args.merge:
        console.print("[dim]--merge not given: copying the adapter as it is[/]")
    out = api.export(args.run, args.out, merge=args.merge, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    console.print(f"[green]exported[/] {out}  (loads with AutoModelForCausalLM.from_pretrained)")
    return 0


def _export_gguf(args: Namespace) -> int:
    from .. import api
    from .render import ConsoleReporter

    if args.dtype != "float32":
        console.print("[dim]--dtype is not used with --gguf (the GGUF type sets the precision)[/]")
    result = api.export_gguf(args.run, args.out, args.gguf, trust_remote_code=args.trust_remote_code,
                         reporter=ConsoleReporter(console))
    size = result.gguf.stat().st_size / 2**20
    console.print(f"[green]exported[/] {result.gguf}  ({size:.1f} MiB)")
    console.print(f"[green]Modelfile[/] {result.modelfile}  (ollama create NAME -f {result.modelfile})")
    return 0


def demo(args: Namespace) -> int:
    restart_with_allocator(args, "auto")  # the demo's config keeps the default allocator setting
    from ..demo.run import run_demo
    from .render import ConsoleReporter

    result = run_demo(out_dir=args.out, steps=args.steps, model=args.model, reporter=ConsoleReporter(console))
    table = Table(title=f"before / after LoRA ({result['steps']} steps) on probe questions not seen in training",
                  show_lines=True)
    for column in ("kind", "question", "before", "after"):
        table.add_column(column, overflow="fold")
    for probe, before, after in zip(result["probes"], result["before"], result["after"]):
        table.add_row(probe["kind"], probe["question"], before, after)
    Console().print(table)
    console.print(result["summary"], style="bold", markup=False, highlight=False)
    return 0


def methods(args: Namespace) -> int:
    from ..methods.registry import all_methods

    counts = _method_counts(args.model) if getattr(args, "model", None) else {}
    table = Table(title="fine-tuning methods (method.name)" + (f" on {args.model}" if counts else ""),
                  caption="counts at step 0 with each method's default options" if counts else None)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("saves")
    if counts:
        table.add_column("trainable", justify="right")
        table.add_column("trainable %", justify="right")
    for name, method in sorted(all_methods().items()):
        row = [name, method.description, _SAVES.get(method.artifact, method.artifact)]
        if counts:
            c = counts[name]
            row += [f"{c.trainable:,} of {c.total:,}", f"{c.percent:.4f}"] if c.error is None else [c.error, ""]
        table.add_row(*row)
    Console().print(table)
    return 0


_SAVES = {"adapter": "PEFT adapter", "full": "full model", "bottleneck": "bottleneck adapters",
          "hybrid": "PEFT adapters + bottleneck"}


def _method_counts(model: str) -> dict:
    from rich.progress import Progress

    from ..config.schema import ModelConfig
    from ..methods.counts import method_parameter_counts

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("loading the model", total=None)
        counts = method_parameter_counts(ModelConfig(name_or_path=model),
                                         on_method=lambda name: progress.update(task, description=name))
    return {c.name: c for c in counts}


def templates(args: Namespace) -> int:
    from ..data.templates.registry import available_templates

    for name in available_templates():
        print(name)
    return 0
