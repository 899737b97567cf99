"""Refuse inputs that cannot be merged, naming the model and tensor, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError
from .checkpoint import Checkpoint

_VOCAB_HINT = ("models with different vocabularies cannot be merged tensor by tensor; use models fine-tuned "
               "from the same base (or align their vocabularies first)")


def check_compatible(checkpoints: list[Checkpoint]) -> None:
    reference = checkpoints[0]
    for other in checkpoints[1:]:
        _check_architecture(reference, other)
        _check_sizes(reference, other)
        _check_tensors(reference, other)
        _check_vocabulary(reference, other)


def _label(c: Checkpoint) -> str:
    return f"{c.role} ({c.folder})"


def _check_architecture(a: Checkpoint, b: Checkpoint) -> None:
    for key in ("model_type", "architectures"):
        if key in a.config and key in b.config and a.config[key] != b.config[key]:
            raise ModelError(f"different architectures: config.json {key} is {a.config[key]} in {_label(a)} "
                             f"but {b.config[key]} in {_label(b)}", where=str(b.folder / "config.json"),
                             hint="merging needs models of one architecture, fine-tuned from the same base")


# config.json sizes that the tensors of every layer depend on, named before any tensor is compared: a hidden-size
# mismatch shows first in the embedding, whose shape would otherwise be read as a vocabulary difference. (The
# vocabulary size is left to the tensor check, which names the embedding.)
_SIZES = ("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "intermediate_size", "n_inner",
          "num_attention_heads", "n_head", "num_key_value_heads", "head_dim")


def _check_sizes(a: Checkpoint, b: Checkpoint) -> None:
    for key in _SIZES:
        if key in a.config and key in b.config and a.config[key] != b.config[key]:
            raise ModelError(f"different model sizes: config.json {key} is {a.config[key]} in {_label(a)} but "
                             f"{b.config[key]} in {_label(b)}", where=str(b.folder / "config.json"),
                             hint="merging needs models of one size, fine-tuned from the same base")


def _check_tensors(a: Checkpoint, b: Checkpoint) -> None:
    for name in a.tensors:
        if name not in b.tensors:
            raise ModelError(f"tensor '{name}' of {_label(a)} is missing from {_label(b)}", where=str(b.folder),
                             hint="the models must share one architecture and layer count")
    for name in b.tensors:
        if name not in a.tensors:
            raise ModelError(f"tensor '{name}' of {_label(b)} is missing from {_label(a)}", where=str(a.folder))
    for name, info in a.tensors.items():
        other = b.tensors[name]
        if info.shape != other.shape:
            # A vocabulary difference changes the first dimension of the embedding (or head) alone.
            vocab = any(k in name for k in ("embed", "wte", "lm_head", "output.weight")) \
                and len(info.shape) == len(other.shape) == 2 and info.shape[1] == other.shape[1]
            raise ModelError(f"tensor '{name}' has shape {list(info.shape)} in {_label(a)} but {list(other.shape)} "
                             f"in {_label(b)}" + (" (different vocabulary sizes)" if vocab else ""),
                             where=str(other.file), hint=_VOCAB_HINT if vocab else
                             "the models must share one architecture and size")


def _vocab(folder: Path) -> dict[str, int] | None:
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    raw = (data.get("model") or {}).get("vocab") or {}
    # BPE/WordPiece store {token: id}; Unigram stores [[piece, score], ...] in id order.
    vocab = dict(raw) if isinstance(raw, dict) else {entry[0]: i for i, entry in enumerate(raw)}
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def _check_vocabulary(a: Checkpoint, b: Checkpoint) -> None:
    va, vb = _vocab(a.folder), _vocab(b.folder)
    if va is None or vb is None or va == vb:
        return
    for token, index in va.items():
        if vb.get(token) != index:
            raise ModelError(f"different vocabularies: token {token!r} has id {index} in {_label(a)} but "
                             f"{vb.get(token)} in {_label(b)}", where=str(b.folder / "tokenizer.json"), hint=_VOCAB_HINT)
    extra = next(t for t in vb if t not in va)
    raise ModelError(f"different vocabularies: token {extra!r} of {_label(b)} is not in {_label(a)}",
                     where=str(b.folder / "tokenizer.json"), hint=_VOCAB_HINT)
