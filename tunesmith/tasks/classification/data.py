"""Data files → (text[, pair], label id) examples with a label mapping, then tokenised `datasets.Dataset`s.

Labels are matched to `label_names` by name first; an integer label (or digit string, as CSV cells are) is
otherwise read as an index into `label_names`, so `label_names: [negative, positive]` names SST-2's 0/1 labels.
Without `label_names` the names are the distinct training labels, sorted (numerically when all are integers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import datasets

from ...config.schema import ClassificationConfig, DataConfig, DatasetSpec
from ...data.readers import Record, read_records
from ...errors import ConfigError, DataError


@dataclass
class Example:
    text: str
    pair: str | None
    label: object  # the raw label value as read; `label_id` maps it
    record: Record


@dataclass
class ClassificationData:
    train: datasets.Dataset
    validation: datasets.Dataset | None
    label_names: list[str]
    stats: dict


def read_examples(spec: DatasetSpec, task: ClassificationConfig, *, with_labels: bool = True) -> list[Example]:
    """The spec's records (the first `max_samples`), checked for the text, pair and label columns."""
    records = read_records(spec.path, spec.split)[:spec.max_samples]
    renames = {source: target for target, source in spec.columns.items()}  # columns: {wanted: name in file}
    examples = []
    for record in records:
        data = {renames.get(key, key): value for key, value in record.data.items()}
        text = _text_field(record, data, task.text_column)
        pair = _text_field(record, data, task.text_pair_column) if task.text_pair_column else None
        label = None
        if with_labels:
            label = data.get(task.label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise record.error(_missing(task.label_column, "label", data), field=task.label_column,
                                   hint=_columns_hint("classification.label_column", data))
        examples.append(Example(text, pair, label.strip() if isinstance(label, str) else label, record))
    return examples


def _text_field(record: Record, data: dict, column: str) -> str:
    value = data.get(column)
    if value is None:
        raise record.error(_missing(column, "text", data), field=column,
                           hint=_columns_hint("classification.text_column", data))
    if not isinstance(value, str) or not value.strip():
        raise record.error(f"the text column '{column}' must hold non-empty text, got {value!r}", field=column)
    return value


def _missing(column: str, kind: str, data: dict) -> str:
    return f"{kind} column '{column}' is missing" if column not in data else f"{kind} column '{column}' is empty"


def _columns_hint(option: str, data: dict) -> str:
    return f"this record has columns {sorted(data)}; set {option} (or rename with the dataset's `columns`)"


def infer_label_names(examples: list[Example]) -> list[str]:
    values = {str(e.label) for e in examples}
    if all(_as_int(v) is not None for v in values):
        return sorted(values, key=lambda v: _as_int(v))
    return sorted(values)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def label_id(example: Example, label_names: list[str], label_column: str) -> int:
    name = str(example.label)
    if name in label_names:
        return label_names.index(name)
    index = _as_int(example.label)
    if index is not None and 0 <= index < len(label_names):
        return index
    raise example.record.error(f"unknown label {example.label!r}", field=label_column,
                               hint=f"labels are {label_names} (or their indices 0..{len(label_names) - 1}); "
                                    f"fix the record or classification.label_names")


def build_classification_data(data_cfg: DataConfig, task: ClassificationConfig, tokenizer,
                              max_length: int) -> ClassificationData:
    """Read, label, split (data.validation or data.val_size) and tokenise the configured data."""
    if data_cfg.packing is True:
        raise ConfigError("packing does not apply to classification (one label per sequence)",
                          where="data.packing", hint="set data.packing: false")
    train = [e for spec in data_cfg.train for e in read_examples(spec, task)]
    validation = [e for spec in data_cfg.validation for e in read_examples(spec, task)]
    label_names = list(task.label_names) if task.label_names else infer_label_names(train)
    train_ids = [label_id(e, label_names, task.label_column) for e in train]
    if len(set(train_ids)) < 2:
        only = label_names[train_ids[0]] if train_ids else "none"
        raise DataError(f"the training data has a single class ({only!r}); a classifier needs at least two",
                        file=", ".join(spec.path for spec in data_cfg.train),
                        field=task.label_column, hint="check classification.label_column and the data files")
    val_ids = [label_id(e, label_names, task.label_column) for e in validation]
    if not validation and data_cfg.val_size:
        train, train_ids, validation, val_ids = _hold_out(train, train_ids, data_cfg.val_size, data_cfg.seed)
    encode = _Encoder(tokenizer, max_length)
    train_ds = encode(train, train_ids)
    val_ds = encode(validation, val_ids) if validation else None
    stats = {
        "train_samples": len(train),
        "validation_samples": len(validation),
        "truncated": encode.truncated,
        "train_class_counts": {name: train_ids.count(i) for i, name in enumerate(label_names)},
    }
    if validation:
        stats["validation_class_counts"] = {name: val_ids.count(i) for i, name in enumerate(label_names)}
    return ClassificationData(train_ds, val_ds, label_names, stats)


def _hold_out(examples: list[Example], ids: list[int], val_size: float, seed: int):
    wanted = max(1, round(val_size * len(examples))) if val_size < 1 else int(val_size)
    if wanted >= len(examples):
        raise DataError(f"val_size={val_size} holds out {wanted} of {len(examples)} samples, leaving none to "
                        f"train on", field="data.val_size", hint="use a fraction such as 0.1 or a smaller count")
    picked = set(random.Random(seed).sample(range(len(examples)), wanted))
    keep = [i for i in range(len(examples)) if i not in picked]
    held = sorted(picked)
    return ([examples[i] for i in keep], [ids[i] for i in keep], [examples[i] for i in held], [ids[i] for i in held])


class _Encoder:
    """Tokenise texts (and pairs) without padding; the collator pads each batch."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length, self.truncated = tokenizer, max_length, 0

    def __call__(self, examples: list[Example], ids: list[int]) -> datasets.Dataset:
        texts = [e.text for e in examples]
        pairs = [e.pair for e in examples] if examples and examples[0].pair is not None else None
        full = self.tokenizer(texts, pairs)["input_ids"]
        self.truncated += sum(len(t) > self.max_length for t in full)
        encoded = dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length))
        encoded["labels"] = ids
        encoded["length"] = [len(t) for t in encoded["input_ids"]]
        return datasets.Dataset.from_dict(encoded)


class ClassificationCollator:
    """Dynamic padding of each batch (transformers' DataCollatorWithPadding); the `length` column only feeds
    length-grouped batching and is not a model input."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        return self.pad([{k: v for k, v in f.items() if k != "length"} for f in features])
