"""DataConfig → tokenised train/validation `datasets.Dataset`s, with counts of what was kept and dropped."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..config.schema import DataConfig, DatasetSpec
from ..errors import DataError
from .encoding import IGNORE_INDEX, encode_conversation
from .formats import Message, find_placeholders, normalize_record
from .parallel import map_samples, worker_count
from .readers import Record, read_records
from .templates.base import ChatTemplate

if TYPE_CHECKING:
    import datasets  # imported where the rows become Datasets: reading and checking records must not load it


class Sample(NamedTuple):
    source: int  # index of the DatasetSpec it came from
    record: Record
    messages: list[Message]


@dataclass
class BuiltData:
    """Tokenised data (columns input_ids, labels, length) and what happened on the way.

    stats: train_samples, validation_samples, dropped_no_label and truncated (both splits),
    train_tokens, train_supervised_tokens, and per training dataset (`datasets`, a list): path,
    records read, train (samples drawn into the mix), validation (held out from it), repeated
    (oversampled), dropped_no_label.
    """

    train: datasets.Dataset
    validation: datasets.Dataset | None
    stats: dict


def load_samples(spec: DatasetSpec, source: int = 0) -> list[Sample]:
    """The spec's records (the first `max_samples` of them) as validated conversations."""
    records = read_records(spec.path, spec.split)[:spec.max_samples]
    samples = [Sample(source, record, normalize_record(record, spec)) for record in records]
    leftover = set().union(*(find_placeholders(s.messages) for s in samples))
    if leftover:
        names = ", ".join("{{" + name + "}}" for name in sorted(leftover))
        example = ", ".join(f"{name}: ..." for name in sorted(leftover))
        warnings.warn(f"{spec.path}: placeholders {names} are not filled in, so the model would learn them "
                      f"literally; set `placeholders: {{{example}}}` on this dataset", stacklevel=2)
    return samples


def build_datasets(data_cfg: DataConfig, tokenizer, template: ChatTemplate, cache_root=None) -> BuiltData:
    """Read, validate, mix, split and tokenise the configured data; with `cache_root`, through the fingerprinted
    cache under it (a rerun with the same data, tokenizer and template skips all of this)."""
    from .cache import cached_build

    return cached_build(data_cfg, tokenizer, template, _build, cache_root)


def _build(data_cfg: DataConfig, tokenizer, template: ChatTemplate) -> BuiltData:
    rng = random.Random(data_cfg.seed)
    pools = [load_samples(spec, index) for index, spec in enumerate(data_cfg.train)]
    sizes = [len(pool) for pool in pools]
    if data_cfg.validation:
        if data_cfg.val_size:
            warnings.warn("data.val_size is ignored because data.validation lists datasets", stacklevel=2)
        held_out = [s for index, spec in enumerate(data_cfg.validation) for s in load_samples(spec, index)]
    else:
        pools, held_out = hold_out(pools, data_cfg.val_size, rng)
    train = mix(pools, mix_shares(data_cfg.train, pools), data_cfg.num_samples, rng)

    encode = _Encoder(tokenizer, template, data_cfg)
    train_rows = encode(train, "train")
    val_rows = encode(held_out, "validation") if held_out else []
    stats = {
        "train_samples": len(train_rows),
        "validation_samples": len(val_rows),
        "dropped_no_label": encode.dropped,
        "truncated": encode.truncated,
        "train_tokens": sum(row["length"] for row in train_rows),
        "train_supervised_tokens": sum(sum(t != IGNORE_INDEX for t in row["labels"]) for row in train_rows),
        "datasets": [_dataset_stats(i, spec, sizes[i], len(pools[i]), train,
                                    [] if data_cfg.validation else held_out, encode.dropped_by_source)
                     for i, spec in enumerate(data_cfg.train)],
    }
    import datasets

    return BuiltData(datasets.Dataset.from_list(train_rows),
                     datasets.Dataset.from_list(val_rows) if val_rows else None, stats)


def _dataset_stats(index: int, spec: DatasetSpec, records: int, pool: int, train: list[Sample],
                   held_out: list[Sample], dropped: dict[int, int]) -> dict:
    drawn = sum(s.source == index for s in train)
    return {"path": spec.path, "records": records, "train": drawn,
            "validation": sum(s.source == index for s in held_out),
            "repeated": drawn > pool, "dropped_no_label": dropped.get(index, 0)}


