"""Export a run as a standalone Hugging Face model (adapter merged into the base weights)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import TunesmithError
from ..io import atomic_write_json, publish_dir_contents
from ..models.loading import RUN_META, load_for_inference, read_run_meta


def export_run(run_dir: str, out_dir: str, *, merge: bool = True, dtype: str = "float32") -> Path:
    meta = read_run_meta(run_dir)
    if meta is None:
        raise TunesmithError(f"{run_dir} is not a tunesmith run folder (no {RUN_META})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise TunesmithError(f"{out} exists and is not empty", hint="choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    if meta["artifact"] == "adapter" and not merge:
        for item in Path(run_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
    else:
        # A QLoRA adapter is merged into the full-precision base: merging into 4-bit weights would re-quantise
        # the update away.
        loaded = load_for_inference(run_dir, dtype=dtype)
        if meta["artifact"] != "full" and not hasattr(loaded.model, "merge_and_unload"):
            raise TunesmithError(f"a {meta['method']['name']} run cannot be merged into the base weights",
                                 hint="export without --merge to copy the adapter as it is")
        model = loaded.model.merge_and_unload() if meta["artifact"] != "full" else loaded.model
        model = model.to(getattr(torch, dtype))
        model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        atomic_write_json(staging / RUN_META, {**meta, "artifact": "full", "merged_from": str(run_dir)})
    publish_dir_contents(staging, out)
    return out
