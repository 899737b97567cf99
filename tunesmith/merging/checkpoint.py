"""Sharded safetensors, one tensor at a time, in both directions.

safetensors' own API reads through a memory map (every page touched stays resident for as long as the file
is open, so a streamed merge of several models would still show their whole size in its memory) and writes
only a complete in-memory dict. A merge must hold just a few tensors, so this module reads each tensor with a
plain positioned read and writes shards whose header is planned up front, streaming each tensor's bytes into
place. The format itself (8-byte header length, JSON header, raw little-endian data) is tiny and documented:
https://github.com/huggingface/safetensors#format. Pickled `.bin` checkpoints are refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name → location, from the file's header alone (no tensor data is read)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"not a readable safetensors file: {exc}", where=str(path)) from None
    header.pop("__metadata__", None)
    infos = {}
    for name, entry in header.items():
        if entry["dtype"] not in DTYPES:
            raise ModelError(f"tensor '{name}' has unsupported dtype {entry['dtype']}", where=str(path))
        start, end = entry["data_offsets"]
        infos[name] = TensorInfo(path, DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + size + start, 8 + size + end)
    return infos


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (through its index when sharded)."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelError(f"malformed shard index: {exc}", where=str(index)) from None
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"shard listed in the index is missing: {missing[0]}", where=str(index))
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise ModelError("only safetensors weights are supported (pickled .bin/.pt files can run code when "
                         "loaded, so tunesmith never unpickles them)", where=str(folder),
                         hint="convert a checkpoint you trust: load it with transformers and save_pretrained() it")
    raise ModelError("no safetensors weights found", where=str(folder))


class Checkpoint:
    """A model folder whose tensors are read on demand, one at a time."""

    def __init__(self, folder: str | Path, role: str = "model"):
        from ..models.reference import resolve_ref

        # The same model references as training configs: a local folder, or a model name shipped on PyPI.
        self.folder = Path(resolve_ref(str(folder))).expanduser()
        self.role = role
        if not self.folder.is_dir():
            raise ModelError("model folder not found", where=f"{role} {self.folder}")
        self.tensors: dict[str, TensorInfo] = {}
        for file in weight_files(self.folder):
            self.tensors.update(read_header(file))
        config = self.folder / "config.json"
        self.config = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        self._handles: dict[Path, object] = {}

    def nbytes(self, name: str) -> int:
        return self.tensors[name].end - self.tensors[name].start

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor, read into `buffer` (uint8, exactly `nbytes(name)` long) when one is given."""
        info = self.tensors[name]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = open(info.file, "rb", buffering=0)
        data = torch.empty(info.end - info.start, dtype=torch.uint8) if buffer is None else buffer
        view = memoryview(data.numpy())
        done = 0
        while done < len(view):  # os.preadv may return short reads on huge tensors
            got = os.preadv(handle.fileno(), [view[done:]], info.start + done)
            if got <= 0:
                raise ModelError(f"tensor '{name}' is truncated", where=str(info.file))
            done += got
        return data.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


class ShardedWriter:
    """Write tensors, in the planned order, into shards of at most `max_shard_bytes` plus an index.

    Headers are computed from the plan, so each tensor goes to disk as soon as it is produced and the
    writer holds nothing. Shards are named like `save_pretrained` names them, so transformers loads them.
    """

    def __init__(self, folder: Path, plan: list[PlannedTensor], max_shard_bytes: int):
        self.folder = folder
        self.shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for item in plan:
            if self.shards[-1] and size + item.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(item)
            size += item.nbytes
        count = len(self.shards)
        self.names = [SINGLE_NAME] if count == 1 else \
            [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._order = [(shard, item) for shard, items in enumerate(self.shards) for item in items]
        self._next = 0
        self._handle = None
        self._shard = -1

    def _open(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for item in self.shards[shard]:
            header[item.name] = {"dtype": DTYPE_NAMES[item.dtype], "shape": list(item.shape),
                                 "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self._handle = open(self.folder / self.names[shard], "wb")
        self._handle.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = shard

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, item = self._order[self._next]
        if name != item.name or tuple(tensor.shape) != item.shape or tensor.dtype != item.dtype:
            raise RuntimeError(f"writer expected {item}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if shard != self._shard:
            self._open(shard)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        self._handle.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> list[str]:
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if self._handle is not None:
            self._handle.close()
        if len(self.names) > 1:
            weight_map = {item.name: self.names[shard] for shard, item in self._order}
            total = sum(item.nbytes for _, item in self._order)
            (self.folder / INDEX_NAME).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")
        return self.names


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1GiB' or a byte count → bytes."""
    if isinstance(text, int):
        return text
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    value = text.strip().upper()
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * factor)
    return int(value)
