"""Preference checks: pairs (DPO, ORPO, SimPO, reward) and labelled replies (KTO), in any shape
`data/preference.py` reads.

- identical sides: a pair whose chosen and rejected replies are the same text teaches nothing (DPO's margin is 0
  whatever the weights, so its gradient is too);
- empty sides: training rejects the record, so the schema reports it, as `preference.empty_side`;
- length bias: when chosen is longer in most pairs (or on average much longer), a reward model or DPO can learn
  "longer is better" instead of the preference; the numbers are reported either way. Lengths are in units
  (Latin words, CJK characters: `text.units`), so Chinese and English compare alike without a tokenizer;
- swapped pairs: the same two replies preferred both ways, and KTO replies labelled both ways;
- KTO label balance: both labels are needed; the KTO paper advises desirable_weight * n_desirable /
  (undesirable_weight * n_undesirable) in [1, 4/3].
Exact duplicate pairs are reported by the duplicates section, which compares the whole pair for these records.
"""

from __future__ import annotations

import statistics
from typing import Any

from ...config.schema import DatasetSpec
from ..formats import Message
from ..preference import Pair, Unpaired, read_pair, read_unpaired
from ..readers import Record
from .base import Finding, Sample, Section
from .text import normalize, units

SIDES = ("chosen", "rejected", "completion")
KTO_BALANCE = (1.0, 4 / 3)  # desirable / undesirable, with unit weights (the KTO paper's advice)


def is_preference(data: dict[str, Any]) -> bool:
    """A pair (chosen + rejected) or a KTO example (a boolean label with a reply)."""
    if "chosen" in data and "rejected" in data:
        return True
    return isinstance(data.get("label"), bool) and any(k in data for k in ("completion", "messages", "conversations"))


def read_preference(record: Record, fmt: str) -> tuple[list[Message], Pair | Unpaired]:
    """The record as the conversation the other checks read (prompt + chosen, or prompt + the KTO reply) and as
    the pair or example the preference check reads. A DataError names file, line and field."""
    spec = DatasetSpec(path=record.file, format=fmt)
    if "label" in record.data and "rejected" not in record.data:
        item = read_unpaired(record, spec)[0]
        reply = item.completion
    else:
        item = read_pair(record, spec)
        reply = item.chosen
    return [*item.prompt, {"role": "assistant", "content": reply}], item


def is_empty_side(record: Record, message: str) -> bool:
    """Whether a reading error is an empty reply (as opposed to a broken record)."""
    return message.startswith("empty assistant reply") and is_preference(record.data)


def check_preference(samples: list[Sample], empty_sides: int = 0, *, bias_share: float = 0.8,
                     bias_ratio: float = 1.5) -> Section | None:
    """None when the file holds no preference records. `empty_sides`: records the schema rejected for an empty
    reply (counted here too). `bias_share` / `bias_ratio`: a length bias is reported when chosen is longer in at
    least `bias_share` of the pairs (or shorter in that share), or the mean lengths differ by `bias_ratio`."""
    pairs = [s for s in samples if isinstance(s.preference, Pair)]
    unpaired = [s for s in samples if isinstance(s.preference, Unpaired)]
    if not pairs and not unpaired and not empty_sides:
        return None
    section = Section("preference", metrics={"pairs": len(pairs), "kto_examples": len(unpaired),
                                             "empty_sides": empty_sides})
    if pairs:
        _pairs(section, pairs, bias_share, bias_ratio)
    if unpaired:
        _labels(section, unpaired)
    return section


