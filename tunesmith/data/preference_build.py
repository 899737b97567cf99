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
    """`whole` (a reward model): every sequence must fit in data.max_length, since TRL's reward trainer drops longer
    ones (the other trainers cut the sequence's end). A longer pair is cut to fit instead of being lost: its
    replies keep their beginning, its prompt its end (`cut_pair`)."""
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
             "dropped_long_prompt": keep.dropped, "cut_to_fit": keep.cut, "train_tokens": keep.tokens,
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
    counts the tokens of what stays: each side is a sequence of its own, so a pair runs its prompt twice. For a
    reward model (`whole`) a pair that does not fit is cut to fit instead (`cut_pair`), and counted."""

    def __init__(self, tokenizer, max_prompt_length: int | None, max_length: int, whole: bool):
        self.tokenizer, self.max_length, self.whole = tokenizer, max_length, whole
        self.limit = min(max_prompt_length or max_length - 1, max_length - 1)
        self.dropped = self.tokens = self.cut = 0

    def __call__(self, rows: list[dict], split: str) -> list[dict]:
        kept = []
        for row in rows:
            prompt = self._count(row["prompt"])
            if prompt > self.limit and not self.whole:
                continue
            replies = [self._count(row[key]) for key in ("chosen", "rejected", "completion") if key in row]
            if self.whole and (prompt > self.limit or prompt + max(replies) + 1 > self.max_length):  # + 1: EOS
                if not getattr(self.tokenizer, "is_fast", False):  # cutting needs token offsets: drop, as TRL does
                    continue
                row = cut_pair(self.tokenizer, row, self.max_length - 1 - CUT_MARGIN, self.limit)
                self.cut += 1
                prompt = self._count(row["prompt"])
                replies = [self._count(row[key]) for key in ("chosen", "rejected") if key in row]
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


#: Tokens left free when a pair is cut: text cut at a token boundary can tokenise a token longer once rejoined.
CUT_MARGIN = 4


def cut_pair(tokenizer, row: dict, budget: int, prompt_limit: int) -> dict:
    """The pair with prompt + each reply within `budget` tokens: each reply keeps its first tokens, the prompt its
    last ones (the turn the replies answer, and the template's assistant prefix), at most `prompt_limit`, and at
    most half the budget when the replies need the room. LLaMA-Factory shares its cutoff between source and target
    in the same spirit; cutting keeps a pair that TRL's reward trainer would drop. Cuts fall on token boundaries of
    the text."""
    prompt = _tokens(tokenizer, row["prompt"])
    replies = {key: _tokens(tokenizer, row[key]) for key in ("chosen", "rejected")}
    longest = max(len(spans) for spans in replies.values())
    keep_prompt = min(len(prompt), prompt_limit, max(budget // 2, budget - longest))
    reply_budget = budget - keep_prompt
    cut = dict(row)
    cut["prompt"] = row["prompt"][prompt[len(prompt) - keep_prompt][0]:] if keep_prompt else ""
    for key, spans in replies.items():
        cut[key] = row[key][:spans[reply_budget - 1][1]] if len(spans) > reply_budget else row[key]
    return cut


def _tokens(tokenizer, text: str) -> list[tuple[int, int]]:
    """Each token's (start, end) character span in `text`."""
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def dropped_note(stats: dict) -> str | None:
    """What a run tells the user about examples left out for length (None: none were)."""
    dropped = stats.get("dropped_long_prompt", 0)
    if not dropped:
        return None
    return (f"left out {dropped} examples whose prompt is too long or whose reply does not fit in data.max_length "
            f"(raise data.max_length or preference.max_prompt_length to keep them)")
