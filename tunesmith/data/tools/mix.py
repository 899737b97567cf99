"""`data mix`: several datasets in chosen ratios, general/replay data included, optional task prefixes.

The draw is the training mix's own (`data.dataset.mix`): each source gets its share of the total, and a source is
repeated only when its share exceeds its size. Plain-text sources ({"text": ...}, e.g. general web text as replay
against forgetting) become continuation samples. A prefix such as `[翻译]` is put before each instruction of a
source, or chosen per sample from its task type with `task_prefix` (multi-task training with explicit task tags).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...errors import DataError
from ..dataset import mix  # shared with training, so `data mix` and `data.train` weights mean the same
from ..doctor.diversity import TASK_LABELS, task_type
from ..doctor.text import language
from .records import Item, read_items, to_record, write_records


@dataclass
class MixSource:
    path: str
    weight: float = 1.0
    prefix: str | None = None


def parse_source(text: str) -> MixSource:
    """PATH, PATH=WEIGHT or PATH=WEIGHT=PREFIX."""
    path, _, rest = text.partition("=")
    weight_text, _, prefix = rest.partition("=")
    try:
        weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        raise DataError(f"weight '{weight_text}' is not a number", file=path,
                        hint="write PATH=WEIGHT, e.g. zh.json=0.7") from None
    if weight <= 0:
        raise DataError("weight must be positive", file=path)
    return MixSource(path, weight, prefix or None)


def _prefixed(item: Item, prefix: str) -> Item:
    messages = [dict(m) for m in item.messages]
    user = next(m for m in reversed(messages) if m["role"] == "user")
    user["content"] = f"{prefix} {user['content']}"
    return Item(messages, item.extra, item.record)


def mix_sources(sources: list[MixSource], *, total: int | None = None, seed: int = 42,
                task_prefix: bool = False) -> tuple[list[Item], dict[str, int]]:
    """The mixed items and how many were drawn from each source."""
    pools = []
    for index, source in enumerate(sources):
        items = read_items(source.path, text_as_continuation=True)
        if not items:
            raise DataError("no usable records", file=source.path)
        if source.prefix:
            items = [_prefixed(item, source.prefix) for item in items]
        elif task_prefix:
            items = [_prefixed(item, _task_tag(item)) for item in items]
        pools.append([(index, item) for item in items])
    weights = [s.weight for s in sources]
    shares = [w / sum(weights) for w in weights]
    mixed = mix(pools, shares, total, random.Random(seed))
    counts = {source.path: 0 for source in sources}
    for index, _ in mixed:
        counts[sources[index].path] += 1
    return [item for _, item in mixed], counts


def _task_tag(item: Item) -> str:
    user = next(m for m in reversed(item.messages) if m["role"] == "user")
    labels = TASK_LABELS["zh" if language(user["content"]) == "zh" else "en"]
    return f"[{labels[task_type(user['content'])]}]"


def mix_files(sources: list[MixSource], out: str, *, to: str = "alpaca", **options) -> dict[str, int]:
    items, counts = mix_sources(sources, **options)
    write_records(out, [to_record(item.messages, to, {**item.extra, "source": item.record.file})
                        for item in items])
    return counts
