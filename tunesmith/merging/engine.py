"""Merge models tensor by tensor: read one tensor of every input, combine it, write it, forget it.

Peak memory is a few tensors times the number of inputs (the current ones and the next ones, read ahead in
a background thread while the current tensor is combined), never whole models.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from ..io import atomic_write_json, staged_dir
from ..reporting import Reporter, reporter_or_default
from .checkpoint import Checkpoint, PlannedTensor, ShardedWriter, parse_size
from .config import MergeConfig
from .methods import MergeMethod, TensorParams, get_method
from .schedule import layer_positions, resolve
from .validate import check_compatible

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
              "generation_config.json")
PROVENANCE = "tunesmith_merge.json"


@dataclass
class MergeResult:
    output: Path
    tensors: int
    shards: list[str]


def merge(config: MergeConfig, output: str | Path | None = None, *, overwrite: bool = False,
          reporter: Reporter | None = None) -> MergeResult:
    """Run a merge described by `config` and write a plain Hugging Face model folder; `reporter` shows the
    progress over tensors."""
    out = Path(output or config.output or "")
    if not str(out) or str(out) == ".":
        raise ConfigError("no output folder", where="output", hint="set `output:` or pass --out")
    method = get_method(config.method)
    sources = [open_checkpoint(entry.model, f"models[{i}]") for i, entry in enumerate(config.models)]
    base = open_checkpoint(config.base_model, "base_model") if config.base_model else None
    everyone = ([base] if base else []) + sources
    try:
        check_compatible(everyone)
        reference = base or sources[0]
        names = list(reference.tensors)
        out_dtype = output_dtype(config.dtype, reference)
        params = _resolve_params(config, method, names)
        plan = [PlannedTensor(n, out_dtype if reference.tensors[n].dtype.is_floating_point
                              else reference.tensors[n].dtype, reference.tensors[n].shape) for n in names]
        check_output(out, overwrite)
        with staged_dir(out) as staging:
            writer = ShardedWriter(staging, plan, parse_size(config.max_shard_size))
            with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as saver, \
                    reporter_or_default(reporter).progress("merging", len(names)) as advance:
                # Reading, combining and writing overlap: tensor i + 1 is read and tensor i - 1 written in background
                # threads (file I/O releases the GIL) while tensor i is combined. Two sets of read buffers are
                # reused: tensor i + 1 goes into the set of tensor i - 1, whose result (which may live in its
                # buffers) is on disk first. Fresh buffers per tensor would make the kernel fault in and zero
                # their pages every time.
                pools: list[dict[int, torch.Tensor]] = [{}, {}]

                def read(i: int):
                    pool = pools[i % 2]
                    tensors = [c.read(names[i], _buffer(pool, k, c.nbytes(names[i]))) for k, c in enumerate(sources)]
                    return tensors, base.read(names[i], _buffer(pool, -1, base.nbytes(names[i]))) if base else None

                pending, written = (reader.submit(read, 0) if names else None), None
                for i, name in enumerate(names):
                    tensors, base_tensor = pending.result()
                    if written is not None:
                        written.result()
                    pending = reader.submit(read, i + 1) if i + 1 < len(names) else None
                    merged = _merge_one(method, tensors, base_tensor, params[name], plan[i].dtype)
                    written = saver.submit(writer.write, name, merged)
                    advance(detail=name)
                if written is not None:
                    written.result()
            shards = writer.close()
            _write_side_files(staging, config, reference, out_dtype)
    finally:
        for checkpoint in everyone:
            checkpoint.close()
    return MergeResult(out, len(names), shards)


def _buffer(pool: dict[int, torch.Tensor], key: int, nbytes: int) -> torch.Tensor:
    """A reusable byte buffer of at least `nbytes` (grown when a bigger tensor comes)."""
    if key not in pool or pool[key].numel() < nbytes:
        pool[key] = torch.empty(nbytes, dtype=torch.uint8)
    return pool[key][:nbytes]


def open_checkpoint(ref: str, role: str):
    """A model folder, or a LoRA adapter folder / LoRA run read as its base model plus the adapter."""
    if (Path(ref).expanduser() / "adapter_config.json").is_file():
        from .adapters import LoraCheckpoint

        return LoraCheckpoint(ref, role)
    return Checkpoint(ref, role)


def _merge_one(method: MergeMethod, tensors, base, params: TensorParams, dtype: torch.dtype) -> torch.Tensor:
    reference = base if base is not None else tensors[0]
    if not reference.dtype.is_floating_point:
        return reference  # integer buffers (position ids, masks) are copied, not averaged
    # Combine in float32 at least: bf16/fp16 sums lose the small task-vector differences a merge is about.
    compute = torch.float64 if reference.dtype == torch.float64 else torch.float32
    work = [t.to(compute) for t in tensors]
    merged = method.merge(work, base.to(compute) if base is not None else None, params)
    return merged.to(dtype)


def output_dtype(name: str, reference: Checkpoint) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    stated = reference.config.get("torch_dtype") or reference.config.get("dtype")
    if isinstance(stated, str) and hasattr(torch, stated):
        return getattr(torch, stated)
    floats = [i.dtype for i in reference.tensors.values() if i.dtype.is_floating_point]
    return floats[0] if floats else torch.float32


def _resolve_params(config: MergeConfig, method: MergeMethod, names: list[str]) -> dict[str, TensorParams]:
    """Every tensor's parameters, resolved before any tensor is read so that a bad filter fails at once."""
    positions = layer_positions(names)
    options = {**method.options, **config.parameters}
    resolved = {}
    for name in names:
        pos = positions[name]
        weights = [float(resolve(m.weight, name, pos, f"models[{i}].weight")) for i, m in enumerate(config.models)]
        densities = [float(resolve(m.density, name, pos, f"models[{i}].density"))
                     for i, m in enumerate(config.models)]
        opts = {key: resolve(value, name, pos, f"parameters.{key}") for key, value in options.items()}
        for i, density in enumerate(densities):
            if not 0 <= density <= 1:
                raise ConfigError(f"density {density} for tensor '{name}' is outside [0, 1]",
                                  where=f"models[{i}].density")
        if config.method == "linear" and opts["normalize"] and abs(sum(weights)) < 1e-8:
            raise ConfigError(f"weights for tensor '{name}' sum to 0, so they cannot be normalised",
                              where="models[].weight", hint="use nonzero weights or normalize: false")
        resolved[name] = TensorParams(name, weights, densities, opts)
    return resolved


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder unless `overwrite`; then drop the stale shards of an
    earlier merge there (they must not mix with the new ones). The result is staged inside it (`io.staged_dir`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("output exists and is not a folder", where=str(out))
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError("output folder is not empty", where=str(out),
                              hint="choose a new folder or pass --overwrite")
        for old in list(out.glob("*.safetensors")) + list(out.glob("*.safetensors.index.json")):
            old.unlink()


def _write_side_files(staging: Path, config: MergeConfig, reference: Checkpoint, dtype: torch.dtype) -> None:
    write_model_config(staging, reference, dtype)
    from ..models.reference import resolve_ref

    tokenizer_from = Path(resolve_ref(config.tokenizer_source)) if config.tokenizer_source else reference.folder
    copy_side_files(tokenizer_from, staging)
    atomic_write_json(staging / PROVENANCE, {"tunesmith_merge": config.model_dump(mode="json")})


def write_model_config(staging: Path, reference, dtype: torch.dtype) -> None:
    model_config = dict(reference.config)
    if not model_config:
        raise ModelError("config.json missing, so the result would not load", where=str(reference.folder))
    # transformers 5 writes `dtype`, older versions `torch_dtype`: keep the reference's spelling.
    model_config["dtype" if "dtype" in model_config else "torch_dtype"] = str(dtype).removeprefix("torch.")
    (staging / "config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")


def copy_side_files(source: Path, dest: Path) -> None:
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
