"""Load base models and tokenizers from a hub id, a local HF folder, a GGUF file, or a tunesmith run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.schema import ModelConfig
from ..errors import ConfigError, ModelError
from ..hardware import native_bf16_cpu
from .reference import check_model_reference

RUN_META = "tunesmith_run.json"


def resolve_dtype(name: str, *, for_training_full: bool = False) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU; an explicit choice wins."""
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def training_compute_dtype(name: str, *, cuda: bool | None = None,
                           bf16_safe: bool = True) -> torch.dtype:
    """The dtype training computes in (on a GPU when `cuda`, default: whether this machine has one). As
    `resolve_dtype`, except that `auto` on a CPU with native bf16 matmuls (AMX-BF16 or AVX512-BF16) is bf16: there
    bf16 autocast (fp32 base, matmuls in bf16) trained SmolLM2 LoRA 1.3-1.8x faster on an AMX Xeon and 1.9x on an
    AVX512-BF16 EPYC, with the same held-out loss (docs/benchmarks.md), as `auto` is bf16 on the GPUs that have it.
    Without either unit bf16 matmuls are emulated, slower than fp32. `float32` keeps full precision. `bf16_safe` is
    the method's `bf16_autocast_safe`: False keeps `auto` at fp32 on CPU (prefix tuning's gradients are far off under
    bf16: benchmarks/bf16_gradients.py). On a GPU `auto` stays what the field trains in there; that trade is not
    measured here (no GPU)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if name == "auto" and not cuda:
        return torch.bfloat16 if bf16_safe and native_bf16_cpu() is not None else torch.float32
    return resolve_dtype(name)


def training_load_dtype(is_peft: bool, compute_dtype: torch.dtype, *, cuda: bool | None = None) -> torch.dtype:
    """The dtype to load a model in for training (on a GPU when `cuda`, default: whether this machine has one).
    Full fine-tuning keeps fp32 master weights and lets autocast run bf16; adapters can sit on a bf16 base on a GPU.
    On CPU the base stays fp32 under bf16 autocast: only matmuls go bf16 (AMX / AVX512-BF16), while elementwise ops
    and their backward, slow in bf16 on CPU, stay fp32 (docs/benchmarks.md). The planner counts with the same rule."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return compute_dtype if is_peft and cuda else torch.float32


def source_kwargs(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    ref = check_model_reference(cfg)
    path = Path(ref).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    gguf = _gguf_file(path, cfg)
    if gguf is not None:
        return str(materialize_gguf(gguf)), kwargs
    return str(path) if path.exists() else ref, kwargs


def _gguf_file(path: Path, cfg: ModelConfig) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if cfg.gguf_file:
        if not (path / cfg.gguf_file).is_file():
            raise ModelError(f"GGUF file not found: {path / cfg.gguf_file}", where="model.gguf_file")
        return path / cfg.gguf_file
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)", where="model.name_or_path",
                         hint="point at a folder with config.json, a .gguf file, or a hub id")
    return None


