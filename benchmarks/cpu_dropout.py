"""CPU dropout: torch's nn.Dropout against tunesmith's FastDropout (`speed.switches.fast_dropout`), forward and backward.

The shape is one LoRA dropout of SmolLM2-135M at batch 4 x 380 tokens (hidden size 576), float32 as under autocast;
a step runs 120 of them (q, k, v, o on 30 layers). Rows, each the median of --repeats timed calls after warm-up
(the rows' calls interleaved), in this one process with the threads torch picks:
  torch dropout      nn.functional.dropout, forward and backward (its Bernoulli mask: one Mersenne-Twister draw per
                     element, float32 noise kept for backward)
  FastDropout        forward and backward with its compiled kernel (dropout.cpp: the same mask, drawn and applied
                     in one pass; left out where it cannot be built)
  - tensor ops       forward and backward with the int32 tensor ops (what runs without the kernel)
  - their mask       the tensor ops' hash-based mask alone (`keep_mask`)
  - their scale      applying a saved mask to a tensor (the tensor-op backward's whole work)
  random_ (int64)    torch's cheapest CPU draw of the same number of random bits (one 64-bit word per four
                     elements), for comparison with the mask's hash
Whole training steps are measured by benchmarks/sft_throughput.py (row (i) turns fast dropout off).

    python benchmarks/cpu_dropout.py [--repeats 50] [--p 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.hardware import cpu_model  # noqa: E402
from tunesmith.training import dropout  # noqa: E402
from tunesmith.speed.cpu.dropout import FastDropout, _scale_kept, keep_mask  # noqa: E402


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each function, calls interleaved round-robin so that a slower moment of a
    shared machine falls on every row alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--p", type=float, default=0.05)
    parser.add_argument("--shape", default="4,380,576")
    args = parser.parse_args()
    shape = torch.Size(int(n) for n in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    fast = FastDropout(args.p).train()
    keep, dropped = keep_mask(shape, args.p)

    def torch_dropout():
        torch.autograd.grad(torch.nn.functional.dropout(x, args.p, training=True), x, grad)

    kernel = dropout.load_kernel()

    def fast_dropout(compiled: bool):
        dropout._KERNEL.module = kernel if compiled else None
        torch.autograd.grad(fast(x), x, grad)

    rows = timed({
        "torch dropout": torch_dropout,
        **({"FastDropout": lambda: fast_dropout(True)} if kernel is not None else {}),
        "- tensor ops": lambda: fast_dropout(False),
        "- their mask": lambda: keep_mask(shape, args.p),
        "- their scale": lambda: _scale_kept(grad, keep, 1 / (1 - dropped)),
        "random_ (int64)": lambda: torch.empty((shape.numel() + 3) // 4, dtype=torch.int64).random_(),
    }, args.repeats)
    print(f"\nCPU dropout, forward + backward: shape {tuple(shape)} float32, p {args.p}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu_model()}); "
          f"median of {args.repeats} calls; allocator preload: {os.environ.get('LD_PRELOAD') or 'none'}"
          + ("" if kernel is not None else f"; no compiled kernel: {dropout.kernel_failure()}"))
    print(f"{'row':18} {'ms':>7} {'vs torch':>9}")
    base = rows["torch dropout"]
    for name, ms in rows.items():
        print(f"{name:18} {ms:7.2f} {base / ms:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
