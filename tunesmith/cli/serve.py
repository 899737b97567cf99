"""`tunesmith serve MODEL`: an OpenAI-compatible chat endpoint for a local model or run."""

from __future__ import annotations

import argparse
import os

from rich.console import Console


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: tunesmith serve runs/lora --port 8000\n"
               "         TUNESMITH_TEACHER_BASE_URL=http://127.0.0.1:8000/v1 tunesmith data generate ... "
               "--teacher openai:lora")
    p.add_argument("model", help="run folder, HF folder, GGUF file, hub id, smollm2-135m-instruct, or an adapter "
                                 "set (.yaml: the request's model field picks the adapter, docs/multitask.md)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model id reported by /v1/models (default: the path's name)")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--admin-key", default=os.environ.get("TUNESMITH_ADMIN_KEY"),
                   help="adapter sets: the bearer token that may add (POST /v1/adapters) and remove "
                        "(DELETE /v1/adapters/NAME) adapters while serving; without one that is refused "
                        "(default: $TUNESMITH_ADMIN_KEY)")
    p.add_argument("--adapter", default=None, metavar="NAME",
                   help="adapter sets: the adapter for requests whose model is the set's name or missing "
                        "(auto: routed by the manifest's router, as model: auto is)")
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting or running at once; more are answered 503 (busy)")
    p.add_argument("--max-requests", type=int, default=None, help="stop after this many completions")
    p.add_argument("--template", default=None, help="override the template (default: the run's own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for generation (default: torch's choice; 1 is faster for tiny models on busy "
                        "CPUs, see docs/data.md)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code from the model's folder or repository (never allowed by a run folder itself)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=serve)


def serve(args) -> int:
    from pathlib import Path

    from ..inference.adapter_set import is_adapter_set
    from ..inference.generation import Generator
    from ..inference.server import ModelServer
    from ..models.loading import load_for_inference

    from ..errors import ConfigError

    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--threads", args.threads), ("--max-requests", args.max_requests)):
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", where=flag)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"must be from 0 to 65535, got {args.port}", where="--port")
    console = Console(stderr=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if is_adapter_set(args.model):
        from .commands import _generator

        generator = _generator(args)
        name = args.name or Path(args.model).stem
    else:
        if args.adapter is not None:
            raise ConfigError("--adapter chooses an adapter of a set: pass the set's manifest (.yaml)",
                              where="--adapter")
        with console.status(f"loading {args.model}"):
            generator = Generator(load_for_inference(args.model, dtype=args.dtype, template=args.template,
                                                     trust_remote_code=args.trust_remote_code))
        name = args.name or Path(args.model.rstrip("/")).name
    try:
        server = ModelServer(generator, name, host=args.host, port=args.port, api_key=args.api_key,
                             max_batch=args.max_batch, max_requests=args.max_requests, max_queue=args.max_queue,
                             admin_key=args.admin_key,
                             log=console.print if args.verbose else None)
    except OSError as exc:
        from ..errors import TunesmithError

        raise TunesmithError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", where="--port",
                             hint="choose another port, or stop what is using it") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]listening on {args.host}: reachable from other machines"
                      f"{'' if args.api_key else ' without an API key'}[/]")
    console.print(f"serving [bold]{name}[/] at {server.url} (Ctrl-C to stop)", highlight=False)
    if generator.adapter_set is not None:
        console.print(f"models: {', '.join(server.model_ids())} (default {generator.adapter}); adapter management "
                      f"{'on (admin key)' if args.admin_key else 'off'}", highlight=False, markup=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the running generation ends at its next token; waiting requests are answered 503
        console.print("stopping")
    finally:
        server.close()
    console.print(f"stopped after {server.served} requests")
    return 0