def mix_shares(specs: list[DatasetSpec], pools: list[list[Sample]]) -> list[float]:
    """Target fraction of the mix per dataset: the weights when any is given, else natural sizes."""
    if any("weight" in spec.model_fields_set for spec in specs):
        values = [spec.weight for spec in specs]
    else:
        values = [len(pool) for pool in pools]
    return [value / sum(values) for value in values]


def hold_out(pools: list[list[Sample]], val_size: float, rng: random.Random):
    """Validation drawn from each dataset in proportion to its size, before any oversampling, so that
    a repeated training sample can never also be a validation sample."""
    total = sum(len(pool) for pool in pools)
    if not val_size:
        return pools, []
    wanted = max(1, round(val_size * total)) if val_size < 1 else int(val_size)
    if wanted >= total:
        raise DataError(f"val_size={val_size} holds out {wanted} of {total} samples, leaving none to train on",
                        field="data.val_size", hint="use a fraction such as 0.05 or a smaller count")
    train, held = [], []
    for pool, count in zip(pools, apportion(wanted, [len(p) / total for p in pools])):
        picked = set(rng.sample(range(len(pool)), min(count, len(pool) - 1)))
        held += [s for i, s in enumerate(pool) if i in picked]
        train.append([s for i, s in enumerate(pool) if i not in picked])
    return train, held


def mix(pools: list[list[Sample]], shares: list[float], num_samples: int | None, rng: random.Random) -> list[Sample]:
    """Draw each dataset's share of the total; repeat a dataset only when its share exceeds its size.

    Without num_samples the total is the largest one that needs no repetition.
    """
    total = num_samples or int(min(len(pool) / share for pool, share in zip(pools, shares)) + 1e-6)
    mixed = []
    for pool, count in zip(pools, apportion(total, shares)):
        whole, rest = divmod(count, len(pool))
        mixed += pool * whole + rng.sample(pool, rest)
    rng.shuffle(mixed)
    return mixed


def apportion(total: int, shares: list[float]) -> list[int]:
    """Integer counts summing to `total`, as close to `shares` as possible (largest remainder)."""
    exact = [total * share for share in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


class _Encoder:
    """Encodes samples (each distinct record once, even when repeated), counting drops and truncations."""

    def __init__(self, tokenizer, template: ChatTemplate, cfg: DataConfig):
        self.tokenizer, self.template, self.cfg = tokenizer, template, cfg
        self.dropped = self.truncated = 0
        self.dropped_by_source: dict[int, int] = {}

    def __call__(self, samples: list[Sample], split: str) -> list[dict]:
        unique: dict[int, Sample] = {}
        for sample in samples:
            unique.setdefault(id(sample.record), sample)
        workers = worker_count(self.cfg.num_proc, len(unique))
        encoded_by_record = dict(zip(unique, map_samples(self._encode, list(unique.values()), workers)))
        rows = []
        for sample in samples:
            encoded = encoded_by_record[id(sample.record)]
            if encoded is None:
                self.dropped += 1
                if split == "train":
                    self.dropped_by_source[sample.source] = self.dropped_by_source.get(sample.source, 0) + 1
                continue
            self.truncated += encoded["truncated"]
            rows.append({k: encoded[k] for k in ("input_ids", "labels", "length")})
        dropped = len(samples) - len(rows)
        if not rows:
            raise DataError(f"all {len(samples)} {split} samples were dropped: no reply token fits in "
                            f"max_length={self.cfg.max_length}", field="data.max_length",
                            hint="raise data.max_length or shorten the prompts / system prompt")
        if dropped:
            warnings.warn(f"{dropped} of {len(samples)} {split} samples dropped: no reply token fits in "
                          f"max_length={self.cfg.max_length}", stacklevel=3)
        return rows

    def _encode(self, sample: Sample) -> dict | None:
        try:
            return encode_conversation(self.tokenizer, self.template, sample.messages,
                                       self.cfg.max_length, self.cfg.train_on)
        except DataError as exc:
            if exc.file:
                raise
            raise sample.record.error(exc.message, field=exc.field, hint=exc.hint) from None
