"""Reload a classification run folder (adapter or full model) and label texts with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from ...models.loading import load_run_tokenizer, read_run_meta, run_base_config


@dataclass
class Classifier:
    model: Any
    tokenizer: Any
    label_names: list[str]
    meta: dict

    @property
    def max_length(self) -> int:
        return int(self.meta.get("max_length", 512))

    @torch.no_grad()
    def logits(self, texts: list[str], pairs: list[str] | None = None, *, batch_size: int = 32) -> torch.Tensor:
        """Raw logits, shape (len(texts), number of labels), in the order of the texts."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size],
                                   pairs[start:start + batch_size] if pairs is not None else None,
                                   truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            chunks.append(self.model(**batch.to(device)).logits.float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.label_names))

    def predict(self, texts: list[str], pairs: list[str] | None = None, *, batch_size: int = 32) -> list[dict]:
        """For each text: the predicted label, its probability, and every label's probability."""
        probs = torch.softmax(self.logits(texts, pairs, batch_size=batch_size), dim=-1)
        results = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": self.label_names[best], "label_id": best, "score": row[best],
                            "probs": dict(zip(self.label_names, row))})
        return results


def load_classifier(run_dir: str | Path, *, dtype: str = "auto", trust_remote_code: bool = False,
                    task: str = "classification") -> Classifier:
    """The trained classifier of a run folder, its tokenizer and label names, ready for inference (eval mode). Code
    from the folder runs only with `trust_remote_code` (the user's flag), never because the run says so. `task:
    "reward"` loads a reward run: a classifier with one output, saved the same way."""
    from transformers import AutoModelForSequenceClassification

    from ...methods.registry import get_method
    from ...models.loading import resolve_dtype
    from .model import load_classification_model

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir) if run_dir.is_dir() else None
    if meta is None or meta.get("task") != task:
        raise ModelError(f"{run_dir} is not a tunesmith {task} run (no tunesmith_run.json with "
                         f"task: {task})", hint=f"pass the output_dir of a `task: {task}` run")
    label_names = list(meta["label_names"])
    base_cfg = run_base_config(meta, run_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_run_tokenizer(run_dir, trust_remote_code=trust_remote_code)
    if meta["artifact"] == "full":
        model = AutoModelForSequenceClassification.from_pretrained(
            run_dir, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    else:
        base = load_classification_model(base_cfg, label_names, pad_token_id=tokenizer.pad_token_id)
        model = get_method(meta["method"]["name"]).load(base, run_dir, meta)
    return Classifier(model.eval(), tokenizer, label_names, meta)