def _pairs(section: Section, samples: list[Sample], bias_share: float, bias_ratio: float) -> None:
    identical = 0
    seen: dict[tuple[str, str, str], Sample] = {}
    swapped = 0
    differences = []
    for sample in samples:
        pair = sample.preference
        prompt, chosen, rejected = (normalize(_prompt_text(pair.prompt)), normalize(pair.chosen),
                                    normalize(pair.rejected))
        if chosen == rejected:
            identical += 1
            section.findings.append(Finding.at(sample, "preference.identical", "warning",
                                               "chosen and rejected are the same text: the pair teaches nothing",
                                               "rejected"))
        elif (first := seen.get((prompt, rejected, chosen))) is not None:
            swapped += 1
            section.findings.append(Finding.at(sample, "preference.swapped", "warning",
                                               f"the same two replies as line {first.line}, preferred the other way",
                                               "chosen"))
        seen.setdefault((prompt, chosen, rejected), sample)
        differences.append(len(units(pair.chosen)) - len(units(pair.rejected)))
    chosen_lengths = [len(units(s.preference.chosen)) for s in samples]
    rejected_lengths = [len(units(s.preference.rejected)) for s in samples]
    longer, shorter = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    share = round(longer / len(samples), 4)
    mean_chosen, mean_rejected = statistics.fmean(chosen_lengths), statistics.fmean(rejected_lengths)
    ratio = round(mean_chosen / mean_rejected, 3) if mean_rejected else float("inf")
    section.metrics.update({
        "identical": identical, "swapped": swapped, "chosen_longer": longer, "chosen_shorter": shorter,
        "same_length": len(samples) - longer - shorter, "chosen_longer_share": share,
        "mean_chosen_units": round(mean_chosen, 1), "mean_rejected_units": round(mean_rejected, 1),
        "length_ratio": ratio})
    section.charts["chosen minus rejected length (units)"] = differences
    skew = max(share, shorter / len(samples))
    if skew >= bias_share or not 1 / bias_ratio < ratio < bias_ratio:
        which = "longer" if longer >= shorter else "shorter"
        count = longer if which == "longer" else shorter
        section.findings.append(Finding(
            "preference.length_bias", "warning",
            f"chosen is {which} than rejected in {count} of {len(samples)} pairs ({count / len(samples):.0%}); "
            f"mean length {mean_chosen:.1f} vs {mean_rejected:.1f} units (ratio {ratio}): a reward model or DPO "
            f"can learn the length instead of the preference (balance the lengths, or add length-matched pairs)",
            samples[0].file))


def _labels(section: Section, samples: list[Sample]) -> None:
    desirable = sum(s.preference.label for s in samples)
    undesirable = len(samples) - desirable
    ratio = round(desirable / undesirable, 3) if undesirable else float("inf")
    section.metrics.update({"desirable": desirable, "undesirable": undesirable, "desirable_ratio": ratio})
    section.charts["KTO labels"] = {"desirable": desirable, "undesirable": undesirable}
    file = samples[0].file
    if not desirable or not undesirable:
        section.findings.append(Finding("preference.kto_one_label", "error",
                                        f"{desirable} desirable and {undesirable} undesirable examples: KTO needs "
                                        f"both", file, field="label"))
    elif not KTO_BALANCE[0] <= ratio <= KTO_BALANCE[1]:
        section.findings.append(Finding(
            "preference.kto_balance", "info",
            f"{desirable} desirable vs {undesirable} undesirable (ratio {ratio}); the KTO paper advises "
            f"desirable_weight x {desirable} / (undesirable_weight x {undesirable}) between 1 and 4/3, e.g. "
            f"preference.undesirable_weight: {_weight(desirable, undesirable)}", file, field="label"))
    labels: dict[tuple[str, str], Sample] = {}
    for sample in samples:
        key = (normalize(_prompt_text(sample.preference.prompt)), normalize(sample.preference.completion))
        first = labels.setdefault(key, sample)
        if first.preference.label != sample.preference.label:
            section.findings.append(Finding.at(sample, "preference.swapped", "warning",
                                               f"the same reply as line {first.line}, labelled the other way",
                                               "label"))
    section.metrics["swapped_labels"] = sum(f.check == "preference.swapped" and f.field == "label"
                                            for f in section.findings)


def _weight(desirable: int, undesirable: int) -> float:
    """An undesirable_weight bringing the weighted ratio to the middle of the advised range (7/6), so that rounding
    the weight does not push it out."""
    return round(desirable / undesirable / (sum(KTO_BALANCE) / 2), 2)


def _prompt_text(prompt: list[Message]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}\n{m.get('input') or ''}" for m in prompt)
