"""LoRA adapters: fold one into its base model, or combine several into one adapter.

A LoRA module adds ΔW = s · B A to a frozen weight W (s = α/r, or α/√r with rsLoRA; transposed for GPT-2's
Conv1D and for embeddings). PEFT can merge an adapter, but only after loading the whole base model into memory;
here the base is streamed tensor by tensor like every other merge. Combining adapters is not in PEFT for
arbitrary ranks: stacking the factors is exact — Σ wᵢ sᵢ Bᵢ Aᵢ = [w₁s₁B₁ … wₙsₙBₙ] [A₁; …; Aₙ] — and the SVD
mode keeps the best rank-k approximation of that sum (Eckart–Young), computed from the factors (QR of each,
SVD of the small core) without forming the full out × in matrix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, ModelError
from ..io import atomic_write_json, staged_dir
from ..reporting import Reporter, reporter_or_default
from .checkpoint import Checkpoint, PlannedTensor, ShardedWriter, parse_size
from .config import LoraCombineConfig, LoraToBaseConfig
from .engine import check_output, copy_side_files, output_dtype, write_model_config

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<eab>[AB]))$")


@dataclass
class LoraModule:
    A: torch.Tensor  # r × in  (r × num_embeddings for embeddings)
    B: torch.Tensor  # out × r (embedding_dim × r for embeddings)
    scale: float
    embedding: bool

    def delta(self, fan_in_fan_out: bool, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense update s·B·A, shaped as the base tensor it changes."""
        delta = (self.B.to(dtype) @ self.A.to(dtype)) * self.scale
        return delta.T if (self.embedding or fan_in_fan_out) else delta


@dataclass
class Adapter:
    folder: Path
    config: dict
    modules: dict[str, LoraModule]  # module name in the base model (e.g. model.layers.0.self_attn.q_proj)
    others: dict[str, torch.Tensor]  # full tensors the adapter replaces (modules_to_save), by base tensor name


