"""Consistency: one style across the dataset, as the model will copy whichever it sees.

- address: 你 versus 您 in Chinese replies (a reply using both is flagged on its own);
- punctuation width: half-width , ; : ? ! next to Chinese characters where the dataset mostly uses full-width;
- list style: numbered-list markers (1. / 1、 / 1) / (1)) and bullets (- / * / •) across samples;
- record format: Alpaca, ShareGPT and OpenAI records mixed in one file; system prompts on some samples only;
- answer labels: replies that start with a field label (输出：, 回答：, Output:, Answer:).
For each style family: when a few samples (at most 2, or `OUTLIER_SHARE` of those with a style) differ from
the rest, each gets a finding naming the majority; when the file is split more evenly, one file-level finding
gives the counts, since the fix is a decision about the whole file rather than a list of lines.
"""

from __future__ import annotations

import re
from collections import Counter

from .base import Finding, Sample, Section, flagged_rate
from .text import CJK_CHAR, language, strip_code

_CJK_SET = CJK_CHAR.pattern[1:-1]
HALF_WIDTH_IN_CHINESE = re.compile(f"[{_CJK_SET}][,;:?!](?!\\d)|[,;:?!][{_CJK_SET}]")
FULL_WIDTH = re.compile(r"[，；：？！。]")
# A numbered list needs items 1 and 2 in the same style ("5、8、10 和 12 的平均值" is not a list).
NUMBERED = [(style, [re.compile(pattern.format(n=n), re.M) for n in (1, 2)]) for style, pattern in [
    ("1.", r"^\s*{n}\.\s"), ("1、", r"^\s*{n}、"), ("1)", r"^\s*{n}\)"), ("(1)", r"^\s*[(（]{n}[)）]")]]
BULLETS = [(style, [re.compile(pattern, re.M)]) for style, pattern in [("-", r"^\s*- "), ("*", r"^\s*\* "),
                                                                       ("•", r"^\s*•")]]
ANSWER_LABEL = re.compile(r"^\s*(输出|回答|答案|答|回复|Output|Answer|Response)\s*[:：]", re.I)  # not "A:" (dialogues)
QUOTED = re.compile(r"“[^”]*”|「[^」]*」|『[^』]*』|\"[^\"\n]*\"")
OUTLIER_SHARE = 0.2


def _address(sample: Sample) -> str | None:
    """你 / 您 / both in the replies, quoted speech left out (characters in a story address each other)."""
    text = QUOTED.sub(" ", " ".join(sample.replies))
    ni, nin = "你" in text, "您" in text
    return "both" if ni and nin else "你" if ni else "您" if nin else None


def _punctuation(sample: Sample) -> str | None:
    text = strip_code(" ".join(sample.replies))
    if language(text) != "zh":
        return None
    half, full = len(HALF_WIDTH_IN_CHINESE.findall(text)), len(FULL_WIDTH.findall(text))
    return "half-width" if half > full else "full-width" if full else None


def _first_style(sample: Sample, styles) -> str | None:
    text = strip_code(sample.response)
    found = [name for name, patterns in styles if all(p.search(text) for p in patterns)]
    return found[0] if found else None


def _minority(section: Section, samples: list[Sample], styles: list[str | None], check: str, what: str) -> None:
    counts = Counter(s for s in styles if s not in (None, "both"))
    section.metrics[check.split(".")[1]] = dict(counts)
    if len(counts) < 2:
        return
    majority, majority_count = counts.most_common(1)[0]
    others = sum(counts.values()) - majority_count
    if others > max(2, OUTLIER_SHARE * sum(counts.values())):
        listing = ", ".join(f"'{style}' {count}" for style, count in counts.most_common())
        section.findings.append(Finding(check, "warning", f"the file mixes styles: {what} {listing}; pick one"))
        return
    for sample, style in zip(samples, styles):
        if style not in (None, "both", majority):
            section.findings.append(Finding.at(sample, check, "warning",
                                               f"{what} '{style}' while {majority_count} samples use '{majority}'"))


def check_consistency(samples: list[Sample], formats: dict[str, int] | None = None) -> Section:
    section = Section("consistency")
    addresses = [_address(s) for s in samples]
    for sample, address in zip(samples, addresses):
        if address == "both":
            section.findings.append(Finding.at(sample, "consistency.address", "warning",
                                               "the reply mixes 你 and 您"))
    _minority(section, samples, addresses, "consistency.address", "addresses the user as")
    _minority(section, samples, [_punctuation(s) for s in samples], "consistency.punctuation_width",
              "uses punctuation")
    _minority(section, samples, [_first_style(s, NUMBERED) for s in samples], "consistency.numbered_list",
              "numbers its list as")
    _minority(section, samples, [_first_style(s, BULLETS) for s in samples], "consistency.bullet_list",
              "bullets its list with")
    for sample in samples:
        if match := ANSWER_LABEL.match(sample.response):
            section.findings.append(Finding.at(sample, "consistency.answer_label", "warning",
                                               f"reply starts with the label {match.group(0).strip()!r}", "output"
                                               if sample.fmt == "alpaca" else None))
    if formats and len(formats) > 1:
        section.findings.append(Finding("consistency.record_format", "warning",
                                        f"record formats are mixed: {dict(formats)}"))
    systems = sum(s.messages[0]["role"] == "system" for s in samples)
    if 0 < systems < len(samples):
        section.findings.append(Finding("consistency.system_prompt", "info",
                                        f"{systems} of {len(samples)} samples have a system prompt, the rest none"))
    section.metrics["flagged"] = len({f.sample for f in section.findings if f.sample is not None})
    section.metrics["flagged_rate"] = flagged_rate(section.findings, len(samples))
    return section
