"""Data-derived defaults: the training settings a user left unset, chosen once per run from the data, the method and
the model (docs/planning.md, "Defaults from the data").

`training.num_epochs`, `training.learning_rate`, `training.warmup_ratio` and, for the LoRA family, `method.r` have a
static default in the schema (what a config means when nothing else is known, and what the other tasks use). For
`task: sft` the run replaces each one the user did not set (pydantic's `model_fields_set`: a key in the YAML, an
override, or an assignment counts as set, whatever its value) by the rule below, after tokenisation and before the
pre-flight, so the memory prediction, the Trainer and the run's `config.yaml` all see the same values. A run's
`config.yaml` holds every value, so `tunesmith train RUN/config.yaml` sets them all and derives nothing: it trains the
same run.

The rule, and why each number:
- learning rate by method family and model size. LoRA family: 2e-4 from 1B to 20B parameters (QLoRA paper for
  7B/13B, Axolotl's and Unsloth's default), 1e-4 from 20B (QLoRA paper for 33B/65B), 5e-4 under 1B (this repo's
  SmolLM2-135M persona runs: the demo and docs/forgetting.md trained at 5e-4). QLoRA as LoRA (the QLoRA paper uses
  the same rates; the 4-bit base changes memory, not the step size). LoRA+ half of LoRA's (its B matrix runs at
  `lr_ratio` times more). Full fine-tuning: 5e-5 / 2e-5 / 1e-5 by the same sizes (Alpaca-style 2e-5 for 7B,
  LLaMA-Factory's full-SFT examples 1e-5); freeze and progressive unfreezing twice that (fewer weights move).
  Methods whose trained tensors are few and start far from their optimum take the rates benchmarks/peft_methods.py
  trains them at, independent of size: soft prompts 3e-2 (prefix 1e-2), IA3 3e-2, VeRA 1e-2, hybrid 5e-3,
  bottleneck adapters 5e-4.
- epochs by training samples: 3 up to 10,000 (LLaMA-Factory's default; Unsloth's 1-3), 2 up to 100,000, 1 above;
  then raised until the run has at least 80 optimizer steps (the demo's persona took 80 steps, docs/forgetting.md's
  4 epochs of 75 records ~76), at most 10 epochs.
- LoRA rank by supervised tokens (what the adapter must absorb): 8 under 100k, 16 under 1M, 32 under 10M, 64 above
  (the LoRA paper: small ranks suffice for small updates; the reference's FAQ: 8-16 for instructions, 32-64 for
  large or far-off data). alpha follows r at the method's own alpha/r ratio when alpha is unset too (rsLoRA's alpha
  stays: its alpha/sqrt(r) scale is meant to hold across ranks).
- warm-up: 5% of the steps (Unsloth 5-10%, LLaMA-Factory 10%, QLoRA 3%) but at least 10 steps (Axolotl's usual
  warmup_steps), and never more than 20% of a short run.
The efficacy sweep (benchmarks/efficacy.py) is what validates these numbers; until it has run they rest on the
field's defaults and this repo's SmolLM2-135M runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Methods that take a LoRA rank `r` (and `alpha`) the rank rule sets. AdaLoRA (init_r / target_r), VeRA (a large
# shared random rank) and hybrid (lora_r) size their adapters otherwise.
RANKED_METHODS = ("lora", "qlora", "dora", "rslora", "loraplus", "pissa", "olora")
LORA_FAMILY = (*RANKED_METHODS, "adalora")
FULL_WEIGHT = ("full",)
PARTIAL_WEIGHT = ("freeze", "progressive")
# Learning rates that do not depend on the model's size (benchmarks/peft_methods.py, examples/).
FIXED_RATES = {"prompt": 3e-2, "ptuning_v2": 3e-2, "prefix": 1e-2, "ia3": 3e-2, "vera": 1e-2, "hybrid": 5e-3,
               "houlsby": 5e-4, "pfeiffer": 5e-4}
# (upper bound of parameters, LoRA-family rate, full fine-tuning rate)
SIZE_RATES = ((1e9, 5e-4, 5e-5), (20e9, 2e-4, 2e-5), (math.inf, 1e-4, 1e-5))
UNKNOWN_SIZE = 1e9  # a model whose size cannot be read is taken as the field's usual 1-20B (its rates)

EPOCHS_BY_SAMPLES = ((10_000, 3), (100_000, 2), (math.inf, 1))
MIN_STEPS = 80
MAX_EPOCHS = 10
RANK_BY_TOKENS = ((100_000, 8), (1_000_000, 16), (10_000_000, 32), (math.inf, 64))
WARMUP_SHARE, WARMUP_MIN_STEPS, WARMUP_MAX_SHARE = 0.05, 10, 0.2


@dataclass
class DerivedDefaults:
    """What the rule set, by dotted field (`training.num_epochs`, `method.r`, ...), and what it was derived from."""

    values: dict[str, float | int] = field(default_factory=dict)
    samples: int = 0
    supervised_tokens: int = 0
    parameters: int | None = None
    method: str = ""
    total_steps: int = 0

    def line(self) -> str:
        """The one line the user is shown (and train.log keeps)."""
        shown = ", ".join(f"{key.split('.')[-1]} {_number(value)}" for key, value in self.values.items())
        size = f"a {_count(self.parameters)}-parameter model" if self.parameters else "a model of unknown size"
        return (f"default from the data: {shown} ({self.samples:,} samples, {self.supervised_tokens:,} supervised "
                f"tokens, {self.method} on {size}, {self.total_steps:,} steps; set a value in the config to override)")

    def as_dict(self) -> dict:
        return {"values": dict(self.values), "samples": self.samples, "supervised_tokens": self.supervised_tokens,
                "parameters": self.parameters, "total_steps": self.total_steps}


# --- the rule, one function per setting ---------------------------------------------------------------------------

def learning_rate_for(method: str, parameters: int | None) -> float | None:
    """The learning rate of `method` on a model of `parameters`; None for a method the rule does not know."""
    if method in FIXED_RATES:
        return FIXED_RATES[method]
    size = parameters or UNKNOWN_SIZE
    lora, full = next((lora, full) for bound, lora, full in SIZE_RATES if size < bound)
    if method == "loraplus":
        return lora / 2
    if method in LORA_FAMILY:
        return lora
    if method in FULL_WEIGHT:
        return full
    if method in PARTIAL_WEIGHT:
        return 2 * full
    return None


def epochs_for(samples: int, steps_per_epoch: int) -> int:
    """Epochs by dataset size, raised to reach MIN_STEPS optimizer steps, at most MAX_EPOCHS."""
    base = next(epochs for bound, epochs in EPOCHS_BY_SAMPLES if samples <= bound)
    needed = math.ceil(MIN_STEPS / max(steps_per_epoch, 1))
    return max(base, min(needed, MAX_EPOCHS))


def rank_for(supervised_tokens: int) -> int:
    return next(rank for bound, rank in RANK_BY_TOKENS if supervised_tokens < bound)


def warmup_for(total_steps: int) -> float:
    """The warm-up as a share of the run: WARMUP_SHARE, at least WARMUP_MIN_STEPS, at most WARMUP_MAX_SHARE."""
    share = max(WARMUP_SHARE, WARMUP_MIN_STEPS / max(total_steps, 1))
    return min(math.ceil(round(share * 1000, 6)) / 1000, WARMUP_MAX_SHARE)  # rounded up: keeps the step minimum


def steps_per_epoch(samples: int, batch_size: int, grad_accum: int, processes: int = 1) -> int:
    """Optimizer steps of one epoch (as training.run.total_steps counts them, over `processes` data-parallel ranks)."""
    return max(math.ceil(math.ceil(samples / (batch_size * max(processes, 1))) / grad_accum), 1)


# --- applying it to a config --------------------------------------------------------------------------------------

def derive_defaults(cfg, *, samples: int, supervised_tokens: int, parameters: int | None, processes: int = 1):
    """`cfg` with every setting of the rule the user left unset filled in, and what was set (a DerivedDefaults,
    whose `values` is empty when the user set them all). Pure: reads nothing but its arguments."""
    training, method = cfg.training, cfg.method
    given, given_method = training.model_fields_set, method.model_fields_set
    derived = DerivedDefaults(samples=samples, supervised_tokens=supervised_tokens, parameters=parameters,
                              method=method.name)
    train_update: dict = {}
    method_update: dict = {}
    per_epoch = steps_per_epoch(samples, training.batch_size, training.grad_accum, processes)
    epochs = training.num_epochs
    if "num_epochs" not in given and training.max_steps is None:
        epochs = float(epochs_for(samples, per_epoch))
        train_update["num_epochs"] = epochs
    total = training.max_steps or max(math.ceil(epochs * per_epoch), 1)
    derived.total_steps = total
    if "learning_rate" not in given:
        rate = learning_rate_for(method.name, parameters)
        if rate is not None:
            train_update["learning_rate"] = rate
    if method.name in RANKED_METHODS and "r" not in given_method:
        rank = rank_for(supervised_tokens)
        method_update["r"] = rank
        if "alpha" not in given_method and method.name != "rslora":
            default_r, default_alpha = (type(method).model_fields[name].default for name in ("r", "alpha"))
            method_update["alpha"] = float(default_alpha) * rank / default_r
    if "warmup_ratio" not in given:
        train_update["warmup_ratio"] = warmup_for(total)
    for key, value in train_update.items():
        derived.values[f"training.{key}"] = value
    for key, value in method_update.items():
        derived.values[f"method.{key}"] = value
    if not derived.values:
        return cfg, derived
    update = {"training": training.model_copy(update=train_update)}
    if method_update:
        update["method"] = method.model_copy(update=method_update)
    return cfg.model_copy(update=update), derived


def model_parameters(cfg) -> int | None:
    """The base model's parameter count estimated from its config (no weights read), or None when it cannot be
    read: the learning-rate rule needs only its order of magnitude."""
    from ..models.loading import source_kwargs
    from .params import load_model_config

    try:
        ref, _ = source_kwargs(cfg.model)
        config = load_model_config(ref, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a default is advice; loading the model reports a real problem
        log.info("defaults: model size unknown (%s: %s)", type(exc).__name__, exc)
        return None
    return estimate_parameters(config)


def estimate_parameters(config) -> int | None:
    """Decoder parameters from a transformers config: embeddings (twice when untied), attention (grouped-query
    aware) and a gated MLP per layer. Within ~5% for Llama-style models; enough to tell 100M from 7B from 70B."""
    config = getattr(config, "text_config", None) or config
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    if not hidden or not layers:
        return None
    vocab = _first(config, "vocab_size") or 0
    heads = _first(config, "num_attention_heads", "n_head") or 1
    kv_heads = _first(config, "num_key_value_heads") or heads
    intermediate = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    experts = _first(config, "num_local_experts", "num_experts") or 1
    attention = hidden * (2 * hidden + 2 * hidden * kv_heads // heads)
    mlp = 3 * hidden * intermediate * experts
    embeddings = vocab * hidden * (1 if getattr(config, "tie_word_embeddings", True) else 2)
    return int(layers * (attention + mlp) + embeddings)


def _first(config, *names):
    return next((value for name in names if isinstance(value := getattr(config, name, None), int)), None)


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer() and value >= 1:
        return str(int(value))
    return f"{value:g}"


def _count(parameters: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if parameters >= scale:
            return f"{parameters / scale:.3g}{unit}"
    return str(parameters)
