"""`data dedup`: drop exact and near duplicates (and, optionally, samples overlapping an eval set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..doctor.contamination import eval_prompts
from ..doctor.duplicates import groups, jaccard, minhash, near_duplicate_pairs
from ..doctor.text import normalize, shingles
from .records import Item, read_items, to_record, write_records


@dataclass
class DedupResult:
    kept: int
    exact: int
    near: int
    contaminated: int
    removed_lines: list[int | None] = field(default_factory=list)


def _text(item: Item) -> str:
    return "\n".join(m["content"] + ("\n" + m["input"] if m.get("input") else "") for m in item.messages)


def _prompt(item: Item) -> str:
    user = next(m for m in reversed(item.messages) if m["role"] == "user")
    return user["content"] + ("\n\n" + user["input"] if user.get("input") else "")


def dedup_items(items: list[Item], *, threshold: float = 0.8, near: bool = True, against: list[str] = (),
                contamination_threshold: float = 0.7) -> tuple[list[Item], DedupResult]:
    """Keep the first of each group of duplicates (exact after normalisation; near by MinHash/LSH + Jaccard)."""
    drop: dict[int, str] = {}
    seen: set[str] = set()
    for index, item in enumerate(items):
        key = normalize(_text(item))
        if key in seen:
            drop[index] = "exact"
        seen.add(key)
    if near:
        for members in groups(len(items), near_duplicate_pairs([_text(i) for i in items], threshold)):
            for index in members[1:]:
                drop.setdefault(index, "near")
    for path in against:
        from datasketch import MinHashLSH

        prompts = eval_prompts(path)
        exact = {normalize(text) for text, _ in prompts}
        sets = [shingles(text) for text, _ in prompts]
        lsh = MinHashLSH(threshold=contamination_threshold, num_perm=128)
        for index, items_set in enumerate(sets):
            if items_set:
                lsh.insert(index, minhash(items_set))
        for index, item in enumerate(items):
            prompt = _prompt(item)
            own = shingles(prompt)
            if normalize(prompt) in exact or own and any(
                    jaccard(own, sets[i]) >= contamination_threshold for i in lsh.query(minhash(own))):
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
