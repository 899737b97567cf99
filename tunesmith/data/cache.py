"""Fingerprinted cache of tokenised training data, so that a rerun skips reading, rendering and tokenising.

datasets' own `map` cache fingerprints a transform of one Arrow dataset; tunesmith's data step reads several files,
validates, mixes and splits records and keeps statistics, so it is fingerprinted as a whole here: the data section
of the config, each file's path and a hash of its content (size and modification time alone miss an edit that keeps
both), the tokenizer's full definition (vocabulary, merges,
added tokens, chat template), the source of the template and encoding code, and the datasets version that writes the
entry. Any change gives a new key.
Entries live under `<cache root>/data/<key>/` (see `default_cache_root`) as Arrow datasets plus a JSON of the
statistics and the warnings the build emitted (repeated on a hit, so a cached run warns like a fresh one).
The cache is optional: where its folder cannot be written (read-only, full), training goes on without it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import datasets

from ..config.schema import DataConfig
from . import encoding

_STATS = "stats.json"


def fingerprint(cfg: DataConfig, tokenizer, template) -> str | None:
    """The cache key, or None when some input cannot be fingerprinted (a hub dataset, a slow tokenizer)."""
    settings = cfg.model_dump(mode="json", exclude={"cache", "num_proc"})  # how, not what: same rows either way
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for spec in [*cfg.train, *cfg.validation]:
        path = Path(spec.path)
        if not path.is_file():
            return None
        digest.update(f"{path.resolve()}|{file_digest(path)}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest.update(backend.to_str().encode())
    digest.update(json.dumps([type(tokenizer).__name__, str(getattr(tokenizer, "chat_template", None)),
                              tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    for code in (type(template), encoding):
        digest.update(inspect.getsource(inspect.getmodule(code)).encode())
    digest.update(type(template).__qualname__.encode())
    # The entry is Arrow files in this datasets version's format; another version may not read it (datasets 3 fails
    # on the `List` features that 4 writes), so a changed datasets version builds afresh.
    digest.update(datasets.__version__.encode())
    return digest.hexdigest()[:24]


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """blake2b of a file's bytes, read in chunks (about 1 GB/s: small next to tokenising the same file)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_build(cfg: DataConfig, tokenizer, template, build: Callable, root: Path | None):
    """`build(cfg, tokenizer, template)` → BuiltData, through the cache under `root` (None: no cache)."""
    from .dataset import BuiltData

    key = fingerprint(cfg, tokenizer, template) if root is not None else None
    if key is None:
        return build(cfg, tokenizer, template)
    entry = Path(root) / "data" / key
    if (entry / _STATS).is_file():
        meta = json.loads((entry / _STATS).read_text(encoding="utf-8"))
        for message in meta["warnings"]:
            warnings.warn(message, stacklevel=3)
        validation = datasets.load_from_disk(str(entry / "validation")) if meta["has_validation"] else None
        return BuiltData(datasets.load_from_disk(str(entry / "train")), validation, {**meta["stats"], "cached": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = build(cfg, tokenizer, template)
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=3)
    staging = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        data.train.save_to_disk(str(staging / "train"))
        if data.validation is not None:
            data.validation.save_to_disk(str(staging / "validation"))
        (staging / _STATS).write_text(json.dumps({"stats": data.stats, "has_validation": data.validation is not None,
                                                  "warnings": [str(w.message) for w in caught]}), encoding="utf-8")
    except OSError as exc:  # read-only, full, or no permission: the cache is an optimisation, not a need
        warnings.warn(f"the data cache in {entry.parent} cannot be written ({exc.strerror or exc}); going on "
                      f"without it (set data.cache: false to skip it)", stacklevel=3)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return data
    try:
        staging.rename(entry)  # complete entries only: a crash mid-write leaves a .tmp- folder, never a half entry
    except OSError:  # another run wrote the same entry first
        shutil.rmtree(staging, ignore_errors=True)
    return data
