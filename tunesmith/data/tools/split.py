"""`data split`: train / validation (/ test) files, stratified by task type, leak-free for near duplicates.

Near-duplicate groups (MinHash/LSH, as in `dedup`) are assigned to one split as a whole, so a validation sample
never has a near copy in train; within each task type the groups are shuffled and cut by the requested shares.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from ...errors import DataError
from ..dataset import apportion  # the training mix's largest-remainder rounding, shared on purpose
from ..doctor.diversity import task_type
from ..doctor.duplicates import conversation_text, groups, near_duplicate_pairs
from .records import read_items, to_record, write_records


def split_file(source: str, out_dir: str, *, validation: float = 0.1, test: float = 0.0, seed: int = 42,
               stratify: bool = True, threshold: float = 0.8, fmt: str = "auto", to: str | None = None,
               suffix: str = ".jsonl") -> dict[str, int]:
    """Writes train/validation/test files under `out_dir`; returns the count per split."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise DataError("split shares must be in [0, 1) and sum to less than 1", field="--validation/--test")
    items = read_items(source, fmt)
    rng = random.Random(seed)
    texts = [conversation_text(item.messages) for item in items]
    grouped = {i: members for members in groups(len(items), near_duplicate_pairs(texts, threshold)) for i in members}
    units = []  # groups of item indices that travel together
    done: set[int] = set()
    for index in range(len(items)):
        if index not in done:
            members = grouped.get(index, [index])
            done.update(members)
            units.append(members)
    strata = defaultdict(list)
    for unit in units:
        user = next(m for m in reversed(items[unit[0]].messages) if m["role"] == "user")
        strata[task_type(user["content"]) if stratify else "all"].append(unit)
    names = ["train", "validation", "test"]
    shares = [1 - validation - test, validation, test]
    assigned: dict[str, list[int]] = {name: [] for name in names}
    for stratum in strata.values():
        rng.shuffle(stratum)
        size = sum(len(u) for u in stratum)
        targets = apportion(size, shares)
        filled = [0, 0, 0]
        for unit in stratum:  # the split furthest below its target takes the next group
            pick = max(range(3), key=lambda k: (targets[k] - filled[k]) / (targets[k] or 1) if targets[k] else -1)
            filled[pick] += len(unit)
            assigned[names[pick]] += unit
    counts = {}
    for name in names:
        if name == "test" and not test:
            continue
        chosen = sorted(assigned[name])
        rows = [to_record(items[i].messages, to, items[i].extra) if to else items[i].record.data for i in chosen]
        write_records(str(Path(out_dir) / f"{name}{suffix}"), rows)
        counts[name] = len(rows)
    return counts
