"""Convert a GGUF checkpoint into a plain Hugging Face model folder.

transformers can *read* a GGUF file (it dequantises every tensor on load), but a model loaded that way
refuses `save_pretrained` and every later load pays the dequantisation again. `gguf_to_hf_folder` does
the conversion once: it loads the GGUF through transformers, rebuilds an ordinary model from the same
config, copies the dequantised weights across, and writes a safetensors folder with the tokenizer, its
chat template and the generation config. The result loads with `AutoModelForCausalLM.from_pretrained(dir)`
and `AutoTokenizer.from_pretrained(dir)`; no GGUF is involved any more.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from tunesmith.errors import ModelError

__all__ = ["gguf_to_hf_folder", "is_hf_model_folder"]

#: Written into every converted folder: where the weights came from.
PROVENANCE_FILE = "tunesmith_conversion.json"


def is_hf_model_folder(path: Path) -> bool:
    """True when `path` holds a complete converted model (config, weights, tokenizer)."""
    path = Path(path)
    return ((path / "config.json").is_file()
            and any(path.glob("*.safetensors"))
            and (path / "tokenizer_config.json").is_file())


@contextlib.contextmanager
def _quiet_gguf_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' per-tensor progress bars (so a caller's own spinner stays readable)."""
    if not enabled:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    saved_tqdm = getattr(gguf_utils, "tqdm", None)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if saved_tqdm is not None:
        gguf_utils.tqdm = functools.partial(saved_tqdm, disable=True)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if saved_tqdm is not None:
            gguf_utils.tqdm = saved_tqdm
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _plain_config(config):
    """A copy of a GGUF-loaded config with the GGUF quantisation marker removed."""
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:  # pragma: no cover - class-level attribute
                setattr(config, attr, None)
    return config


def gguf_to_hf_folder(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32, *,
                      overwrite: bool = False, quiet: bool = False) -> Path:
    """Convert the GGUF file `gguf_path` into a Hugging Face model folder at `out_dir`.

    The weights are dequantised to `dtype` and saved as safetensors, together with the tokenizer (its chat
    template included) and the generation config. Tied input/output embeddings stay tied when the GGUF ties
    them (no separate `output.weight`), and are untied when the GGUF stores a distinct output matrix.

    The folder is built in a temporary directory beside `out_dir` and moved into place with `os.replace`,
    so `out_dir` is either absent or complete. An existing non-empty `out_dir` is an error unless
    `overwrite=True`. `quiet=True` hides transformers' per-tensor progress bars. Returns `out_dir`.
    """
    gguf_path = Path(gguf_path).expanduser()
    out_dir = Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}", hint="check the path to the .gguf file")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise ModelError(f"output folder already exists and is not empty: {out_dir}",
                             hint="choose another folder, delete it, or pass overwrite=True")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_gguf_progress(quiet):
        return _convert(gguf_path, out_dir, dtype)


def _convert(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except Exception as exc:  # unsupported architecture, corrupt file, missing `gguf` package ...
        raise ModelError(f"could not load GGUF model {gguf_path}: {exc}",
                         hint="transformers supports GGUF for a fixed list of architectures; "
                              "the `gguf` package must be installed") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer stored in {gguf_path}: {exc}") from exc

    state = gguf_model.state_dict()
    config = _plain_config(gguf_model.config)
    # transformers decides tying from the GGUF (tied when there is no output.weight). Double-check on the
    # actual tensors: a config that claims tying while the two matrices differ would lose the output head.
    emb = gguf_model.get_input_embeddings()
    head = gguf_model.get_output_embeddings()
    if getattr(config, "tie_word_embeddings", False) and emb is not None and head is not None:
        if head.weight.shape != emb.weight.shape or not torch.equal(head.weight, emb.weight):
            config.tie_word_embeddings = False
    # GGUF tokenizers come back with an "unlimited" length; use the model's context size instead.
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and (getattr(tokenizer, "model_max_length", None) or 0) > 10 * max_pos:
        tokenizer.model_max_length = int(max_pos)
    generation_config = copy.deepcopy(gguf_model.generation_config)
    source_name = getattr(gguf_model.config, "_name_or_path", "") or ""
    del gguf_model

    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = model.load_state_dict(state, strict=False)
    tied_ok = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied_ok]
    # non-persistent buffers (e.g. rotary inv_freq) never appear in a state dict; real weights must
    if missing or result.unexpected_keys:
        raise ModelError(f"converted weights do not fit the rebuilt model: missing={missing[:5]} "
                         f"unexpected={result.unexpected_keys[:5]}")
    del state
    model.eval()
    if generation_config is not None:
        model.generation_config = generation_config

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if generation_config is not None and not (tmp / "generation_config.json").exists():
            generation_config.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps({
            "converted_from": gguf_path.name,
            "gguf_model_name": source_name,
            "dtype": str(dtype).replace("torch.", ""),
            "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        }, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
