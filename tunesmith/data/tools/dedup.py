"""`data dedup`: drop exact and near duplicates (and, optionally, samples overlapping an eval set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..doctor.contamination import eval_overlaps
from ..doctor.duplicates import conversation_text, groups, near_duplicate_pairs
from ..doctor.text import normalize
from ..formats import user_text
from .records import Item, read_items, to_record, write_records


@dataclass
class DedupResult:
    kept: int
    exact: int
    near: int
    contaminated: int
    removed_lines: list[int | None] = field(default_factory=list)



def dedup_items(items: list[Item], *, threshold: float = 0.8, near: bool = True, against: list[str] = (),
                contamination_threshold: float = 0.7) -> tuple[list[Item], DedupResult]:
    """Keep the first of each group of duplicates (exact after normalisation; near by MinHash/LSH + Jaccard)."""
    drop: dict[int, str] = {}
    seen: set[str] = set()
    texts = [conversation_text(item.messages) for item in items]
    for index, text in enumerate(texts):
        key = normalize(text)
        if key in seen:
            drop[index] = "exact"
        seen.add(key)
    if near:
        for members in groups(len(items), near_duplicate_pairs(texts, threshold)):
            for index in members[1:]:
                drop.setdefault(index, "near")
    prompts = [user_text(next(m for m in reversed(item.messages) if m["role"] == "user")) for item in items]
    for path in against:
        for index, *_ in eval_overlaps(prompts, path, contamination_threshold)[0]:
            drop.setdefault(index, "contaminated")
    kept = [item for index, item in enumerate(items) if index not in drop]
    reasons = list(drop.values())
    return kept, DedupResult(len(kept), reasons.count("exact"), reasons.count("near"), reasons.count("contaminated"),
                             [items[i].record.line for i in sorted(drop)])


def dedup_file(source: str, out: str, *, to: str | None = None, fmt: str = "auto", **options) -> DedupResult:
    """Deduplicated copy of `source`: records are written unchanged unless `to` names a format."""
    items = read_items(source, fmt)
    kept, result = dedup_items(items, **options)
    write_records(out, [to_record(item.messages, to, item.extra) if to else item.record.data for item in kept])
    return result
