"""Text classification: fine-tune an encoder (BERT-like) or a decoder (Llama-like) with a classification head.
Its training recipe is `tunesmith/recipes/classification.py` (`tunesmith train` with `task: classification`).

    load_classifier(run_dir)    → Classifier(model, tokenizer, label_names, meta) with .predict / .logits
"""

from __future__ import annotations

from .inference import Classifier, load_classifier
from .metrics import accuracy, classification_report, confusion_matrix, macro_f1

__all__ = ["Classifier", "load_classifier", "accuracy", "macro_f1", "confusion_matrix", "classification_report"]
