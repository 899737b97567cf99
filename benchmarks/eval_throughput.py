"""Evaluation during training against training itself: samples per second of each, side by side.

A short LoRA SFT run per model (`tunesmith.recipes.train`, the run's defaults: on a CPU with AVX512-BF16 or AMX
that is bf16 autocast with packed batches) evaluates its validation set once at the last step, at the same weights,
several times in a row, alternating between
  - tunesmith: evaluation on the training step's paths (`TunesmithTrainer`, fast_eval: the chunked loss, no
    logits over the vocabulary, no padding mask) and the exact per-token eval_loss, and
  - transformers: the same Trainer with fast_eval off, which is evaluation as transformers' Trainer does it with
    logits at the supervised positions only (what tunesmith did before): every supervised row's logits over the
    whole vocabulary, in float32, with their log-softmax.
Training samples/s is over the optimizer steps after the first (fwd + bwd + update, evaluation excluded); each
evaluation's samples/s is the validation set over the best of its passes (the first pass of each warms up shapes).
Each row's processes share the machine with whatever else runs: compare the columns of one row (same process,
alternating passes), not rows of different runs. "eval loss" is each path's number at the same weights: transformers averages per-batch means, tunesmith divides
the summed loss by the number of supervised tokens.

    python benchmarks/eval_throughput.py --threads 1                                  # both models, offline
    python benchmarks/eval_throughput.py --threads 1 --models ../shared/models/stories260K --steps 3   # smoke test

The trainer is timed by a subclass swapped into the SFT recipe (`TimedTrainer` below); nothing else changes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

MODELS = {"stories260K": str(SHARED / "models" / "stories260K"), "SmolLM2-135M-Instruct": "smollm2-135m-instruct"}
# stories260K knows only children's stories (its 512-token vocabulary); the others learn English Alpaca records.
DATA = {"stories260K": (str(ROOT / "examples" / "data" / "stories_chat.jsonl"), "alpaca_en")}
DEFAULT_DATA = (str(SHARED / "data" / "instruct" / "alpaca_en_demo.json"), "model")


def make_timed_trainer(results: dict, passes: int):
    from tunesmith.training.trainer import TunesmithTrainer

    class TimedTrainer(TunesmithTrainer):
        """Times its training steps; its evaluation during training runs both ways, `passes` times each."""

        def training_step(self, model, inputs, *args, **kwargs):
            start = time.perf_counter()
            loss = super().training_step(model, inputs, *args, **kwargs)
            if self.state.global_step > 0:  # the first step runs the first-batch checks and warms shapes up
                results["train_s"] += time.perf_counter() - start
                results["train_samples"] += samples_in(inputs)
            return loss

        def evaluate(self, *args, **kwargs):
            if not self.is_in_train:
                return super().evaluate(*args, **kwargs)
            metrics = None
            for _ in range(passes):
                for fast in (True, False):
                    self.fast_eval = fast
                    start = time.perf_counter()
                    metrics_now = super().evaluate(*args, **kwargs)
                    seconds = time.perf_counter() - start
                    key = "tunesmith" if fast else "transformers"
                    results[f"{key}_s"] = min(results.get(f"{key}_s", float("inf")), seconds)
                    results[f"{key}_loss"] = metrics_now["eval_loss"]
                    metrics = metrics_now if fast else metrics
            self.fast_eval = True
            return metrics

    return TimedTrainer


def samples_in(inputs) -> int:
    """Samples in a batch: a packed row holds one per restarted position id."""
    ids = inputs["input_ids"]
    positions = inputs.get("position_ids")
    if positions is not None and ids.shape[0] == 1:
        return int((positions == 0).sum())
    return ids.shape[0]


def run_model(name: str, model: str, args, out: Path) -> dict:
    import tunesmith.recipes.sft as sft
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    path, template = DATA.get(name, DEFAULT_DATA)
    results = {"train_s": 0.0, "train_samples": 0}
    config = {
        "model": {"name_or_path": model, "dtype": args.dtype},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05},
        "data": {"train": [{"path": path, "max_samples": args.samples + args.val_samples}],
                 "val_size": float(args.val_samples), "template": template, "max_length": args.max_length},
        "training": {"output_dir": str(out / name), "max_steps": args.steps, "batch_size": args.batch_size,
                     "grad_accum": 1, "eval_steps": args.steps, "save_steps": 10_000, "logging_steps": 1,
                     "tensorboard": False, "overwrite_output_dir": True},
    }
    if args.threads:
        config["speed"] = {"cpu_threads": args.threads}
    trainer_class = sft.TunesmithTrainer
    sft.TunesmithTrainer = make_timed_trainer(results, args.passes)
    try:
        result = train(validate_config(config))
    finally:
        sft.TunesmithTrainer = trainer_class
    results["val_samples"] = result.data_stats["validation_samples"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS.values()),
                        help="comma-separated model paths or ids (default: stories260K and SmolLM2-135M-Instruct)")
    parser.add_argument("--samples", type=int, default=48, help="training records read")
    parser.add_argument("--val-samples", type=int, default=16, help="validation records held out")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (batch_size samples each)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="model.dtype: auto (bf16 autocast and packed batches on CPUs "
                        "with AVX512-BF16 or AMX) or float32 (length-grouped padded batches)")
    parser.add_argument("--passes", type=int, default=3, help="evaluation passes of each path (best one counts)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a machine other jobs share)")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")

    import torch

    from tunesmith.hardware import native_bf16_cpu

    names = {path: label for label, path in MODELS.items()}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        for model in args.models.split(","):
            name = names.get(model, Path(model).name)
            rows.append((name, run_model(name, model, args, out)))

    header = ("model", "train samples/s", "eval samples/s (transformers)", "eval samples/s (tunesmith)",
              "tunesmith eval / train", "eval loss (transformers / tunesmith)")
    print()
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, r in rows:
        train_rate = r["train_samples"] / r["train_s"]
        old_rate, new_rate = r["val_samples"] / r["transformers_s"], r["val_samples"] / r["tunesmith_s"]
        print(f"{name} | {train_rate:.2f} | {old_rate:.2f} | {new_rate:.2f} | {new_rate / train_rate:.1f}x | "
              f"{r['transformers_loss']:.4f} / {r['tunesmith_loss']:.4f}")
    print()
    print(f"conditions: {platform.processor() or platform.machine()} ({native_bf16_cpu() or 'no native bf16'}), "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), model.dtype {args.dtype}, "
          f"batch {args.batch_size}, "
          f"{args.val_samples} validation samples, max length {args.max_length}, training steps 2-{args.steps} timed")


if __name__ == "__main__":
    main()