def read_adapter(folder: str | Path) -> Adapter:
    folder = Path(folder).expanduser()
    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise ModelError("not a PEFT adapter folder (adapter_config.json missing)", where=str(folder))
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise ModelError("adapter_model.safetensors missing" + (" (pickled .bin adapters are never loaded)"
                                                                 if pickled else ""), where=str(folder))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ModelError(f"only LoRA adapters can be merged here, this one is {config.get('peft_type')}",
                         where=str(config_file))
    if config.get("use_dora"):
        raise ModelError("DoRA adapters rescale each column by a learned magnitude, which this merge does not "
                         "implement", where=str(config_file), hint="use `tunesmith export --merge` for DoRA runs")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    others, embedded = {}, set()
    for key, tensor in load_file(weights).items():
        name = key.removeprefix(PREFIX)
        match = _FACTOR.match(name)
        if match:
            which = match.group("ab") or match.group("eab")
            factors.setdefault(match.group("module"), {})[which] = tensor
            if match.group("eab"):
                embedded.add(match.group("module"))
        elif ".lora_" in name:
            raise ModelError(f"adapter tensor '{key}' is not supported (LoRA biases are not merged)",
                             where=str(weights))
        else:
            others[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = tensor
    modules = {}
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise ModelError(f"adapter module '{module}' lacks its lora_{'B' if 'A' in pair else 'A'} factor",
                             where=str(weights))
        rank = pair["A"].shape[0]
        alpha = _pattern(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        modules[module] = LoraModule(pair["A"], pair["B"], scale, module in embedded)
    return Adapter(folder, config, modules, others)


def _pattern(patterns: dict, module: str, default: float) -> float:
    """PEFT's per-module overrides: a key applies when it is the module name or its dotted suffix/regex."""
    for key, value in patterns.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


class LoraCheckpoint:
    """A LoRA adapter seen as the model it makes: its base's tensors with s · B A added as each is read.

    It reads like a `Checkpoint`, so an adapter folder (or LoRA run) can be a merge input without folding it
    to disk first, and `lora_to_base` is just this checkpoint streamed to a writer.
    """

    def __init__(self, folder: str | Path, role: str = "adapter", base_model: str | None = None):
        from ..models.reference import resolve_ref

        self.adapter = read_adapter(folder)
        self.folder, self.role = self.adapter.folder, role
        base_path = base_model or self.adapter.config.get("base_model_name_or_path")
        base_path = resolve_ref(base_path) if base_path else base_path
        if not base_path or not Path(base_path).expanduser().is_dir():
            raise ConfigError(f"base model folder of the adapter not found: {base_path}", where=f"{role} {folder}",
                              hint="set base_model: to the local folder the adapter was trained on")
        self.base = Checkpoint(base_path, f"{role} base model")
        self.tensors, self.config = self.base.tensors, self.base.config
        self.fan_in_fan_out = bool(self.adapter.config.get("fan_in_fan_out"))
        self.targets = {f"{module}.weight": lora for module, lora in self.adapter.modules.items()}
        for name in list(self.targets) + list(self.adapter.others):
            if name not in self.tensors:
                self.base.close()
                raise ModelError(f"the adapter changes '{name}', which the base model does not store"
                                 + (" (tied to the input embeddings)" if "lm_head" in name else ""),
                                 where=f"{folder} vs {self.base.folder}",
                                 hint="check that base_model is the model this adapter was trained on")

    def nbytes(self, name: str) -> int:
        return self.base.nbytes(name)

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        tensor = self.adapter.others.get(name)
        tensor = self.base.read(name, buffer) if tensor is None else tensor.clone()  # merges work in place
        if name not in self.targets:
            return tensor
        delta = self.targets[name].delta(self.fan_in_fan_out)
        if delta.shape != tensor.shape:
            raise ModelError(f"LoRA update for '{name}' has shape {list(delta.shape)}, the base tensor "
                             f"{list(tensor.shape)}", where=str(self.folder))
        # Kept in float32 (float64 for a float64 base): rounding to a bf16 base's dtype here would lose
        # part of the update before a merge combines it.
        return (tensor.double() + delta).to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)

    def close(self) -> None:
        self.base.close()


def lora_to_base(config: LoraToBaseConfig, output=None, *, overwrite: bool = False,
                 reporter: Reporter | None = None) -> Path:
    out = Path(output or config.output or "")
    if not str(out) or str(out) == ".":
        raise ConfigError("no output folder", where="output", hint="set `output:` or pass --out")
    model = LoraCheckpoint(config.adapter, "adapter", config.base_model)
    try:
        dtype = output_dtype(config.dtype, model.base)
        names = list(model.tensors)
        plan = [PlannedTensor(n, dtype if model.tensors[n].dtype.is_floating_point else model.tensors[n].dtype,
                              model.tensors[n].shape) for n in names]
        check_output(out, overwrite)
        with staged_dir(out) as staging:
            writer = ShardedWriter(staging, plan, parse_size(config.max_shard_size))
            with reporter_or_default(reporter).progress("folding adapter", len(names)) as advance:
                for item in plan:
                    writer.write(item.name, model.read(item.name).to(item.dtype))
                    advance(detail=item.name)
            writer.close()
            write_model_config(staging, model.base, dtype)
            copy_side_files(model.base.folder, staging)
            copy_side_files(model.folder, staging)  # the run's tokenizer (and chat template) win
            atomic_write_json(staging / "tunesmith_merge.json", {"tunesmith_merge": config.model_dump(mode="json")})
    finally:
        model.close()
    return out


def combine_loras(config: LoraCombineConfig, output=None, *, overwrite: bool = False,
                  reporter: Reporter | None = None) -> Path:
    adapters = [read_adapter(entry.path) for entry in config.adapters]
    first = adapters[0]
    for entry, adapter in zip(config.adapters[1:], adapters[1:]):
        _check_same_layout(first, adapter, entry.path)
    out = Path(output or config.output or "")
    if not str(out) or str(out) == ".":
        raise ConfigError("no output folder", where="output", hint="set `output:` or pass --out")
    rank = config.rank if config.mode == "svd" else sum(a.modules[next(iter(a.modules))].A.shape[0]
                                                         for a in adapters)
    tensors, retained = {}, {}
    with reporter_or_default(reporter).progress("combining adapters", len(first.modules)) as advance:
        for module, lora in first.modules.items():
            parts = [(a.modules[module], e.weight) for a, e in zip(adapters, config.adapters)]
            A = torch.cat([p.A.double() for p, _ in parts], 0)
            B = torch.cat([p.B.double() * (p.scale * w) for p, w in parts], 1)
            if A.shape[0] != rank and config.mode == "concat":
                raise ModelError(f"adapters use different ranks per module ('{module}'), so no single r fits",
                                 where=str(first.folder), hint="use mode: svd with a target rank")
            if config.mode == "svd":
                B, A, retained[module] = truncate(B, A, rank)
            dtype = lora.A.dtype
            a_key, b_key = (("lora_embedding_A", "lora_embedding_B") if lora.embedding
                            else ("lora_A.weight", "lora_B.weight"))
            tensors[f"{PREFIX}{module}.{a_key}"] = A.to(dtype).contiguous()
            tensors[f"{PREFIX}{module}.{b_key}"] = B.to(dtype).contiguous()
            advance(detail=module)
    check_output(out, overwrite)
    with staged_dir(out) as staging:
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        # α = r makes every module's scale exactly 1: the adapters' own scales and weights live in B now.
        adapter_config = {**first.config, "r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {},
                          "alpha_pattern": {}}
        atomic_write_json(staging / "adapter_config.json", adapter_config)
        copy_side_files(first.folder, staging)
        atomic_write_json(staging / "tunesmith_merge.json", {
            "tunesmith_merge": config.model_dump(mode="json"),
            "svd_energy_retained_min": min(retained.values()) if retained else 1.0})
    return out


def truncate(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` factors of B A, and the share of its squared Frobenius norm they keep."""
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    new_b = torch.zeros(B.shape[0], rank, dtype=B.dtype)
    new_a = torch.zeros(rank, A.shape[1], dtype=A.dtype)
    new_b[:, :k] = (q_b @ u[:, :k]) * root
    new_a[:k] = root[:, None] * (vh[:k] @ q_a.T)
    total = float((s**2).sum())
    return new_b, new_a, float((s[:k] ** 2).sum()) / total if total > 0 else 1.0


def _check_same_layout(first: Adapter, other: Adapter, path: str) -> None:
    if set(first.modules) != set(other.modules):
        missing = sorted(set(first.modules) ^ set(other.modules))[0]
        raise ModelError(f"adapters target different modules: '{missing}' is in only one of them", where=path,
                         hint="combine adapters trained with the same target_modules")
    if first.others or other.others:
        raise ModelError("an adapter also replaces whole tensors (modules_to_save), which cannot be combined "
                         "as low-rank factors", where=path, hint="fold each adapter into the base instead")
    for key in ("base_model_name_or_path", "fan_in_fan_out"):
        if first.config.get(key) != other.config.get(key):
            raise ModelError(f"adapters differ in {key}: {first.config.get(key)!r} vs {other.config.get(key)!r}",
                             where=str(Path(path) / "adapter_config.json"),
                             hint="only adapters of the same base model can be combined")
    for module, lora in first.modules.items():
        theirs = other.modules[module]
        if lora.A.shape[1] != theirs.A.shape[1] or lora.B.shape[0] != theirs.B.shape[0]:
            raise ModelError(f"module '{module}' has different shapes in the adapters", where=path)
