"""Augmentation through a teacher: paraphrase, and back-translation (zh→en→zh, en→zh→en).

For each record the chosen field (the last instruction, the last reply, or both) is rewritten; a variant is kept
only when it is non-empty, in the original's language, within a sane length ratio, different from the original
(normalised) and not a near copy (ROUGE-L below `max_rouge`). Variants are appended to the output JSONL with their
provenance (method, field, source file and line, pivot language); a rerun skips the (line, method) pairs already
there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..doctor.text import language, normalize, rouge_l, units
from ..tools.records import Item, read_items, to_record
from .output import JsonlAppender, provenance
from .teachers import Teacher, TeacherOptions

METHODS = ("paraphrase", "backtranslate")
FIELDS = ("instruction", "output", "both")
PARAPHRASE = {"zh": "请用不同的表达方式改写下面的文本，保持含义和信息完全不变。只输出改写后的文本。\n\n{text}",
              "en": "Rewrite the following text in different words, keeping its meaning and information exactly. "
                    "Output only the rewritten text.\n\n{text}"}
TRANSLATE = {"zh": "把下面的文本翻译成中文。只输出译文。\n\n{text}",
             "en": "Translate the following text into English. Output only the translation.\n\n{text}"}


@dataclass
class AugmentConfig:
    methods: tuple[str, ...] = ("paraphrase",)
    field: str = "instruction"
    batch_size: int = 8
    max_rouge: float = 0.9
    min_length_ratio: float = 0.3
    max_length_ratio: float = 3.0
    options: TeacherOptions = None  # type: ignore[assignment]

    def __post_init__(self):
        self.options = self.options or TeacherOptions(max_tokens=512, temperature=0.7)


def _targets(item: Item, field: str) -> list[tuple[str, int]]:
    """(field name, message index) pairs to rewrite."""
    last_user = max(i for i, m in enumerate(item.messages) if m["role"] == "user")
    chosen = {"instruction": [("instruction", last_user)], "output": [("output", len(item.messages) - 1)]}
    return chosen[field] if field != "both" else chosen["instruction"] + chosen["output"]


def variant_problem(original: str, variant: str, cfg: AugmentConfig, pivot: str | None = None) -> str:
    """Why a variant is rejected ("" when kept). With back-translation, a pivot that is empty or still in the
    original's language means the teacher did not translate, so the round trip proves nothing."""
    variant = variant.strip()
    if pivot is not None and (not units(pivot) or language(pivot) == language(original)):
        return "pivot"
    if not units(variant):
        return "empty"
    if normalize(variant) == normalize(original):
        return "unchanged"
    if language(original) and language(variant) != language(original):
        return "language"
    ratio = len(variant) / max(1, len(original))
    if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
        return "length"
    if rouge_l(units(original), units(variant)) >= cfg.max_rouge:
        return "too_similar"
    return ""


def _rewrite(teacher: Teacher, texts: list[str], method: str, options: TeacherOptions) -> tuple[list[str], list]:
    """Rewritten texts, and the pivot texts of back-translation (None for paraphrase)."""
    langs = [language(t) or "en" for t in texts]
    if method == "paraphrase":
        prompts = [[{"role": "user", "content": PARAPHRASE[lang].format(text=t)}] for t, lang in zip(texts, langs)]
        return teacher.complete(prompts, options), [None] * len(texts)
    pivots_lang = ["en" if lang == "zh" else "zh" for lang in langs]
    there = teacher.complete([[{"role": "user", "content": TRANSLATE[p].format(text=t)}]
                              for t, p in zip(texts, pivots_lang)], options)
    back = teacher.complete([[{"role": "user", "content": TRANSLATE[lang].format(text=t.strip())}]
                             for t, lang in zip(there, langs)], options)
    return back, [t.strip() for t in there]


def augment_file(teacher: Teacher, source: str, out: str, cfg: AugmentConfig, *, fmt: str = "auto",
                 to: str = "alpaca", progress=None) -> tuple[int, Counter]:
    """Append variants of every record of `source` to `out`; returns (written, rejected reasons)."""
    items = read_items(source, fmt)
    rejected: Counter = Counter()
    written = 0
    with JsonlAppender(out) as sink:
        done = {(r.get("provenance", {}).get("source_line"), r.get("provenance", {}).get("method"))
                for r in sink.existing}
        jobs = [(item, method) for method in cfg.methods for item in items
                if (item.record.line, method) not in done]
        for start in range(0, len(jobs), cfg.batch_size):
            batch = jobs[start:start + cfg.batch_size]
            new_messages = {id(pair): [dict(m) for m in pair[0].messages] for pair in batch}
            failed: set[int] = set()
            pivots: dict[int, dict] = {}
            for field_name in ("instruction", "output"):
                if cfg.field not in (field_name, "both"):
                    continue
                for method in cfg.methods:
                    chosen = [pair for pair in batch if pair[1] == method]
                    if not chosen:
                        continue
                    spots = [_targets(pair[0], field_name)[0][1] for pair in chosen]
                    originals = [pair[0].messages[i]["content"] for pair, i in zip(chosen, spots)]
                    variants, pivot_texts = _rewrite(teacher, originals, method, cfg.options)
                    for pair, spot, original, variant, pivot in zip(chosen, spots, originals, variants,
                                                                    pivot_texts):
                        reason = variant_problem(original, variant, cfg, pivot)
                        if reason:
                            rejected[f"{field_name}:{reason}"] += 1
                            failed.add(id(pair))
                        new_messages[id(pair)][spot]["content"] = variant.strip()
                        if pivot is not None:
                            pivots.setdefault(id(pair), {})[field_name] = pivot
            records = []
            for pair in batch:
                item, method = pair
                if id(pair) in failed:
                    continue
                details = {"field": cfg.field, "source": item.record.file, "source_line": item.record.line}
                if method == "backtranslate":
                    details["pivot"] = pivots.get(id(pair), {})
                records.append(to_record(new_messages[id(pair)], to,
                                         {**item.extra, "provenance": provenance(method, teacher.name, **details)}))
            sink.write(records)
            written += len(records)
            if progress:
                progress(min(start + cfg.batch_size, len(jobs)), len(jobs))
    return written, rejected
