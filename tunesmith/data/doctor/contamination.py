"""Overlap with an evaluation set: training prompts that equal or nearly equal an eval prompt.

Eval records are read with the same readers (any supported format, or records with a `prompt`/`question`/`text`
field); their prompts are compared with the training prompts: exact match after normalisation, and near match by
MinHash/LSH on character shingles (see `duplicates`). Only prompts are compared, because a contaminated training
sample usually copies the question, while the answers may be worded differently.
"""

from __future__ import annotations

from ...errors import DataError
from ..formats import detect_format, to_conversation, user_text
from ..readers import read_records
from .base import Finding, Sample, Section
from .duplicates import jaccard, minhash
from .text import normalize, shingles

_PROMPT_FIELDS = ("prompt", "question", "query", "instruction", "text", "input")


def eval_prompts(path: str) -> list[tuple[str, int | None]]:
    """(prompt text, line) for every record of an eval file that has a readable prompt."""
    prompts = []
    for record in read_records(path):
        data = record.data if isinstance(record.data, dict) else {}
        text = None
        if detect_format(data) in ("openai", "sharegpt") or {"instruction", "output"} <= set(data):
            try:
                messages = to_conversation(data, file=record.file, line=record.line)
                text = next(user_text(m) for m in reversed(messages) if m["role"] == "user")
            except (DataError, StopIteration):
                text = None
        if text is None:
            parts = [data[f] for f in _PROMPT_FIELDS if isinstance(data.get(f), str) and data[f].strip()]
            text = "\n\n".join(parts[:2]) if parts else None
        if text:
            prompts.append((text, record.line))
    if not prompts:
        raise DataError("no prompts found in the eval file", file=path,
                        hint=f"records need messages/conversations or one of the fields {', '.join(_PROMPT_FIELDS)}")
    return prompts


def check_contamination(samples: list[Sample], against: list[str], *, threshold: float = 0.7) -> Section:
    from datasketch import MinHashLSH

    section = Section("contamination")
    total_eval = 0
    contaminated: set[int] = set()
    for path in against:
        prompts = eval_prompts(path)
        total_eval += len(prompts)
        exact = {normalize(text): line for text, line in prompts}
        sets = [shingles(text) for text, _ in prompts]
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        for index, items in enumerate(sets):
            if items:
                lsh.insert(index, minhash(items))
        for sample in samples:
            key = normalize(sample.prompt)
            if key in exact:
                contaminated.add(sample.index)
                section.findings.append(Finding.at(sample, "contamination.exact", "error",
                                                   f"prompt appears in {path}, line {exact[key]}"))
                continue
            items = shingles(sample.prompt)
            if not items:
                continue
            best = max(((jaccard(items, sets[i]), i) for i in lsh.query(minhash(items))), default=(0.0, -1))
            if best[0] >= threshold:
                contaminated.add(sample.index)
                section.findings.append(Finding.at(
                    sample, "contamination.near", "error",
                    f"prompt nearly equals {path}, line {prompts[best[1]][1]} (Jaccard {best[0]:.2f})"))
    section.metrics = {"eval_files": against, "eval_prompts": total_eval, "contaminated": len(contaminated),
                       "contaminated_rate": round(len(contaminated) / len(samples), 4) if samples else 0.0,
                       "threshold": threshold}
    return section
