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
from .duplicates import candidate_index, jaccard, minhashes
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


def eval_overlaps(prompts: list[str], path: str, threshold: float = 0.7) -> tuple[list[tuple], int]:
    """Training prompts that equal or nearly equal a prompt of the eval file `path`: a list of
    (index into `prompts`, "exact" | "near", eval line, Jaccard), and the number of eval prompts.
    Shared by `data check --against` and `data dedup --against`."""
    evals = eval_prompts(path)
    exact = {normalize(text): line for text, line in evals}
    eval_sets = [shingles(text) for text, _ in evals]
    lsh = candidate_index(threshold)
    filled = [i for i, items in enumerate(eval_sets) if items]
    for index, signature in zip(filled, minhashes([eval_sets[i] for i in filled])):
        lsh.insert(index, signature)
    own = [shingles(prompt) for prompt in prompts]
    keys = [normalize(prompt) for prompt in prompts]
    todo = [i for i in range(len(prompts)) if keys[i] not in exact and own[i]]
    signatures = dict(zip(todo, minhashes([own[i] for i in todo])))
    found = []
    for index, key in enumerate(keys):
        if key in exact:
            found.append((index, "exact", exact[key], 1.0))
        elif index in signatures:
            best = max(((jaccard(own[index], eval_sets[j]), j) for j in lsh.query(signatures[index])),
                       default=(0.0, -1))
            if best[0] >= threshold:
                found.append((index, "near", evals[best[1]][1], round(best[0], 3)))
    return found, len(evals)


def check_contamination(samples: list[Sample], against: list[str], *, threshold: float = 0.7) -> Section:
    section = Section("contamination")
    total_eval = 0
    contaminated: set[int] = set()
    for path in against:
        overlaps, count = eval_overlaps([sample.prompt for sample in samples], path, threshold)
        total_eval += count
        for index, kind, line, similarity in overlaps:
            sample = samples[index]
            contaminated.add(sample.index)
            message = (f"prompt appears in {path}, line {line}" if kind == "exact" else
                       f"prompt nearly equals {path}, line {line} (Jaccard {similarity:.2f})")
            section.findings.append(Finding.at(sample, f"contamination.{kind}", "error", message))
    section.metrics = {"eval_files": against, "eval_prompts": total_eval, "contaminated": len(contaminated),
                       "contaminated_rate": round(len(contaminated) / len(samples), 4) if samples else 0.0,
                       "threshold": threshold}
    return section
