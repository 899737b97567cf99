"""GPU training throughput, model FLOPs utilisation and peak memory: plain HF vs HF + Liger vs tunesmith's trainer.

Random-initialised models of real shapes (no download: the weights do not matter for speed): Llama-3.2-1B-shaped
with LoRA, Llama-3-8B-shaped with QLoRA (NF4, double quantisation; gradient checkpointing), sequence length 2048,
bf16, LoRA r=16 on q/k/v/o. Each (shape, variant) trains in a fresh process so peak memory is its own:

  hf         transformers Trainer + PEFT, SDPA attention: the plain baseline
  hf+liger   the same with `use_liger_kernel=True` (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU)
  tunesmith  tunesmith's TunesmithTrainer (LM head only at supervised positions) + Liger, as `speed.loss: liger
             true` configures it (Liger's fused cross-entropy then takes the place of the supervised-logits path)
  tunesmith-chunked  tunesmith's default (`speed.loss` auto): TunesmithTrainer with its own chunked LM-head
             cross-entropy (training/chunked_loss.py) instead of Liger's, torch's own kernels elsewhere
  tunesmith-chunked+liger  not a configuration tunesmith offers yet: the chunked loss with Liger's RMSNorm, RoPE and
             SwiGLU (transformers' `liger_kernel_config` with Liger's own cross-entropy off). On an H200 the chunked
             loss was 2.6x faster than Liger's fused one at 2048 tokens (benchmarks/head_loss.py), and Liger's other
             kernels helped the 1B LoRA; this row measures whether the two together beat either

Half of each sequence is "prompt" (label -100), as in instruction data. MFU counts the model FLOPs a LoRA/QLoRA
step needs — forward 2·N·tokens plus attention 4·layers·seq·hidden·tokens (causal: half of it), backward the same
again for the input gradients (the frozen base needs no weight gradients; LoRA's are negligible) — over the GPU's
dense bf16 peak (--peak-tflops; 989 for H100/H200 SXM); recomputation by checkpointing is not counted.

"planned GiB" is `tunesmith plan`'s prediction for the same run (planning/memory.py, from the config alone),
less its runtime allowance: the tensors' peak, which is what torch.cuda.max_memory_allocated measures. It runs on
the CPU in a process of its own beside the GPU runs. Liger's fused kernels are not modelled: their rows have none.

    python benchmarks/gpu_throughput.py                     # on a CUDA machine (e.g. the device tool)
    python benchmarks/gpu_throughput.py --only llama-3.2-1b # one shape
    python benchmarks/gpu_throughput.py --budget-s 420 --jsonl runs.jsonl  # within a time limit, kept as it goes
    python benchmarks/gpu_throughput.py --dry-run           # tiny shapes on CPU: checks the script end to end

On the device tool, benchmarks/gpu_check.sh wraps it: wheels, versions, imports, then both shapes in one call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # Llama-3.2-1B and Llama-3-8B configurations (public model cards)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True),
}
RUNS = {"llama-3.2-1b": "lora", "llama-3-8b": "qlora"}
VARIANTS = ("hf", "hf+liger", "tunesmith", "tunesmith-chunked", "tunesmith-chunked+liger")
LIGER = ("hf+liger", "tunesmith", "tunesmith-chunked+liger")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def model_flops_per_token(cfg: dict, seq: int) -> float:
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter       # q, o, k, v, gate/up/down
    n = layers * per_layer + h * cfg["vocab_size"]            # + LM head
    forward = 2 * n + 4 * layers * seq * h / 2                # causal attention: half of QK^T and AV
    return 2 * forward                                        # + backward to the inputs only


def worker(args) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, Trainer, TrainerCallback,
                              TrainingArguments)

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = SHAPES[args.shape]
    config = LlamaConfig(**shape, max_position_embeddings=max(args.seq, 256))
    torch.manual_seed(0)
    # Random weights are drawn on the GPU: drawing Llama-3-8B's 8 billion on the CPU takes minutes, and the device
    # tool allows ten of them per call.
    init_device = torch.device("cuda" if cuda else "cpu")
    if args.method == "qlora":  # bitsandbytes quantises while loading: save random weights once, load them in 4 bit
        folder = Path(args.out) / "random-weights"
        if not (folder / "config.json").exists():
            with init_device:
                AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder)
            if cuda:
                torch.cuda.empty_cache()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                     device_map={"": 0} if cuda else None)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        with init_device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"], task_type="CAUSAL_LM"))
    ids = torch.randint(10, shape["vocab_size"], (args.batch * (args.steps + 1), args.seq))
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    training = TrainingArguments(
        output_dir=str(Path(args.out) / "run"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none", bf16=cuda,
        use_cpu=not cuda, gradient_checkpointing=args.method == "qlora",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=args.variant in LIGER and cuda,
        # Liger's kernels without its cross-entropy: the model's own forward, whose head input the chunked loss takes
        liger_kernel_config={"fused_linear_cross_entropy": False, "cross_entropy": False}
        if args.variant == "tunesmith-chunked+liger" else None,
        remove_unused_columns=False, dataloader_num_workers=0)
    kwargs = dict(model=model, args=training, train_dataset=data, callbacks=[Clock()])
    if args.variant.startswith("tunesmith"):
        sys.path.insert(0, str(ROOT))
        from tunesmith.training.trainer import TunesmithTrainer

        # As run.py does: the supervised-logits path (chunked by default) only where Liger's fused cross-entropy is
        # not in use.
        chunked = args.variant.startswith("tunesmith-chunked")
        trainer = TunesmithTrainer(**kwargs, supervised_logits=chunked or not training.use_liger_kernel,
                                   chunked_loss=chunked)
    else:
        trainer = Trainer(**kwargs)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = times[args.warmup - 1:] if args.warmup else times
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None  # no CPU equivalent worth reporting
    Path(args.result).write_text(json.dumps({"s_per_step": seconds, "tokens_per_s": args.batch * args.seq / seconds,
                                             "peak_gib": peak, "liger": training.use_liger_kernel}))


def planned_peaks(args) -> None:
    """The planner's peak tensor memory for each run that it models, as JSON in --plan-out."""
    sys.path.insert(0, str(ROOT))
    from transformers import LlamaConfig

    from tunesmith.planning.memory import PlanRequest, plan_memory

    planned = {}
    for name, shape in json.loads(args.plan_shapes).items():
        config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(args.seq, 256))
        for variant in ("hf", "tunesmith-chunked"):  # the plain HF loss, and tunesmith's chunked one
            chunked = variant == "tunesmith-chunked"
            request = PlanRequest(
                method=RUNS[name], method_options={"r": 16, "alpha": 32, "dropout": 0.0,
                                                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                batch=args.batch, seq=args.seq, gradient_checkpointing=RUNS[name] == "qlora", optimizer="adamw",
                device="cuda", supervised_share=0.5 if chunked else 1.0, chunked_loss=chunked)
            plan = plan_memory(config, request)
            planned[f"{name}|{variant}"] = (plan.peak - plan.overhead) / 2**30
    Path(args.plan_out).write_text(json.dumps(planned))


def schedule(shapes: list[str], variants: list[str]) -> list[tuple[str, str]]:
    """Variant-major order: every shape gets its baseline and tunesmith's default before any shape gets the rest, so
    a call that runs out of time (--budget-s) still returns the comparisons that matter most."""
    first = [v for v in ("hf", "tunesmith-chunked") if v in variants]
    return [(shape, v) for v in first + [v for v in variants if v not in first] for shape in shapes]


def collect_plan(planner: subprocess.Popen, plan_file: Path) -> dict[str, float]:
    """The planner's figures; it has had the whole of the GPU runs to finish, so it gets half a minute more."""
    try:
        planner.wait(timeout=30)
    except subprocess.TimeoutExpired:
        planner.kill()
        print("planner: not done in time; no planned figures", flush=True)
        return {}
    if planner.returncode or not plan_file.exists():
        log = (plan_file.parent / "planner.log").read_text(errors="replace")
        print("planner failed: " + " | ".join(log.strip().splitlines()[-3:])[-300:], flush=True)
        return {}
    planned = json.loads(plan_file.read_text())
    print("planned peak GiB (tensors): " + ", ".join(f"{k} {gib(v)}" for k, v in planned.items()), flush=True)
    return planned


def gib(value: float | None) -> str:
    if value is None:  # a CPU dry run, where torch keeps no peak; or a figure the planner does not give
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"  # a dry run's tiny shapes


def run_job(args, name: str, shape: str, variant: str, tmp: str,
            timeout: float | None) -> tuple[dict | None, str, str]:
    """One (shape, variant) in its own process, so its peak memory is its own. Returns (result or None, state:
    "ok", "failed" or "stopped", error)."""
    result = Path(tmp) / f"{name}-{variant}.json"
    cmd = [sys.executable, __file__, "--worker", "1", "--shape", shape, "--method", RUNS[name], "--variant", variant,
           "--result", str(result), "--out", str(Path(tmp) / name), "--seq", str(args.seq), "--batch",
           str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "stopped", f"timed out after {timeout:.0f} s (--budget-s)"
    if proc.returncode or not result.exists():
        return None, "failed", " | ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
    return json.loads(result.read_text()), "ok", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, seq 128, on CPU: checks the script")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--only", default=",".join(RUNS), help="shapes: " + ", ".join(RUNS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    parser.add_argument("--budget-s", type=float, help="wall-clock seconds for all runs: a run that would start "
                        "after it is skipped, one still going when it ends is stopped (for time-limited machines)")
    parser.add_argument("--jsonl", help="also append each run's result to this file as it finishes, so a call "
                        "stopped part way keeps what it measured")
    for hidden in ("--worker", "--shape", "--method", "--variant", "--result", "--out", "--plan-out",
                   "--plan-shapes"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.plan_out:
        planned_peaks(args)
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    started = time.monotonic()
    console = Console(width=160)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit("no CUDA GPU here: run this on a GPU machine, or pass --dry-run to check the script on CPU")
    device = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    if args.dry_run:
        args.seq, args.steps, args.warmup = 128, 4, 1
    shapes, variants = args.only.split(","), args.variants.split(",")
    shape_of = {name: "tiny" if args.dry_run else name for name in shapes}  # a dry run trains tiny ones instead
    results: dict[tuple[str, str], tuple[dict | None, str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_throughput-") as tmp:
        plan_file = Path(tmp) / "planned.json"
        with open(Path(tmp) / "planner.log", "w") as log:  # a file, not a pipe nobody reads until the end
            planner = subprocess.Popen(  # on the CPU, beside the GPU runs
                [sys.executable, __file__, "--plan-out", str(plan_file), "--plan-shapes", json.dumps(shape_of),
                 "--seq", str(args.seq), "--batch", str(args.batch)], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        for name, variant in schedule(shapes, variants):
            left = args.budget_s - (time.monotonic() - started) if args.budget_s is not None else None
            if left is not None and left <= 0:
                results[name, variant] = None, "skipped", "skipped: --budget-s spent"
                continue
            began = time.monotonic()
            results[name, variant] = run_job(args, name, shape_of[name], variant, tmp, left)
            r, state, error = results[name, variant]
            wall = time.monotonic() - began
            print(f"[{time.monotonic() - started:5.0f} s] {name} {variant}: " + (
                f"{r['tokens_per_s']:,.0f} tokens/s, peak {gib(r['peak_gib'])} GiB" if r else f"{state}: {error}")
                + f" ({wall:.0f} s with start-up)", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps({"model": name, "method": RUNS[name], "variant": variant, "device": device,
                                        "seq": args.seq, "wall_s": round(wall, 1), "error": error, **(r or {})}) + "\n")
        planned = collect_plan(planner, plan_file)
    table = Table(title=f"GPU training throughput, seq {args.seq}, batch {args.batch}, {args.steps} steps "
                        f"({args.warmup} warm-up) on {device}")
    for column in ("model", "method", "variant", "tokens/s", "s/step", "MFU", "peak GiB", "planned GiB", "vs hf"):
        table.add_column(column, justify="left" if column in ("model", "method", "variant") else "right")
    for name in shapes:
        baseline = (results.get((name, "hf")) or (None,))[0]
        for variant in variants:
            r, state, error = results[name, variant]
            plan = gib(planned.get(f"{name}|{variant}"))
            if r is None:
                table.add_row(name, RUNS[name], variant, state, "", "", "", plan, error)
                continue
            mfu = r["tokens_per_s"] * model_flops_per_token(SHAPES[shape_of[name]], args.seq) / (
                peak * 1e12) if peak else None
            no_liger = not r["liger"] and variant in LIGER
            table.add_row(name, RUNS[name], variant + (" (no Liger: CPU)" if no_liger else ""),
                          f"{r['tokens_per_s']:,.0f}", f"{r['s_per_step']:.3f}", f"{100 * mfu:.1f}%" if mfu else "-",
                          gib(r["peak_gib"]), plan,
                          f"{r['tokens_per_s'] / baseline['tokens_per_s']:.2f}x" if baseline else "")
    console.print(table)
    console.print(f"conditions: torch {torch.__version__}, bf16 {'on' if cuda else 'off'}, LoRA r=16 q/k/v/o, "
                  f"random weights, half of each sequence supervised; MFU peak {peak or '?'} TFLOPS")


if __name__ == "__main__":
    main()
