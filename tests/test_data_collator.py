"""Batch collation: dynamic padding and padding-free packing."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import DataCollatorWithFlattening

from tunesmith.data.collator import make_collator

FEATURES = [{"input_ids": [1, 5, 6], "labels": [-100, 5, 6], "length": 3},
            {"input_ids": [1, 7, 8, 9, 10], "labels": [-100, -100, 8, 9, 10], "length": 5}]


def _tokenizer(pad=None, eos=2):
    return SimpleNamespace(pad_token_id=pad, eos_token_id=eos)


def test_pads_right_with_pad_id_and_masks_labels():
    batch = make_collator(_tokenizer(pad=0))(FEATURES)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 0, 0], [1, 7, 8, 9, 10]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, -100], [-100, -100, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert set(batch) == {"input_ids", "labels", "attention_mask"} and batch["input_ids"].dtype == torch.long


def test_without_pad_token_falls_back_to_eos():
    batch = make_collator(_tokenizer(pad=None, eos=2))(FEATURES)
    assert batch["input_ids"][0, -1].item() == 2 and batch["labels"][0, -1].item() == -100


def test_pad_to_multiple_of_eight():
    batch = make_collator(_tokenizer(pad=0), pad_to_multiple_of=8)(FEATURES)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"][1].sum().item() == 5


def test_packing_flattens_and_restarts_positions():
    collator = make_collator(_tokenizer(pad=0), packing=True)
    assert isinstance(collator, DataCollatorWithFlattening)
    batch = collator(FEATURES)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, -100, 8, 9, 10]]  # no loss across the seam
