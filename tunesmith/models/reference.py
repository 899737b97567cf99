"""What a model reference names (a local folder, a PyPI-shipped model's short name, a hub id), checked without
loading anything: `tunesmith train` checks it before it restarts itself with its allocator (cli/commands.py), so
this module must not import torch."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import ModelConfig
from ..errors import ModelError


def resolve_ref(ref: str) -> str:
    """Turn a short name of a model shipped on PyPI (e.g. smollm2-135m-instruct) into a local folder."""
    try:
        from .pypi_models import resolve_model_ref
    except ImportError:
        return ref
    return resolve_model_ref(ref)


def check_model_reference(cfg: ModelConfig) -> str:
    """The model's reference with a PyPI short name resolved to its folder. A reference that is a path (not a hub id)
    and names nothing fails here, before anything loads."""
    ref = resolve_ref(cfg.name_or_path)
    if not Path(ref).expanduser().exists() and (ref.startswith((".", "/", "~")) or ref.count("/") > 1):
        raise ModelError(f"model not found: {ref}", where="model.name_or_path",
                         hint="check the path; hub ids look like owner/name")
    return ref
