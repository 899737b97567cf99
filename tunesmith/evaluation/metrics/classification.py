"""Classification scored from a generative model's words: parse the label out of the reply, then accuracy,
macro-F1 and the confusion matrix (the metric functions are the ones the classification task trains with)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ...tasks.classification.metrics import accuracy, confusion_matrix, per_class_scores

UNPARSED = "(none)"


def parse_label(reply: str, labels: Sequence[str]) -> str:
    """The label that occurs earliest in the reply (case-insensitive, whole word for Latin-script labels);
    on a tie the longer label wins ("very positive" over "positive"). UNPARSED when none occurs."""
    low = reply.casefold()
    best: tuple[int, int, str] | None = None
    for label in labels:
        key = label.casefold()
        pattern = rf"(?<!\w){re.escape(key)}(?!\w)" if key.isascii() else re.escape(key)
        match = re.search(pattern, low)
        if match and (best is None or (match.start(), -len(key)) < best[:2]):
            best = (match.start(), -len(key), label)
    return best[2] if best else UNPARSED


def classification_scores(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1 (mean F1 over the gold label set: an unparsed reply is simply wrong, it is not a class
    of its own), the confusion matrix with an extra UNPARSED column, per-class scores, and the unparsed rate."""
    names = list(labels)
    index = {name: i for i, name in enumerate(names + [UNPARSED])}
    unknown = sorted({g for g in gold if g not in labels})
    if unknown:
        raise ValueError(f"gold labels {unknown} are not among the labels {names}")
    y_true = [index[g] for g in gold]
    y_pred = [index.get(p, index[UNPARSED]) for p in predicted]
    full = confusion_matrix(y_true, y_pred, len(names) + 1)
    scores = per_class_scores(full)[:len(names)]
    present = [c for c in range(len(names)) if sum(full[c]) or sum(row[c] for row in full)]
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": sum(scores[c]["f1"] for c in present) / len(present) if present else 0.0,
        "unparsed_rate": sum(p == index[UNPARSED] for p in y_pred) / max(len(y_pred), 1),
        "confusion_matrix": [row for row in full[:len(names)]],
        "matrix_columns": names + [UNPARSED],
        "per_class": {name: s for name, s in zip(names, scores)},
    }
