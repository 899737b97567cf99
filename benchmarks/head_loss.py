"""The LM head and its loss alone, forward and backward: HF's loss, logits only at supervised positions, Liger's fused
linear cross-entropy and tunesmith's chunked loss at several chunk sizes, side by side in one run.

The head is where a LoRA step on a large-vocabulary model spends much of its memory (tokens x vocabulary fp32
logits) and, at short sequences, a large share of its time. Each variant gets the same hidden states (half of the
tokens supervised, as in instruction data), the same frozen head and the same targets; the table gives the median
time of forward plus backward to the hidden states, the peak memory above the inputs (CUDA only) and the loss's
relative difference from HF's.

    python benchmarks/head_loss.py                          # on a GPU: Llama-3.2-1B and Llama-3-8B heads
    python benchmarks/head_loss.py --shapes smollm2 --threads 2 --chunks auto,170,341,682   # on a CPU

  hf         transformers' causal-LM loss: the head over every token, fp32 logits, cross-entropy with -100 ignored
  supervised the head only where the next token is supervised (speed.loss: supervised), then the same loss
  liger      Liger's LigerFusedLinearCrossEntropyLoss over every token (CUDA only; skipped where it does not import)
  chunk-N    training/chunked_loss.py with N tokens per chunk; "auto" is the size it picks on this device
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.speed.chunked_loss import FrozenCast, chunk_tokens, chunked_linear_cross_entropy  # noqa: E402

SHAPES = {"llama-3.2-1b": (2048, 128256), "llama-3-8b": (4096, 128256), "smollm2": (576, 49152),
          "qwen2.5": (896, 151936), "tiny": (64, 1000)}  # (hidden size, vocabulary)


def make_variants(weight: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor, chunks: list[str], dtype):
    device = hidden.device.type
    supervised = labels != -100
    targets = labels[supervised]

    def hf():
        with torch.autocast(device, dtype=dtype):
            logits = F.linear(hidden, weight)
        return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")

    def only_supervised():
        with torch.autocast(device, dtype=dtype):
            logits = F.linear(hidden[supervised], weight)
        return F.cross_entropy(logits.float(), targets, reduction="sum")

    variants = {"hf": hf, "supervised": only_supervised}
    if device == "cuda":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")
            half = weight.to(dtype)  # Liger's kernels run in the weight's dtype: give it autocast's
            variants["liger"] = lambda: liger(half, hidden.to(dtype), labels)
        except ImportError as exc:
            print(f"liger: skipped ({exc})")
    cast = FrozenCast()
    for name in chunks:
        rows = chunk_tokens(weight.shape[0], device) if name == "auto" else int(name)
        label = f"chunk-{rows}" + (" (auto)" if name == "auto" else "")
        variants[label] = lambda rows=rows: chunked_linear_cross_entropy(hidden[supervised], weight, None, targets,
                                                                         chunk=rows, dtype=dtype, frozen_cast=cast)
    return variants


def measure(step, hidden: torch.Tensor, repeats: int, warmup: int) -> tuple[float, float | None, float]:
    """Median seconds of forward + backward, peak bytes above what existed before (CUDA), the loss."""
    cuda = hidden.device.type == "cuda"
    times = []
    for i in range(warmup + repeats):
        hidden.grad = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        began = time.perf_counter()
        loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    return statistics.median(times), peak, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="llama-3.2-1b,llama-3-8b", help="heads: " + ", ".join(SHAPES))
    parser.add_argument("--tokens", type=int, default=2048, help="tokens in the batch (batch x sequence)")
    parser.add_argument("--supervised", type=float, default=0.5, help="share of tokens with a label")
    parser.add_argument("--chunks", default="auto,130,128,256,512,1024", help="chunk sizes in tokens, or auto")
    parser.add_argument("--head-dtype", choices=("bf16", "fp32"), default="bf16",
                        help="the frozen head's stored dtype (QLoRA's prepare_model_for_kbit_training makes it fp32)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    dtype = torch.bfloat16
    table = Table(title=f"LM head + loss, forward and backward, {args.tokens} tokens ({args.supervised:.0%} "
                        f"supervised), bf16 autocast, frozen {args.head_dtype} head, on {name}")
    for column in ("head", "variant", "ms", "vs hf", "peak MiB", "loss vs hf"):
        table.add_column(column, justify="left" if column in ("head", "variant") else "right")
    for shape in args.shapes.split(","):
        width, vocab = SHAPES[shape]
        generator = torch.Generator().manual_seed(0)
        weight = (torch.randn(vocab, width, generator=generator) * width ** -0.5).to(
            device, torch.bfloat16 if args.head_dtype == "bf16" else torch.float32)
        hidden = torch.randn(args.tokens, width, generator=generator).to(device, dtype).requires_grad_()
        labels = torch.randint(0, vocab, (args.tokens,), generator=generator).to(device)
        labels[torch.randperm(args.tokens, generator=generator)[: round(args.tokens * (1 - args.supervised))]] = -100
        baseline = None
        for variant, step in make_variants(weight, hidden, labels, args.chunks.split(","), dtype).items():
            seconds, peak, loss = measure(step, hidden, args.repeats, args.warmup)
            baseline = baseline or (seconds, loss)
            table.add_row(shape, variant, f"{1000 * seconds:.2f}", f"{baseline[0] / seconds:.2f}x",
                          f"{peak / 2**20:,.0f}" if peak is not None else "-", f"{loss / baseline[1] - 1:+.1e}")
    Console(width=140).print(table)
    print(f"conditions: torch {torch.__version__}, median of {args.repeats} after {args.warmup} warm-up; peak is "
          "above the inputs; loss is summed over supervised tokens")


if __name__ == "__main__":
    main()
