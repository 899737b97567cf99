"""Replay: old-ability data mixed into the training stream at a ratio.

Plain text (a `.txt` file, one passage per non-empty line, or records holding only `text`) trains with the plain LM
loss on every token, as it was pre-trained; instruction records are encoded as SFT encodes them (replies only). The
draw is the training mix's own (`data.dataset.mix`, `mix_shares`): sources share the replay by `weight` when any is
given, else by size, and a source repeats only when its share exceeds its size.
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import torch

from ..config.schema import DataConfig, ReplayConfig, RetainData
from ..data.dataset import BuiltData, load_samples, mix, mix_shares
from ..data.encoding import encode_conversation, needs_special_tokens
from ..data.readers import read_records
from ..errors import DataError
from ..evaluation.data import load_texts

#: The per-sample column that says a training row is replay (1) or task data (0).
REPLAY_COLUMN = "replay"
#: The batch entry (batch x seq, bool) that marks replay tokens, for retain.kd.on: replay | train.
REPLAY_MASK = "replay_mask"


def is_plain_text(spec: RetainData) -> bool:
    """A `.txt` file, or records with a `text` string and no instruction fields."""
    if Path(spec.path).suffix.lower() == ".txt":
        return True
    first = read_records(spec.path, spec.split)[0].data
    return isinstance(first.get("text"), str) and not {"instruction", "messages", "conversations"} & set(first)


def encode_text(tokenizer, text: str, max_length: int) -> dict:
    """A passage as an LM sample: every token is a label (the BOS the tokenizer adds, if any, is only context)."""
    ids = tokenizer(text, add_special_tokens=needs_special_tokens(tokenizer, text))["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids), "length": len(ids)}


def encode_spec(spec: RetainData, tokenizer, template, data_cfg: DataConfig) -> list[dict]:
    """Every sample of `spec` tokenised (rows of input_ids, labels, length), in file order."""
    rows = []
    if is_plain_text(spec):
        texts = load_texts(spec.path, "text", spec.max_samples)
        rows = [encode_text(tokenizer, text, data_cfg.max_length) for text in texts if text.strip()]
    else:
        for sample in load_samples(spec):
            encoded = encode_conversation(tokenizer, template, sample.messages, data_cfg.max_length,
                                          data_cfg.train_on)
            if encoded is not None:
                rows.append({k: encoded[k] for k in ("input_ids", "labels", "length")})
    rows = [row for row in rows if row["length"] > 1]
    if not rows:
        raise DataError("no usable retain samples", file=spec.path, field="retain",
                        hint="the file holds no text, or nothing fits data.max_length")
    return rows


def encode_retain_data(specs: list[RetainData], tokenizer, template, data_cfg: DataConfig) -> list[dict]:
    """Every sample of `specs` tokenised, file after file."""
    return [row for spec in specs for row in encode_spec(spec, tokenizer, template, data_cfg)]


def replay_count(task_samples: int, ratio: float) -> int:
    """Replay samples that make `ratio` of a stream holding `task_samples` task samples."""
    return max(1, round(task_samples * ratio / (1 - ratio)))


def add_replay(data: BuiltData, replay: ReplayConfig, tokenizer, template, data_cfg: DataConfig) -> BuiltData:
    """`data` with replay rows drawn into its training split (column `replay` = 1, task rows 0), shuffled with the
    data seed; stats gain `replay_samples` and `replay_ratio`."""
    rng = random.Random(data_cfg.seed)
    pools = [[{**row, REPLAY_COLUMN: 1} for row in encode_spec(spec, tokenizer, template, data_cfg)]
             for spec in replay.data]
    task = [{**row, REPLAY_COLUMN: 0} for row in data.train.to_list()]
    # Between replay sources as between training datasets: by `weight` when any is given, else by size.
    drawn = mix(pools, mix_shares(replay.data, pools), replay_count(len(task), replay.ratio), rng)
    rows = task + drawn
    rng.shuffle(rows)
    stats = {**data.stats, "train_samples": len(rows), "replay_samples": len(drawn),
             "replay_ratio": len(drawn) / len(rows), "replay_pool": sum(map(len, pools)),
             "train_tokens": data.stats.get("train_tokens", 0) + sum(r["length"] for r in drawn)}
    return BuiltData(datasets.Dataset.from_list(rows), data.validation, stats)


class ReplayMaskCollator:
    """The run's collator, plus `replay_mask` (batch x seq, True on replay samples' tokens) laid out as the inner
    collator lays out the samples: one padded row each, or, packed, one row of them all in order."""

    def __init__(self, inner, packing: bool, mark: bool = True):
        self.inner, self.packing, self.mark = inner, packing, mark

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner([{k: v for k, v in f.items() if k != REPLAY_COLUMN} for f in features])
        if not self.mark:
            return batch
        width = batch["input_ids"].shape[1]
        flags = [bool(f.get(REPLAY_COLUMN, 0)) for f in features]
        if self.packing:
            mask = torch.tensor([flag for f, flag in zip(features, flags) for _ in f["input_ids"]])[None, :width]
        else:
            mask = torch.tensor(flags)[:, None].expand(len(features), width).clone()
        batch[REPLAY_MASK] = mask
        return batch
