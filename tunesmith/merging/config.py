"""The merge YAML: which models, which method, its parameters; validated before any tensor is read.

Parameter values follow the layout mergekit users know. A value is a number, a list of numbers (a gradient
interpolated over the layers, first entry at the first layer), or a list of `{filter, value}` entries whose
first entry with `filter` contained in the tensor name applies (an entry without `filter` is the default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from ..config.base import StrictModel
from ..config.loading import read_yaml_file
from ..errors import ConfigError


class Conditional(StrictModel):
    filter: str | None = Field(None, description="applies to tensors whose name contains this text")
    value: Union[float, list[float]]


Schedule = Union[float, list[float], list[Conditional]]


class ModelEntry(StrictModel):
    model: str = Field(description="a local Hugging Face folder with safetensors weights")
    weight: Schedule = 1.0
    density: Schedule = 1.0


class SearchConfig(StrictModel):
    """Try each candidate, score it with --eval, keep the one whose worst task retains the most."""

    param: Literal["weight", "density", "t", "scale"]
    values: list[float] = Field(min_length=1, description="candidate values (per model for weight/density)")
    max_trials: int = Field(16, gt=0, description="random subset of the grid when it is larger")
    seed: int = 0


class MergeConfig(StrictModel):
    method: str
    models: list[ModelEntry] = Field(min_length=1)
    base_model: str | None = None
    parameters: dict[str, Union[bool, Schedule]] = Field(default_factory=dict)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    output: str | None = None
    max_shard_size: Union[int, str] = "2GB"
    tokenizer_source: str | None = Field(None, description="folder whose tokenizer is copied (default: base "
                                                           "model, else the first model)")
    search: SearchConfig | None = None

    @model_validator(mode="after")
    def _check_method(self) -> "MergeConfig":
        from .methods import get_method

        method = get_method(self.method)
        count = len(self.models)
        if count < method.min_models or (method.max_models and count > method.max_models):
            wanted = method.min_models if method.max_models == method.min_models else f"at least {method.min_models}"
            raise ConfigError(f"{self.method} merges {wanted} models, got {count}", where="models")
        if method.base == "required" and not self.base_model:
            raise ConfigError(f"{self.method} needs a base_model (task vectors are differences from it)",
                              where="base_model")
        if method.base == "forbidden" and self.base_model:
            raise ConfigError(f"{self.method} does not use a base_model", where="base_model",
                              hint="list every model to combine under `models`")
        for key in self.parameters:
            if key not in method.options:
                raise ConfigError(f"{self.method} has no parameter '{key}'", where=f"parameters.{key}",
                                  hint=f"its parameters: {', '.join(method.options) or 'none'}")
        for i, entry in enumerate(self.models):
            for param in ("weight", "density"):
                if param not in method.model_params and param in entry.model_fields_set:
                    raise ConfigError(f"{self.method} has no per-model '{param}'", where=f"models[{i}].{param}")
        if self.search and self.search.param not in (*method.model_params, *method.options):
            raise ConfigError(f"{self.method} has no parameter '{self.search.param}' to search",
                              where="search.param")
        return self


class AdapterEntry(StrictModel):
    path: str = Field(description="a PEFT LoRA adapter folder (or a tunesmith LoRA run)")
    weight: float = 1.0


class LoraToBaseConfig(StrictModel):
    """Fold a LoRA adapter into its base model: W ← W + scaling · B A (a standalone model)."""

    method: Literal["lora_to_base"]
    adapter: str
    base_model: str | None = Field(None, description="default: the adapter's base_model_name_or_path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    output: str | None = None
    max_shard_size: Union[int, str] = "2GB"


class LoraCombineConfig(StrictModel):
    """Several LoRA adapters of one base → one adapter (exact by stacking ranks, or SVD to `rank`)."""

    method: Literal["lora_combine"]
    adapters: list[AdapterEntry] = Field(min_length=1)
    mode: Literal["concat", "svd"] = "concat"
    rank: int | None = Field(None, gt=0, description="target rank for mode: svd")
    output: str | None = None

    @model_validator(mode="after")
    def _check_rank(self) -> "LoraCombineConfig":
        if self.mode == "svd" and self.rank is None:
            raise ConfigError("mode: svd needs a target rank", where="rank")
        if self.mode == "concat" and self.rank is not None:
            raise ConfigError("rank applies to mode: svd only (concat keeps every rank)", where="rank")
        return self


AnyMergeConfig = Union[MergeConfig, LoraToBaseConfig, LoraCombineConfig]
ADAPTER_METHODS = {"lora_to_base": LoraToBaseConfig, "lora_combine": LoraCombineConfig}


def parse_config(data: Any, source: str = "config") -> AnyMergeConfig:
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with `method` and `models`", where=source)
    cls = ADAPTER_METHODS.get(data.get("method"), MergeConfig)
    try:
        return cls(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise ConfigError(error["msg"], where=f"{source}: {field}") from None


def load_config(path: str | Path) -> AnyMergeConfig:
    return parse_config(read_yaml_file(path, "merge config"), str(path))


def source_labels(names: list[str]) -> list[str]:
    """A label per merged model (its folder name), repeats told apart by a `#n` suffix: the names reports, the
    diagnosis and `--eval` give the sources."""
    labels, seen = [], set()
    for name in names:
        label = Path(name).name or name
        label = label if label not in seen else f"{label}#{len(seen)}"
        seen.add(label)
        labels.append(label)
    return labels
