"""Counts and length distributions: characters always, tokens when a tokenizer is given."""

from __future__ import annotations

import statistics

from .base import Finding, Sample, Section


def _summary(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": round(statistics.fmean(values), 1), "min": ordered[0], "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99), "max": ordered[-1]}


def check_stats(samples: list[Sample], tokenizer=None, template=None, max_len: int | None = None) -> Section:
    """Length statistics. With a tokenizer, `tokens` is the rendered sample's length (template included when a
    template is given, else prompt + response); `over_max_len` counts samples longer than `max_len` tokens."""
    section = Section("stats")
    prompt_chars = [len(s.prompt) for s in samples]
    response_chars = [len(s.response) for s in samples]
    turns = [sum(m["role"] == "user" for m in s.messages) for s in samples]
    section.metrics.update({
        "samples": len(samples),
        "multi_turn": sum(t > 1 for t in turns),
        "with_system": sum(s.messages[0]["role"] == "system" for s in samples),
        "with_input": sum(bool(s.input) for s in samples),
        "prompt_chars": _summary(prompt_chars),
        "response_chars": _summary(response_chars),
    })
    section.charts["prompt length (characters)"] = prompt_chars
    section.charts["response length (characters)"] = response_chars
    if tokenizer is None or not samples:
        return section
    lengths = [_token_length(tokenizer, template, s) for s in samples]
    section.metrics["tokens"] = _summary(lengths)
    section.metrics["total_tokens"] = sum(lengths)
    section.charts["sample length (tokens)"] = lengths
    if max_len:
        over = [s for s, n in zip(samples, lengths) if n > max_len]
        section.metrics["max_len"] = max_len
        section.metrics["over_max_len"] = len(over)
        section.metrics["over_max_len_rate"] = round(len(over) / len(samples), 4)
        for sample, n in zip(samples, lengths):
            if n > max_len:
                section.findings.append(Finding.at(sample, "stats.over_max_len", "warning",
                                                   f"{n} tokens, over --max-len {max_len}: training truncates it"))
    return section


def _token_length(tokenizer, template, sample: Sample) -> int:
    if template is not None:
        text = template.render(sample.messages).text
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (sample.prompt, sample.response))