def materialize_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a cached plain HF folder and train/serve from that.

    transformers dequantises GGUF weights on load but still marks the model as GGUF-quantised, which makes
    Trainer refuse it and `save_pretrained` fail; a plain folder also lets a PEFT adapter name a loadable base.
    """
    from .gguf import gguf_to_hf_folder
    from .pypi_models import default_cache_root

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = default_cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if not (out / "config.json").is_file():
        gguf_to_hf_folder(gguf, out, overwrite=True, quiet=True)
    return out


# Where a CPU run should attend instead of an attention implementation it cannot use.
CPU_ATTENTION_HINT = ("leave it unset on CPU: sdpa, and tunesmith's CPU causal attention kernel where it applies "
                      "(speed.switches.cpu_causal_attention)")


def first_line(exc: Exception) -> str:
    """An exception's message, first line only (library errors append pages of advice), or its type's name."""
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


def unusable_attention(exc: Exception, attn_implementation: str | None,
                       where: str = "model.attn_implementation") -> ConfigError | None:
    """The error for the config's field when transformers refused the attention implementation it asked for: it does
    not know it (ValueError naming attn_implementation) or cannot import it (ImportError: flash-attn, or the `kernels`
    package for a hub kernel); None when `exc` is about something else."""
    text = first_line(exc)
    if not attn_implementation or not (isinstance(exc, ImportError) or "attn_implementation" in text):
        return None
    return ConfigError(f"'{attn_implementation}' cannot be used: {text}", where=where,
                       hint="leave it unset (sdpa), or install what the message names")


REMOTE_CODE_HINT = ("this model needs Python code from its folder or repository; pass --trust-remote-code (or set "
                    "model.trust_remote_code in your config) only if you trust that code")


def wrap_load_error(ref: str, exc: Exception, attn_implementation: str | None = None) -> ModelError | ConfigError:
    refused = unusable_attention(exc, attn_implementation)
    if refused is not None:
        return refused
    text = first_line(exc)
    hint = None
    if "trust_remote_code" in str(exc):
        hint = REMOTE_CODE_HINT
    elif "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower() \
            or "not a valid model identifier" in text or "Repository Not Found" in text:
        hint = "this looks like a hub id that could not be reached; use a local folder or check your network"
    return ModelError(f"could not load '{ref}': {text}", where="model.name_or_path", hint=hint)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    ref, kwargs = source_kwargs(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        raise wrap_load_error(ref, exc) from None
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS (or UNK) is safe.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def model_load_kwargs(cfg: ModelConfig, dtype: torch.dtype | None = None,
                      extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """`from_pretrained`'s reference and keyword arguments for any head (causal LM, classification)."""
    ref, kwargs = source_kwargs(cfg)
    kwargs["dtype"] = dtype or resolve_dtype(cfg.dtype)
    if cfg.attn_implementation:
        from transformers.utils.generic import is_flash_attention_requested

        if is_flash_attention_requested(requested_attention_implementation=cfg.attn_implementation) \
                and not torch.cuda.is_available():
            raise ConfigError(f"'{cfg.attn_implementation}' is FlashAttention, which runs on CUDA GPUs only",
                              where="model.attn_implementation", hint=CPU_ATTENTION_HINT)
        kwargs["attn_implementation"] = cfg.attn_implementation
    kwargs.update(extra or {})
    return ref, kwargs


def load_model(cfg: ModelConfig, *, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None):
    from transformers import AutoModelForCausalLM

    ref, kwargs = model_load_kwargs(cfg, dtype, extra)
    try:
        return AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise wrap_load_error(ref, exc, cfg.attn_implementation) from None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    template_name: str
    meta: dict


def read_run_meta(path: str | Path) -> dict | None:
    meta_file = Path(path) / RUN_META
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the run's metadata: {exc}", where=str(meta_file)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("base_model"), dict) or "artifact" not in meta:
        raise ModelError("not a tunesmith run's metadata (needs 'artifact' and 'base_model')", where=str(meta_file))
    return meta


def run_base_config(meta: dict, run_dir: str | Path, *, dtype: str, trust_remote_code: bool) -> ModelConfig:
    """The base model a run was trained from, as a ModelConfig. Whether code may run comes from the caller (the
    user's command line) only: a run folder's tunesmith_run.json is data anyone can write, so its
    trust_remote_code is ignored."""
    fields = {k: v for k, v in meta["base_model"].items() if k != "trust_remote_code"}
    try:
        return ModelConfig(**{**fields, "dtype": dtype, "quantization": "none", "trust_remote_code": trust_remote_code})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"invalid base_model in the run's metadata: {first_line(exc)}",
                         where=str(Path(run_dir) / RUN_META)) from None


def load_run_tokenizer(run_dir: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer saved in a run folder; code in the folder runs only when the user allowed it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(run_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        raise wrap_load_error(str(run_dir), exc) from None


def load_for_inference(run_or_model: str, *, dtype: str = "auto", template: str | None = None,
                       trust_remote_code: bool = False) -> LoadedModel:
    """A run folder (adapter or full model, with its training template) or any model reference. Code from the
    model's folder runs only with `trust_remote_code` (the user's --trust-remote-code), whatever the run says."""
    meta = read_run_meta(run_or_model) if Path(run_or_model).is_dir() else None
    if meta is None:
        cfg = ModelConfig(name_or_path=run_or_model, dtype=dtype, trust_remote_code=trust_remote_code)
        model = load_model(cfg)
        tokenizer = load_tokenizer(cfg)
        return LoadedModel(model.eval(), tokenizer, template or "auto", {})
    base_cfg = run_base_config(meta, run_or_model, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_run_tokenizer(run_or_model, trust_remote_code=trust_remote_code)
    if meta["artifact"] == "full":
        model = load_model(ModelConfig(name_or_path=run_or_model, dtype=dtype, trust_remote_code=trust_remote_code))
    else:
        from ..methods.registry import get_method

        model = get_method(meta["method"]["name"]).load(load_model(base_cfg), Path(run_or_model), meta)
    return LoadedModel(model.eval(), tokenizer, template or meta["template"], meta)
