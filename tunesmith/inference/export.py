"""Export a run as a standalone Hugging Face model (adapter merged into the base weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import TunesmithError
from ..io import atomic_write_json, check_writable, staged_dir
from ..models.loading import RUN_META, load_for_inference, read_run_meta


# A run folder's working files, not part of the artifact.
NOT_EXPORTED = ("checkpoints", "tensorboard")


def export_run(run_dir: str, out_dir: str, *, merge: bool = True, dtype: str = "float32",
               trust_remote_code: bool = False) -> Path:
    """`trust_remote_code`: the user's own permission for code in the run's folder (the run cannot grant it)."""
    meta = read_run_meta(run_dir) if Path(run_dir).is_dir() else None
    if meta is None:
        raise TunesmithError(f"{run_dir} is not a tunesmith run folder (no {RUN_META})")
    out = check_writable(out_dir, "--out", folder=True)  # before any model loads
    if any(item for item in out.iterdir() if not item.name.startswith(".staging-")):
        raise TunesmithError(f"{out} exists and is not empty", hint="choose a new --out folder")
    with staged_dir(out) as staging:
        if meta["artifact"] != "full" and not merge:  # the adapter as it is (with a hybrid's part folders)
            for item in Path(run_dir).iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
                elif item.is_dir() and item.name not in NOT_EXPORTED:
                    shutil.copytree(item, staging / item.name)
        else:
            # A QLoRA adapter is merged into the full-precision base: merging into 4-bit weights would re-quantise
            # the update away.
            loaded = load_for_inference(run_dir, dtype=dtype, trust_remote_code=trust_remote_code)
            if meta["artifact"] != "full" and not hasattr(loaded.model, "merge_and_unload"):
                raise TunesmithError(f"a {meta['method']['name']} run cannot be merged into the base weights",
                                     hint="export without --merge to copy the adapter as it is (it reloads with "
                                          "tunesmith: tunesmith chat/generate/serve take the copy)")
            model = loaded.model.merge_and_unload() if meta["artifact"] != "full" else loaded.model
            model = model.to(getattr(torch, dtype))
            model.save_pretrained(staging)
            loaded.tokenizer.save_pretrained(staging)
            atomic_write_json(staging / RUN_META, {**meta, "artifact": "full", "merged_from": str(run_dir)})
    return out
