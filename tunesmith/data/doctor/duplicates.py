"""Exact and near duplicates, and conflicting answers to the same prompt.

Near duplicates: MinHash signatures of character 5-gram shingles, candidate pairs from LSH (datasketch), each
candidate confirmed with the exact Jaccard similarity of the shingle sets, then grouped (union-find).
Character shingles work for Chinese and English alike without a segmenter.
"""

from __future__ import annotations

from collections import defaultdict

from .base import Finding, Sample, Section
from .text import normalize, shingles

NUM_PERM = 128
LSH_MARGIN = 0.1


def minhashes(sets: list[set[str]]) -> list:
    """Signatures of many shingle sets: `MinHash.bulk` shares one set of hash permutations, which a MinHash
    built alone would draw again (about half of its cost)."""
    from datasketch import MinHash

    return MinHash.bulk([[item.encode("utf-8") for item in items] for items in sets], num_perm=NUM_PERM, seed=1)


def candidate_index(threshold: float):
    """An LSH index tuned below `threshold`: its banding is an S-curve, not a step, so pairs just above the
    threshold are often missed when it is tuned at the threshold itself. Candidates are confirmed with the exact
    Jaccard, so the lower setting costs a few more checks and reports nothing falsely."""
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=max(0.3, threshold - LSH_MARGIN), num_perm=NUM_PERM)


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_pairs(texts: list[str], threshold: float = 0.8) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) for i < j whose shingle sets have Jaccard >= threshold."""
    sets = [shingles(text) for text in texts]
    lsh = candidate_index(threshold)
    pairs = []
    filled = [index for index, items in enumerate(sets) if items]
    for index, signature in zip(filled, minhashes([sets[i] for i in filled])):
        items = sets[index]
        for other in lsh.query(signature):
            similarity = jaccard(items, sets[other])
            if similarity >= threshold:
                pairs.append((other, index, round(similarity, 3)))
        lsh.insert(index, signature)
    return pairs


def groups(size: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (size > 1) of the pair graph, each sorted, in order of first member."""
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[find(j)] = find(i)
    members = defaultdict(list)
    for i in range(size):
        members[find(i)].append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def conversation_text(messages: list[dict]) -> str:
    """Every turn (with Alpaca inputs) as one text: what duplicate detection compares."""
    return "\n".join(m["content"] + ("\n" + m["input"] if m.get("input") else "") for m in messages)


def sample_text(sample: Sample) -> str:
    """What duplicates are judged on: the conversation, and for a preference pair its rejected reply too (two pairs
    sharing prompt and chosen but not rejected are different pairs), for a KTO reply its label."""
    text = conversation_text(sample.messages)
    if hasattr(sample.preference, "rejected"):
        return f"{text}\n{sample.preference.rejected}"
    return f"{text}\n{sample.preference.label}" if sample.preference is not None else text


def check_duplicates(samples: list[Sample], *, threshold: float = 0.8) -> Section:
    section = Section("duplicates")
    seen: dict[str, Sample] = {}
    exact = 0
    for sample in samples:
        key = normalize(sample_text(sample))
        if key in seen:
            exact += 1
            first = seen[key]
            what = "exact duplicate pair" if hasattr(sample.preference, "rejected") else "exact duplicate"
            section.findings.append(Finding.at(sample, "duplicates.exact", "warning", f"{what} of line {first.line}"))
        else:
            seen[key] = sample
    by_prompt: dict[str, list[Sample]] = defaultdict(list)
    # Several pairs (or KTO replies) per prompt are how preference data is made, not a conflict; the preference
    # section reports the ones that contradict each other.
    for sample in (s for s in samples if s.preference is None):
        by_prompt[normalize(sample.prompt)].append(sample)
    conflicts = 0
    for group in by_prompt.values():
        answers = {normalize(s.response) for s in group}
        if len(answers) > 1:
            for sample in group[1:]:
                conflicts += 1
                section.findings.append(Finding.at(sample, "duplicates.conflicting", "warning",
                                                   f"same prompt as line {group[0].line} with a different reply"))
    texts = [sample_text(s) for s in samples]
    exact_keys = {f.sample for f in section.findings if f.check == "duplicates.exact"}
    near = 0
    for members in groups(len(samples), near_duplicate_pairs(texts, threshold)):
        first = samples[members[0]]
        for index in members[1:]:
            if samples[index].index in exact_keys:
                continue
            near += 1
            section.findings.append(Finding.at(samples[index], "duplicates.near", "warning",
                                               f"near duplicate (Jaccard >= {threshold}) of line {first.line}"))
    total = len(samples) or 1
    section.metrics = {"exact": exact, "exact_rate": round(exact / total, 4), "near": near,
                       "near_rate": round(near / total, 4), "conflicting": conflicts, "threshold": threshold}
    return section
