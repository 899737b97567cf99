"""Speed of `tunesmith analyze`'s SVD of a LoRA update: the r×r route (QR of B and Aᵀ, SVD of R_B·R_Aᵀ) against
the plain baseline (form ΔW = B·A, then torch.linalg.svdvals), same inputs, one run; and their largest relative
difference in the singular values.

Run:  python benchmarks/lora_rank_svd.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.diagnostics.lora_rank import update_singular_values  # noqa: E402

# (out, in) of linear layers in common models: SmolLM2-135M attention and MLP, 2k and 4k hidden sizes.
SHAPES = [(576, 576), (1536, 576), (2048, 2048), (4096, 4096)]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-dim", type=int, default=4096, help="skip shapes with a side above this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"conditions: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads of {os.cpu_count()} cores, float64, best of {args.repeats}")
    print("| ΔW shape (out × in) | r | dense: B·A then svdvals (s) | tunesmith: QR + r×r SVD (s) | speed-up | "
          "max rel. diff |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for out, inp in [s for s in SHAPES if max(s) <= args.max_dim]:
        for r in args.ranks:
            B, A = torch.randn(out, r, generator=g, dtype=torch.float64), torch.randn(r, inp, generator=g,
                                                                                     dtype=torch.float64)
            dense_s = best_of(lambda: torch.linalg.svdvals(B @ A), args.repeats)
            fast_s = best_of(lambda: update_singular_values(B, A, 1.0), args.repeats)
            dense, fast = torch.linalg.svdvals(B @ A)[:r], update_singular_values(B, A, 1.0)
            diff = float(((dense - fast).abs() / dense).max())
            print(f"| {out} × {inp} | {r} | {dense_s:.4f} | {fast_s:.5f} | {dense_s / fast_s:.0f}× | {diff:.1e} |",
                  flush=True)


if __name__ == "__main__":
    main()
