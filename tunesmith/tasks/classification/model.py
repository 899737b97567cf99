"""Sequence-classification models: transformers' AutoModelForSequenceClassification for encoders (BERT-like:
pooled [CLS] → classifier) and decoders (Llama-like: last non-padding token → `score`), plus the LoRA defaults
that suit each."""

from __future__ import annotations

import re
from typing import Any

import torch

from ...config.schema import ModelConfig
from ...models.loading import wrap_load_error, model_load_kwargs
from ...models.targets import linear_module_names

# Names of the query and value projections across encoder families (BERT/RoBERTa, DistilBERT, DeBERTa, Llama).
_QUERY_VALUE = re.compile(r"(query|value|q|v)(_lin|_proj)?")


def load_classification_model(cfg: ModelConfig, label_names: list[str], *, pad_token_id: int | None,
                              dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None):
    """The base model with a freshly initialised head of len(label_names) outputs, named by id2label."""
    from transformers import AutoModelForSequenceClassification

    ref, kwargs = model_load_kwargs(cfg, dtype, extra)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            ref, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)}, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise wrap_load_error(ref, exc, cfg.attn_implementation) from None
    model.config.problem_type = "single_label_classification"
    # Decoders classify from the last non-padding token, found through pad_token_id: it must be set.
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    return model


def is_encoder(model: torch.nn.Module) -> bool:
    """Encoders are the architectures transformers can load for masked language modelling (BERT, RoBERTa, ...);
    derived from transformers' own registry rather than a table of ours."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def encoder_lora_targets(model: torch.nn.Module) -> list[str] | None:
    """The attention query/value projections of an encoder (the original LoRA recipe), or None if not found."""
    names = sorted({n.split(".")[-1] for n in linear_module_names(model) if _QUERY_VALUE.fullmatch(n.split(".")[-1])})
    return names or None


def classification_method_options(model: torch.nn.Module, opts: Any) -> Any:
    """The method options with classification defaults filled in where the user left them unset.

    Encoders: LoRA-style targets default to query/value instead of all-linear, and the pooler (the dense layer of
    BERT's classification head, which RoBERTa keeps inside `classifier`) trains in full beside the classifier.
    The classifier itself always trains in full: PEFT's SEQ_CLS task type keeps it in modules_to_save.
    """
    fields = getattr(type(opts), "model_fields", {})
    update = {}
    if "modules_to_save" in fields:  # a list of our own: PEFT's SEQ_CLS extends the list it is given in place
        update["modules_to_save"] = list(opts.modules_to_save)
    if not is_encoder(model):
        return opts.model_copy(update=update) if update else opts
    if "target_modules" in fields and "target_modules" not in opts.model_fields_set:
        targets = encoder_lora_targets(model)
        if targets:
            update["target_modules"] = targets
    if "modules_to_save" in fields and "modules_to_save" not in opts.model_fields_set:
        if any(name.split(".")[-1] == "pooler" for name, _ in model.named_modules()):
            update["modules_to_save"] = ["pooler"]
    return opts.model_copy(update=update) if update else opts
