"""Text classification: fine-tune an encoder (BERT-like) or a decoder (Llama-like) with a classification head.

    train_classification(cfg)   a `task: classification` RunConfig → run folder (also `tunesmith train`)
    load_classifier(run_dir)    → Classifier(model, tokenizer, label_names, meta) with .predict / .logits
"""

from __future__ import annotations

from .inference import Classifier, load_classifier
from .metrics import accuracy, classification_report, confusion_matrix, macro_f1

__all__ = ["Classifier", "load_classifier", "train_classification", "accuracy", "macro_f1", "confusion_matrix",
           "classification_report"]


def __getattr__(name: str):
    if name == "train_classification":  # imported on use: it pulls in the Trainer
        from ...recipes.classification import train_classification

        return train_classification
    raise AttributeError(name)
