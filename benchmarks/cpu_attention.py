"""CPU causal attention: torch's SDPA (its CPU flash kernel) against tunesmith's kernel (`speed.switches.cpu_causal_attention`),
forward and backward, bf16.

The shapes are one attention layer of SmolLM2-135M at batch 4 (9 query heads over 3 key/value heads, head dim 64),
laid out as transformers hands them over, at several sequence lengths; a training step runs 30 of them. Each row
is the median of --repeats forward+backward calls (the two contenders' calls interleaved), in this one process with
the threads torch picks. SDPA gets `is_causal` and `enable_gqa`, as tunesmith's SDPA path does. The last column is
the kernel's largest error against a float64 recomputation next to SDPA's (output and the three gradients, relative
to each tensor's largest value). Whole training steps are measured by benchmarks/sft_throughput.py (row (p) turns
the kernel off).

The second table is padding-free packing (`data.packing`): four samples in one row, position ids restarting per
sample, of unequal lengths as real data has (1/4, 3/4, 5/4 and 7/4 of the row's "tokens" figure, so the row holds
as many tokens as the batch of four above). SDPA gets the block-diagonal causal mask transformers builds for such a
row; the kernel gets the samples as segments (varlen attention) and computes each sample's causal blocks only.

    python benchmarks/cpu_attention.py [--repeats 15] [--lengths 128,256,394,512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.hardware import cpu_model  # noqa: E402
from tunesmith.training import causal_attention  # noqa: E402


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)


def inputs(length: int, batch=4, heads=9, kv_heads=3, dim=64):
    make = lambda h: torch.randn(batch, length, h, dim).to(torch.bfloat16).transpose(1, 2)
    return make(heads), make(kv_heads), make(kv_heads), torch.randn(batch, length, heads, dim).to(torch.bfloat16)


def packed(length: int, heads=9, kv_heads=3, dim=64):
    """Four samples averaging `length` tokens (1/4, 3/4, 5/4, 7/4 of it) in one row, with their segments and
    block-diagonal causal mask."""
    lengths = [length // 4, 3 * length // 4, 5 * length // 4]
    lengths.append(4 * length - sum(lengths))
    q, k, v, grad = inputs(4 * length, 1, heads, kv_heads, dim)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    segments = causal_attention.segments_from_positions(positions)
    mask = causal_attention.packed_causal_mask(segments, 1, 4 * length)[0]

    def sdpa_masked(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)

    def kernel(q, k, v):
        return causal_attention.causal_attention(q, k, v, None, segments)

    return (q, k, v, grad), {"SDPA": sdpa_masked, "tunesmith": kernel}


def run(fn, q, k, v, grad):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    start = time.perf_counter()
    out = fn(q, k, v)
    middle = time.perf_counter()
    out.backward(grad.to(out.dtype))
    end = time.perf_counter()
    return (middle - start) * 1e3, (end - middle) * 1e3, [out.detach(), q.grad, k.grad, v.grad]


def worst_error(tensors, truth) -> float:
    return max(((t.double() - r).abs().max() / r.abs().max()).item() for t, r in zip(tensors, truth))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--lengths", default="128,256,394,512")
    args = parser.parse_args()
    if causal_attention.load_kernel() is None:
        print(f"the kernel does not run here: {causal_attention.kernel_failure()}")
        return 1
    torch.manual_seed(0)
    lengths = [int(n) for n in args.lengths.split(",")]
    conditions = (f"9 query heads over 3 key/value heads, head dim 64; torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu_model()}); "
                  f"median of {args.repeats} calls")
    print(f"\nCPU causal attention, forward + backward, bf16: batch 4, {conditions}")
    contenders = {"SDPA": sdpa, "tunesmith": causal_attention.causal_attention}
    table([(length, inputs(length), contenders) for length in lengths], args.repeats)
    print(f"\nPacked rows: 4 samples of 1/4, 3/4, 5/4 and 7/4 the tokens in one row (batch 1), bf16, {conditions}")
    table([(length, *packed(length)) for length in lengths], args.repeats)
    return 0


def table(cases, repeats: int) -> None:
    print(f"{'tokens':>6} {'contender':>10} {'fwd ms':>7} {'bwd ms':>7} {'total':>7} {'vs SDPA':>8} "
          f"{'max rel. error':>15}")
    for length, (q, k, v, grad), contenders in cases:
        reference = contenders["SDPA"]
        truth = run(reference, q.double(), k.double(), v.double(), grad.double())[2]
        times = {name: [] for name in contenders}
        errors = {}
        for _ in range(2):  # warm-up (the kernel's micro-kernels are generated per shape)
            for name, fn in contenders.items():
                errors[name] = worst_error(run(fn, q, k, v, grad)[2], truth)
        for _ in range(repeats):
            for name, fn in contenders.items():
                times[name].append(run(fn, q, k, v, grad)[:2])
        base = None
        for name, samples in times.items():
            forward = statistics.median(s[0] for s in samples)
            backward = statistics.median(s[1] for s in samples)
            total = statistics.median(s[0] + s[1] for s in samples)
            base = base or total
            print(f"{length:>6} {name:>10} {forward:7.1f} {backward:7.1f} {total:7.1f} {total / base:7.2f}x "
                  f"{errors[name]:15.4f}")


if __name__ == "__main__":
    sys.exit(main())
