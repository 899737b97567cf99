"""What TRL's preference trainers compute on tokens that are not a reply, because they take tunesmith's packing /
padding-free path and its supervised-only head away (docs/alignment.md, "Speed"): an upper bound on what those paths
would save on a preference file, counted from the file's token lengths (no training).

TRL 1.16's DPO batch is the chosen and the rejected sequence of each pair, all padded to the longest of the 2 x batch
sequences, each cut at max_length; its fused log-prob head on CPU scores every position of that padded batch. So per
batch: padding = 2 x batch x longest - the real tokens; head positions = 2 x batch x longest, of which the reply tokens
are what the loss needs. Batches are formed in a seeded random order (TRL's default sampler) and, for comparison,
from length-sorted pairs (the least padding any batching can give).

    python benchmarks/preference_padding.py [--data ../shared/data/preference/dpo_en_demo.json] [--max-length 256]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lengths(data: str, model: str, max_length: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) tokens of each pair as the runs see it: rendered with the model's template, the pairs
    tunesmith keeps (a prompt that leaves no reply token is left out), each sequence cut at max_length."""
    sys.path.insert(0, str(ROOT))
    from tunesmith.config.loading import validate_config
    from tunesmith.data.preference_build import build_preference_data
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    cfg = validate_config({"task": "dpo", "model": {"name_or_path": model},
                           "data": {"train": [{"path": data}], "max_length": max_length},
                           "training": {"output_dir": "/tmp/unused"}})
    tokenizer = load_tokenizer(cfg.model)
    rows = build_preference_data(cfg.data, tokenizer, get_template(cfg.data.template, tokenizer)).train

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = []
    for row in rows:
        prompt = count(row["prompt"])
        out.append((prompt, min(count(row["chosen"]), max_length - prompt), min(count(row["rejected"]),
                                                                                max_length - prompt)))
    return out


def batches_of(pairs: list[tuple[int, int, int]], batch: int) -> dict:
    real = reply = computed = 0
    for start in range(0, len(pairs), batch):
        group = pairs[start:start + batch]
        longest = max(p + max(c, r) for p, c, r in group)
        computed += 2 * len(group) * longest
        real += sum(2 * p + c + r for p, c, r in group)
        reply += sum(c + r for _, c, r in group)
    return {"computed": computed, "real": real, "reply": reply}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "preference" / "dpo_en_demo.json"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="pairs per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = lengths(args.data, args.model, args.max_length)
    shuffled = pairs[:]
    random.Random(args.seed).shuffle(shuffled)
    rows = {"random order (TRL's sampler)": batches_of(shuffled, args.batch),
            "length-sorted (least padding)": batches_of(sorted(pairs, key=lambda p: p[0] + max(p[1:])), args.batch)}
    print(f"{Path(args.data).name}: {len(pairs)} pairs, {args.model}'s template, max_length {args.max_length}, "
          f"batch {args.batch} pairs (2 x {args.batch} sequences), seed {args.seed}")
    print("| batching | positions computed | real tokens | padding share | reply tokens | reply share of the head's "
          "positions |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['computed']:,} | {r['real']:,} | {1 - r['real'] / r['computed']:.1%} | "
              f"{r['reply']:,} | {r['reply'] / r['computed']:.1%} |")


if __name__ == "__main__":
    main()
