"""`tunesmith plan`: parameter counts, peak memory, time and budget proposals from a model's config alone."""

from __future__ import annotations

import argparse
import re

from ..errors import ConfigError

EXAMPLES = """examples:
  tunesmith plan --model smollm2-135m-instruct --method lora --batch 4 --seq 1024
  tunesmith plan --model path/to/config.json --method qlora --device cuda --gradient-checkpointing
  tunesmith plan --config examples/lora.yaml --budget 16GB --task reasoning
  tunesmith plan --model Qwen/Qwen2.5-7B --method full --devices 8 --zero-stage 3 --device cuda
  tunesmith plan --model smollm2-135m-instruct --probe --samples 5000 --epochs 3
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="predict parameters, peak memory and time before training",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                              description="Reads only the model's config (meta device, no weights) and prints exact "
                                          "parameter counts and a peak-memory breakdown for the chosen method.")
    src = p.add_argument_group("what to plan")
    src.add_argument("--model", help="hub id (needs network), local folder, config.json, or smollm2-135m-instruct")
    src.add_argument("--config", help="a tunesmith RunConfig YAML (model, method, batch, seq... from it)")
    src.add_argument("--method", default=None, help="full, lora, qlora, dora, rslora, ... (default lora)")
    src.add_argument("--rank", "-r", type=int, default=None, help="LoRA-family rank")
    src.add_argument("--targets", default=None, help="target_modules: all-linear, attention, mlp, or a,b,c")
    run = p.add_argument_group("training shape")
    run.add_argument("--batch", type=int, default=None, help="per-device batch size (default 1)")
    run.add_argument("--seq", type=int, default=None, help="sequence length (default 1024)")
    run.add_argument("--grad-accum", type=int, default=None)
    run.add_argument("--gradient-checkpointing", action="store_true", default=None)
    run.add_argument("--optimizer", default=None,
                     choices=["auto", "adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"])
    run.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="compute dtype (auto: as training picks it: bf16 on CUDA and on CPUs with AMX or "
                          "AVX512-BF16, else fp32)")
    run.add_argument("--attn", default=None, help="attention implementation (sdpa, eager, flash_attention_2)")
    run.add_argument("--supervised-share", type=float, default=None,
                     help="share of tokens whose next token is trained (replies), 0-1; the LM head and loss run only "
                          "there (speed.loss). Default 1: every token, an upper bound")
    run.add_argument("--device", default=None, choices=["cpu", "cuda"], help="target device (default: this one)")
    run.add_argument("--devices", type=int, default=1, help="data-parallel devices")
    run.add_argument("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3],
                     help="ZeRO stage (3 = FSDP; default: the config's distributed.strategy, else 0)")
    adv = p.add_argument_group("advice and time")
    adv.add_argument("--budget", default=None, help="memory budget, e.g. 16GB or 24GiB: propose configurations")
    adv.add_argument("--task", default="chat", choices=["classification", "chat", "reasoning", "translation",
                                                        "domain"], help="task type (rank advice)")
    adv.add_argument("--samples", type=int, default=None, help="training samples (data-size rule, time)")
    adv.add_argument("--low-latency", action="store_true", help="deployment needs fast inference")
    adv.add_argument("--best-quality", action="store_true", help="quality matters more than speed")
    adv.add_argument("--probe", action="store_true", help="time a few real steps here to estimate training time")
    adv.add_argument("--epochs", type=float, default=None)
    p.set_defaults(func=plan_command)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot read memory size '{text}'", where="--budget", hint="e.g. 16GB, 24GiB, 800MB")
    unit = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[match.group(2).upper()]
    return int(float(match.group(1)) * unit)


def _positive(args, name: str) -> None:
    value = getattr(args, name)
    if value is not None and value <= 0:
        raise ConfigError(f"must be positive, got {value}", where="--" + name.replace("_", "-"))


def build_request(args):
    import torch

    from ..planning import PlanRequest

    for name in ("batch", "seq", "grad_accum", "devices", "rank", "samples", "epochs"):
        _positive(args, name)
    cfg = None
    if args.config:
        from ..config.loading import load_config
        from ..planning.preflight import request_from_config

        cfg = load_config(args.config)
        request = request_from_config(cfg, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_ref = args.model or cfg.model.name_or_path
    else:
        if not args.model:
            raise ConfigError("give a model to plan for", where="--model",
                              hint="a hub id, a local folder, a config.json, or --config run.yaml")
        request = PlanRequest(device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_ref = args.model
    if args.method:
        request.method, request.method_options = args.method, {}
    for field, value in (("batch", args.batch), ("seq", args.seq), ("grad_accum", args.grad_accum),
                         ("gradient_checkpointing", args.gradient_checkpointing), ("optimizer", args.optimizer),
                         ("attn_implementation", args.attn)):
        if value is not None:
            setattr(request, field, value)
    if args.precision != "auto" or not args.config:
        request.precision = args.precision
    if request.device == "cpu" and request.precision == "fp16":
        raise ConfigError("fp16 training needs a GPU", where="--precision", hint="use fp32 or bf16 on CPU")
    if request.device == "cpu" and request.optimizer.startswith("paged"):  # as training.arguments refuses it
        raise ConfigError(f"optimizer '{request.optimizer}' needs a CUDA GPU", where="--optimizer",
                          hint="use adamw, adamw_8bit or sgd on CPU, or add --device cuda")
    if args.rank:
        request.method_options["r"] = args.rank
    if args.targets:
        request.method_options["target_modules"] = args.targets.split(",") if "," in args.targets else args.targets
    if args.supervised_share is not None:
        if not 0 < args.supervised_share <= 1:
            raise ConfigError(f"{args.supervised_share} is not a share in (0, 1]", where="--supervised-share")
        request.supervised_share = args.supervised_share
    if args.devices > 1 and request.device == "cpu":
        raise ConfigError("multi-device plans are for GPUs", where="--devices", hint="add --device cuda")
    # A config's distributed.strategy gives the stage unless --zero-stage says otherwise.
    request.devices = args.devices
    if args.zero_stage is not None:
        request.zero_stage = args.zero_stage
    return model_ref, request, cfg


def plan_command(args) -> int:
    from rich.console import Console

    from ..api import plan_model
    from ..planning.units import human
    from .render import ConsoleReporter
    from .render_plan import counts_table, memory_table

    if args.probe:  # time the steps under the allocator training uses
        from ..config.loading import load_config
        from .commands import restart_with_allocator

        restart_with_allocator(args, load_config(args.config).speed.cpu_allocator if args.config else "auto")
    out, err = Console(), Console(stderr=True)
    model_ref, request, cfg = build_request(args)
    trust = bool(cfg and cfg.model.trust_remote_code)
    plan, config = plan_model(model_ref, request, trust_remote_code=trust, reporter=ConsoleReporter(err))
    out.print(counts_table(plan, model_ref))
    out.print(memory_table(plan))
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {note}")
    if args.budget:
        from ..planning.advice import RANK_BY_TASK, propose
        from .render_plan import proposals_table

        budget = parse_size(args.budget)
        with err.status("searching configurations") as status:
            proposals = propose(config, request, budget, task=args.task, samples=args.samples,
                                low_latency=args.low_latency, best_quality=args.best_quality,
                                progress=lambda text: status.update(f"planning {text}"))
        if proposals:
            out.print(proposals_table(proposals, budget))
            out.print(f"rank advice for {args.task}: r={RANK_BY_TASK[args.task]} (reference FAQ: raise r when the "
                      f"training loss plateaus early, lower it for small datasets)")
        else:
            out.print(f"[red]nothing fits {human(budget)}[/]: even QLoRA with batch 1, checkpointing and "
                      f"sequence {max(128, request.seq // 4)} needs more; use more devices (--devices, --zero-stage 3)"
                      f" or a smaller model")
    if args.probe:
        _time(out, err, config, request, args)
    return 0


def _time(out, err, config, request, args) -> None:
    from ..planning.time import probe_throughput

    with err.status("probing: a few real training steps on this machine") as status:
        speed = probe_throughput(config, request,
                                 progress=lambda i, n: status.update(f"probing: step {i + 1} of {n}"))
    out.print(f"measured throughput: {speed.tokens_per_second:,.0f} tokens/s ({request.device}, batch {request.batch}"
              f" x seq {request.seq}, {speed.steps} timed steps){'; ' + speed.note if speed.note else ''}")
    if args.samples:
        epochs = args.epochs or 1.0
        tokens = args.samples * request.seq * epochs  # an upper bound: samples padded/packed to seq
        seconds = speed.seconds_for(tokens)
        out.print(f"estimated training time: {seconds / 3600:.2f} h for {args.samples:,} samples x {epochs:g} epochs "
                  f"(at most {request.seq} tokens each)")
