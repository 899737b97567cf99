"""Classification metrics as pure functions of label ids: accuracy, per-class and macro F1, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """`matrix[t][p]` counts samples of true class t predicted as p (rows: truth, columns: prediction)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for t, p in zip(y_true, y_pred):
        matrix[int(t)][int(p)] += 1
    return matrix


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    return sum(int(t) == int(p) for t, p in zip(y_true, y_pred)) / len(y_true) if len(y_true) else 0.0


def per_class_scores(matrix: list[list[int]]) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class; a ratio with a zero denominator counts as 0."""
    scores = []
    for c in range(len(matrix)):
        tp = matrix[c][c]
        predicted = sum(row[c] for row in matrix)
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return scores


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of the per-class F1 over the classes present in the truth or the predictions
    (as scikit-learn does with its default labels), so an absent class does not count as a 0."""
    matrix = confusion_matrix(y_true, y_pred, num_labels)
    present = [c for c in range(num_labels) if sum(matrix[c]) or sum(row[c] for row in matrix)]
    scores = per_class_scores(matrix)
    return sum(scores[c]["f1"] for c in present) / len(present) if present else 0.0


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict:
    """Everything the run folder records about one evaluation."""
    matrix = confusion_matrix(y_true, y_pred, len(label_names))
    return {
        "samples": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, len(label_names)),
        "confusion_matrix": matrix,
        "per_class": {name: s for name, s in zip(label_names, per_class_scores(matrix))},
    }


def trainer_metrics(num_labels: int):
    """A `compute_metrics` for transformers' Trainer: accuracy and macro F1 from the evaluation logits."""

    def compute(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = logits.argmax(-1).tolist()
        labels = eval_prediction.label_ids.tolist()
        return {"accuracy": accuracy(labels, predictions), "macro_f1": macro_f1(labels, predictions, num_labels)}

    return compute
