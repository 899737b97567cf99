"""`data check`: run every detector family over one file and gather a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .accuracy import check_accuracy
from .base import Section
from .consistency import check_consistency
from .contamination import check_contamination
from .diversity import check_diversity
from .duplicates import check_duplicates
from .preference import check_preference
from .schema import load_samples
from .stats import check_stats


@dataclass
class CheckOptions:
    format: str = "auto"
    tokenizer: str | None = None  # a model reference whose tokenizer measures lengths in tokens
    template: str | None = None  # render samples with this template before counting tokens (needs tokenizer)
    max_len: int | None = None
    against: list[str] = field(default_factory=list)  # eval files for the contamination check
    near_duplicate_threshold: float = 0.8
    contamination_threshold: float = 0.7
    max_task_share: float = 0.6
    min_distinct_2: float = 0.3
    min_output_units: int = 5
    length_bias_share: float = 0.8  # preference pairs: chosen longer (or shorter) in this share of pairs
    length_bias_ratio: float = 1.5  # ... or mean chosen / rejected length beyond this ratio (either way)


@dataclass
class Report:
    file: str
    sections: dict[str, Section]
    summary: dict[str, Any]

    @property
    def findings(self):
        return [f for section in self.sections.values() for f in section.findings]

    def to_dict(self) -> dict:
        return {"file": self.file, "summary": self.summary,
                "sections": {name: section.to_dict() for name, section in self.sections.items()}}


def run_check(path: str, options: CheckOptions | None = None, progress=None) -> Report:
    """All detectors over `path`. `progress(stage_name)` is called before each stage when given."""
    options = options or CheckOptions()
    step = progress or (lambda name: None)
    step("schema")
    samples, schema = load_samples(path, options.format)
    sections = {"schema": schema}
    step("statistics")
    tokenizer, template = _tokenizer(options)
    sections["stats"] = check_stats(samples, tokenizer, template, options.max_len)
    step("diversity")
    sections["diversity"] = check_diversity(samples, max_task_share=options.max_task_share,
                                            min_distinct_2=options.min_distinct_2)
    step("accuracy")
    sections["accuracy"] = check_accuracy(samples, min_output_units=options.min_output_units)
    step("consistency")
    sections["consistency"] = check_consistency(samples, schema.metrics["formats"])
    step("duplicates")
    sections["duplicates"] = check_duplicates(samples, threshold=options.near_duplicate_threshold)
    step("preference")
    empty = sum(f.check == "preference.empty_side" for f in schema.findings)
    if preference := check_preference(samples, empty, bias_share=options.length_bias_share,
                                       bias_ratio=options.length_bias_ratio):
        sections["preference"] = preference
    if options.against:
        step("contamination")
        sections["contamination"] = check_contamination(samples, options.against,
                                                        threshold=options.contamination_threshold)
    return Report(path, sections, summarize(sections))


def _tokenizer(options: CheckOptions):
    if not options.tokenizer:
        return None, None
    from ...config.schema import ModelConfig
    from ...models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=options.tokenizer))
    template = None
    if options.template:
        from ..templates.registry import get_template

        template = get_template(options.template, tokenizer)
    return tokenizer, template


def summarize(sections: dict[str, Section]) -> dict[str, Any]:
    """Flat headline numbers: what `--fail-if` conditions refer to."""
    get = lambda section, key, default=0: sections[section].metrics.get(key, default) \
        if section in sections else default  # noqa: E731
    findings = [f for s in sections.values() for f in s.findings]
    return {
        "records": get("schema", "records"), "valid": get("schema", "valid"),
        "invalid": get("schema", "invalid"), "invalid_rate": get("schema", "invalid_rate", 0.0),
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "over_max_len_rate": get("stats", "over_max_len_rate", 0.0),
        "top_task_share": get("diversity", "top_task_share", 0.0),
        "distinct_2_instruction": get("diversity", "distinct_2_instruction", 0.0),
        "verb_object_pairs": get("diversity", "unique_verb_object_pairs"),
        "accuracy_flagged_rate": get("accuracy", "flagged_rate", 0.0),
        "consistency_flagged_rate": get("consistency", "flagged_rate", 0.0),
        "exact_duplicates": get("duplicates", "exact"), "exact_duplicate_rate": get("duplicates", "exact_rate", 0.0),
        "near_duplicates": get("duplicates", "near"), "near_duplicate_rate": get("duplicates", "near_rate", 0.0),
        "conflicting": get("duplicates", "conflicting"),
        "preference_pairs": get("preference", "pairs"), "identical_pairs": get("preference", "identical"),
        "swapped_pairs": get("preference", "swapped"),
        "chosen_longer_share": get("preference", "chosen_longer_share", 0.0),
        "length_ratio": get("preference", "length_ratio", 0.0),
        "kto_examples": get("preference", "kto_examples"), "kto_desirable": get("preference", "desirable"),
        "kto_undesirable": get("preference", "undesirable"),
        "contaminated": get("contamination", "contaminated"),
        "contaminated_rate": get("contamination", "contaminated_rate", 0.0),
    }
