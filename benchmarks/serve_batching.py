"""`tunesmith serve` batching: the same concurrent requests answered one at a time (max_batch 1, the plain
baseline) and gathered into batches (max_batch 8), over real HTTP on 127.0.0.1.

Clients: tunesmith's own OpenAI-compatible teacher (`openai:MODEL`, 8 parallel requests), as `data generate` uses
it. Requests are greedy, `--max-tokens` new tokens each, one prompt per request from a fixed list.
Run:  python benchmarks/serve_batching.py [--models PATH ...] [--requests 16] [--max-tokens 24] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tunesmith.data.construct.teachers import TeacherOptions, make_teacher
from tunesmith.inference.generation import Generator
from tunesmith.inference.server import ModelServer
from tunesmith.models.loading import load_for_inference

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
PROMPTS = ["Tell me a story about a cat.", "What is the capital of France?", "Write a haiku about rain.",
           "Explain why the sky is blue.", "Give three tips for better sleep.", "What is 12 times 7?",
           "Describe a sunset.", "Name a primary color."]


def run(generator: Generator, name: str, max_batch: int, requests: int, max_tokens: int) -> dict:
    with ModelServer(generator, name, max_batch=max_batch, batch_wait=0.02) as server:
        # a long client timeout: a request that times out is sent again and would be counted twice
        teacher = make_teacher(f"openai:{name}", base_url=server.url, concurrency=8, timeout=3600)
        conversations = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(requests)]
        teacher.complete(conversations[:2], TeacherOptions(max_tokens=4, temperature=0.0))  # warm-up
        server.worker.batches.clear()
        start = time.perf_counter()
        replies = teacher.complete(conversations, TeacherOptions(max_tokens=max_tokens, temperature=0.0))
        seconds = time.perf_counter() - start
        batches = list(server.worker.batches)
    tokens = sum(len(generator.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
    return {"seconds": seconds, "tokens": tokens, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[str(SHARED / "stories260K"), "smollm2-135m-instruct"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    table = Table(title=f"{args.requests} concurrent chat completions over HTTP, greedy, {args.max_tokens} new "
                        f"tokens max")
    for column in ["model", "max_batch", "batches formed", "seconds", "requests/s", "tokens/s", "speed-up"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in args.models:
        generator = Generator(load_for_inference(model))
        name = Path(model).name
        baseline = None
        for max_batch in (1, 8):
            result = run(generator, name, max_batch, args.requests, args.max_tokens)
            baseline = baseline or result["seconds"]
            sizes = result["batches"]
            table.add_row(name, str(max_batch), f"{len(sizes)} (mean {sum(sizes) / len(sizes):.1f})",
                          f"{result['seconds']:.2f}", f"{args.requests / result['seconds']:.2f}",
                          f"{result['tokens'] / result['seconds']:.1f}", f"{baseline / result['seconds']:.2f}x")
    console.print(table)
    console.print(f"conditions: CPU only ({platform.machine()}, {os.cpu_count()} cores, torch "
                  f"{torch.__version__}, {torch.get_num_threads()} threads), float32, load average "
                  f"{os.getloadavg()[0]:.1f} at the end (the cores were shared with other jobs when it exceeds "
                  f"the core count); client: tunesmith's openai: teacher, 8 parallel connections")


if __name__ == "__main__":
    main()
