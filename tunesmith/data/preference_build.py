"""DataConfig → the preference trainers' train/validation `datasets.Dataset`s of rendered text (TRL tokenises them),
mixed and held out as SFT data is (`dataset.mix`, `dataset.hold_out`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import datasets

from ..config.schema import DataConfig
from ..errors import DataError
from .dataset import hold_out, mix, mix_shares
from .preference import load_preference, render
from .templates.base import ChatTemplate


@dataclass
class PreferenceData:
    """Rows of `prompt` + `chosen` / `rejected` (pairs) or `prompt` + `completion` + `label` (unpaired).

    stats: train_samples, validation_samples, dropped_long_prompt, train_tokens (prompt and reply tokens, each
    sequence the trainer runs counted), per dataset (`datasets`): path, records read; unpaired adds desirable and
    undesirable counts."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    stats: dict


def build_preference_data(data_cfg: DataConfig, tokenizer, template: ChatTemplate, *, unpaired: bool = False,
                          max_prompt_length: int | None = None, whole: bool = False) -> PreferenceData:
    """`whole`: keep only examples whose every sequence fits in data.max_length (TRL's reward trainer drops longer
    ones; the others cut the sequence's end)."""
    rng = random.Random(data_cfg.seed)
    pools = [load_preference(spec, unpaired=unpaired) for spec in data_cfg.train]
    sizes = [len(pool) for pool in pools]
    if data_cfg.validation:
        held = [item for spec in data_cfg.validation for item in load_preference(spec, unpaired=unpaired)]
    else:
        pools, held = hold_out(pools, data_cfg.val_size, rng)
    train = mix(pools, mix_shares(data_cfg.train, pools), data_cfg.num_samples, rng)
    keep = _PromptFilter(tokenizer, max_prompt_length, data_cfg.max_length, whole)
    train_rows = keep([render(template, item) for item in train], "train")
    val_rows = keep([render(template, item) for item in held], "validation") if held else []
    stats = {"train_samples": len(train_rows), "validation_samples": len(val_rows),
             "dropped_long_prompt": keep.dropped, "train_tokens": keep.tokens,
             "datasets": [{"path": spec.path, "records": size} for spec, size in zip(data_cfg.train, sizes)]}
    if unpaired:
        stats["desirable"] = sum(row["label"] for row in train_rows)
        stats["undesirable"] = len(train_rows) - stats["desirable"]
        if not stats["desirable"] or not stats["undesirable"]:
            raise DataError(f"KTO needs desirable and undesirable examples; the training data has "
                            f"{stats['desirable']} and {stats['undesirable']}", field="label")
    return PreferenceData(datasets.Dataset.from_list(train_rows),
                          datasets.Dataset.from_list(val_rows) if val_rows else None, stats)


class _PromptFilter:
    """Drops rows whose prompt is longer than `max_prompt_length` tokens, or leaves no reply token within
    `max_length` (TRL cuts each sequence's end: the reply would be empty, its log-prob NaN in some trainers), and
    counts the tokens of what stays: each side is a sequence of its own, so a pair runs its prompt twice."""

    def __init__(self, tokenizer, max_prompt_length: int | None, max_length: int, whole: bool):
        self.tokenizer, self.max_length, self.whole = tokenizer, max_length, whole
        self.limit = min(max_prompt_length or max_length - 1, max_length - 1)
        self.dropped = self.tokens = 0

    def __call__(self, rows: list[dict], split: str) -> list[dict]:
        kept = []
        for row in rows:
            prompt = self._count(row["prompt"])
            if prompt > self.limit:
                continue
            replies = [self._count(row[key]) for key in ("chosen", "rejected", "completion") if key in row]
            if self.whole and prompt + max(replies) + 1 > self.max_length:  # + 1: the EOS TRL may add
                continue
            if split == "train":
                self.tokens += sum(prompt + reply for reply in replies)
            kept.append(row)
        dropped = len(rows) - len(kept)
        self.dropped += dropped
        if not kept:
            raise DataError(f"all {len(rows)} {split} examples are too long: prompts over {self.limit} tokens"
                            + (f" or sequences over {self.max_length}" if self.whole else ""), field="data.max_length",
                            hint="raise data.max_length (or preference.max_prompt_length)")
        return kept

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def dropped_note(stats: dict) -> str | None:
    """What a run tells the user about examples left out for length (None: none were)."""
    dropped = stats.get("dropped_long_prompt", 0)
    if not dropped:
        return None
    return (f"left out {dropped} examples whose prompt is too long or whose reply does not fit in data.max_length "
            f"(raise data.max_length or preference.max_prompt_length to keep them)")
