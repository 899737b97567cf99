"""DPO efficacy: held-out preference accuracy of SmolLM2-135M-Instruct before and after a short DPO (LoRA) run on
LLaMA-Factory's dpo_en_demo.json. Accuracy: the share of held-out pairs whose chosen reply gets the higher summed
log-prob (tunesmith.tasks.preference.accuracy), rendered with the model's chat template.

    python benchmarks/alignment.py --steps 30 --held-out 40 --out runs/bench-dpo

The held-out pairs are the run's own validation split (data.val_size), so training never sees them.
"""

from __future__ import annotations

import argparse
import json
import time

from tunesmith.config.loading import validate_config
from tunesmith.data.preference_build import build_preference_data
from tunesmith.data.templates.registry import get_template
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.recipes import train
from tunesmith.tasks.preference.accuracy import preference_accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="../shared/data/preference/dpo_en_demo.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--out", default="runs/bench-dpo")
    args = parser.parse_args()
    cfg = validate_config({
        "task": "dpo", "model": {"name_or_path": args.model, "dtype": "float32"},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "preference": {"beta": args.beta},
        "data": {"train": [{"path": args.data}], "val_size": args.held_out, "template": "model",
                 "max_length": args.max_length},
        "training": {"output_dir": args.out, "max_steps": args.steps, "batch_size": 2, "grad_accum": 2,
                     "learning_rate": args.lr, "warmup_ratio": 0.1, "logging_steps": 5, "save_steps": 10_000,
                     "tensorboard": False, "overwrite_output_dir": True}})
    tokenizer = load_tokenizer(cfg.model)
    data = build_preference_data(cfg.data, tokenizer, get_template("model", tokenizer))
    held = list(data.validation)
    before = preference_accuracy(load_model(cfg.model), tokenizer, held, max_length=args.max_length)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    from peft import PeftModel

    after = preference_accuracy(PeftModel.from_pretrained(load_model(cfg.model), args.out), tokenizer, held,
                                max_length=args.max_length)
    print(json.dumps({"model": args.model, "steps": args.steps, "pairs_seen": args.steps * 4,
                      "train_pairs": data.stats["train_samples"], "held_out": len(held), "lr": args.lr,
                      "beta": args.beta, "max_length": args.max_length, "train_seconds": round(seconds),
                      "before": before, "after": after}, indent=1))


if __name__ == "__main__":
    main()
