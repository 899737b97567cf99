"""Batching for causal-LM training: dynamic padding, or padding-free packing."""

from __future__ import annotations

import torch
from transformers import DataCollatorWithFlattening

from .encoding import IGNORE_INDEX


class PaddingCollator:
    """Pads each batch to its longest sample (right side): input_ids with the pad id, labels with -100.

    Written out rather than DataCollatorForSeq2Seq because that one goes through `tokenizer.pad`,
    which fails on tokenizers without a pad token and chokes on extra columns such as `length`.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for feature in features:
            ids = list(feature["input_ids"])
            labels = list(feature.get("labels", ids))
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def pad_token_id(tokenizer) -> int:
    """The pad id, or EOS for tokenizers that define no pad token (padding is masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate


def make_collator(tokenizer, packing: bool = False, pad_to_multiple_of: int | None = None):
    """Padding collator, or with packing the padding-free one: samples are concatenated into one row and
    position ids restart at each sample, which attention implementations use to keep samples apart."""
    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    return PaddingCollator(pad_token_id(tokenizer), pad_to_multiple_of)
