"""The run configuration: one YAML file, validated before anything heavy is loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import StrictModel
from .distributed import DistributedConfig, check_distributed_config

# Attention implementations whose masks honour restarted position ids, i.e. can train on packed
# sequences without cross-sample attention (transformers' masking utilities / varlen kernels).
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def absolute_if_local(value: str) -> str:
    """A path that exists here, made absolute: a run records it (tunesmith_run.json, adapter_config.json,
    config.yaml), and a relative one would be read against whatever folder a later command runs in. Hub ids and
    missing paths stay as written."""
    path = Path(value).expanduser()
    return os.path.abspath(path) if path.exists() else value  # abspath: keeps the user's symlinks, drops '..'


class ModelConfig(StrictModel):
    name_or_path: str = Field(description="Hub id, local HF folder, or a folder/file holding a GGUF")
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path (dequantised on load)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = Field(None, description="sdpa, eager, flash_attention_2, ... "
                                                              "(default: the model's own choice)")
    revision: str | None = None
    quantization: Literal["none", "4bit"] = Field("none", description="4bit loads the frozen base in NF4 (qlora)")

    _local_model = field_validator("name_or_path")(absolute_if_local)


class DatasetSpec(StrictModel):
    path: str = Field(description="JSON/JSONL/CSV/Parquet file, or a hub dataset id when online")
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    weight: float = Field(1.0, gt=0, description="Mixing ratio relative to the other datasets")
    max_samples: int | None = Field(None, gt=0)
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="Rename fields, e.g. {instruction: question, output: answer}")
    system: str | None = Field(None, description="System prompt for records that have none")
    placeholders: dict[str, str] = Field(default_factory=dict,
                                         description="Replace {{key}} in the data, e.g. {name: Tuney}")

    _local_data = field_validator("path")(absolute_if_local)


class DataConfig(StrictModel):
    train: list[DatasetSpec] = Field(min_length=1)
    validation: list[DatasetSpec] = Field(default_factory=list)
    val_size: float = Field(0.0, ge=0, description="Fraction (<1) or count (>=1) held out from train")
    template: str = Field("auto", description="auto | model | alpaca_zh | alpaca_en | chatml")
    max_length: int = Field(1024, strict=True, gt=8, le=10**7)
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    packing: bool | Literal["auto"] = Field(
        "auto", description="Padding-free packing: a batch's samples in one row, position ids restarting per "
                            "sample. auto packs where attention computes each packed sample alone (tunesmith's CPU "
                            "causal attention kernel; FlashAttention's varlen path), else batches are "
                            "length-grouped and padded")
    num_samples: int | None = Field(None, gt=0, description="Total training samples drawn when mixing")
    seed: int = Field(42, strict=True, ge=0, le=2**32 - 1)
    cache: bool = Field(True, description="Reuse the tokenised data of an identical earlier run (fingerprinted; "
                                          "under the tunesmith cache root)")
    num_proc: int | None = Field(None, gt=0, description="Processes that tokenise (default: one per CPU while each "
                                                       "gets 500+ samples; 1 = in the training process)")


class TrackingConfig(StrictModel):
    """Where `training.report_to`'s MLflow / W&B runs go (TensorBoard always writes RUN/tensorboard)."""

    experiment: str = Field("tunesmith", min_length=1, description="MLflow experiment / W&B project")
    run_name: str | None = Field(None, min_length=1, description="default: the run folder's name")
    mlflow_tracking_uri: str | None = Field(None, min_length=1, description="e.g. file:./mlruns, sqlite:///mlflow.db "
                                            "or http://host:5000; default: $MLFLOW_TRACKING_URI, else MLflow's own")


class TrainingConfig(StrictModel):
    output_dir: str = "runs/run"
    overwrite_output_dir: bool = Field(False, description="write into an existing folder that is not a tunesmith "
                                                          "run (only tunesmith's own files are written there)")
    # learning_rate, warmup_ratio and num_epochs: an SFT run replaces each one left unset by a value derived from
    # its data, method and model (planning/defaults.py); the static defaults below serve the other tasks.
    learning_rate: float = Field(2e-4, gt=0, le=1, allow_inf_nan=False,
                                 description="task sft: unset, from the method and model size (docs/planning.md)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="task sft: unset, 5% of the steps, at least 10")
    num_epochs: float = Field(3.0, strict=True, gt=0, le=100_000, allow_inf_nan=False,
                              description="task sft: unset, from the number of samples (1-10, at least 80 steps)")
    max_steps: int | None = Field(None, strict=True, gt=0, le=10**9, description="Overrides num_epochs when set")
    batch_size: int = Field(4, strict=True, gt=0, le=65_536)
    grad_accum: int = Field(1, strict=True, gt=0, le=65_536)
    max_grad_norm: float = Field(1.0, ge=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    gradient_checkpointing: bool = False
    optimizer: Literal["auto", "adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"] = "auto"
    group_by_length: bool = True
    seed: int = Field(42, strict=True, ge=0, le=2**32 - 1)
    logging_steps: int = Field(10, strict=True, gt=0)
    eval_steps: int | None = Field(None, strict=True, gt=0, description="Defaults to save_steps")
    save_steps: int = Field(100, strict=True, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    tensorboard: bool = Field(True, description="shorthand for report_to: [tensorboard] (when report_to is unset)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] | None = Field(
        None, description="experiment trackers, through transformers' integrations (default: [tensorboard] while "
                          "`tensorboard` is true; [] turns every one off)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def trackers(self) -> list[str]:
        """The trackers this run reports to, each once: `report_to`, else what `tensorboard` says."""
        chosen = self.report_to if self.report_to is not None else (["tensorboard"] if self.tensorboard else [])
        return list(dict.fromkeys(chosen))

    @model_validator(mode="after")
    def _tensorboard_agrees(self):
        if self.report_to is None:
            return self
        listed = "tensorboard" in self.report_to
        if "tensorboard" in self.model_fields_set and self.tensorboard != listed:
            from ..errors import ConfigError

            raise ConfigError(f"{str(self.tensorboard).lower()} contradicts report_to: "
                              f"{self.report_to}", where="training.tensorboard",
                              hint="drop training.tensorboard; report_to alone says which trackers run")
        # The old key mirrors report_to, so that the resolved config (the run's config.yaml) reads back the same.
        # Set directly: an assignment would validate the model again.
        self.__dict__["tensorboard"] = listed
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed_speed_keys(cls, values: Any):
        """The speed and memory switches moved to the `speed:` section; say where each went."""
        if isinstance(values, dict):
            for key in values:
                if key in RENAMED_SPEED_KEYS:
                    from ..errors import ConfigError

                    raise ConfigError(f"training.{key} was renamed", where=f"training.{key}",
                                      hint=RENAMED_SPEED_KEYS[key] + " (docs/speed.md)")
        return values


# Old `training.*` speed keys and where each went.
RENAMED_SPEED_KEYS = {
    "supervised_logits": "use speed.loss: supervised (logits at trained positions only) or full (all logits)",
    "chunked_loss": "use speed.loss: chunked (the default under auto) or supervised",
    "liger_kernel": "use speed.loss: liger",
    "cpu_threads": "use speed.cpu_threads", "cpu_allocator": "use speed.cpu_allocator",
    "torch_compile": "use speed.torch_compile", "activation_offload": "use speed.activation_offload",
    **{name: f"use speed.switches.{name} (or speed.cpu_kernels: off for all CPU kernels)"
       for name in ("half_frozen_base", "sdpa_gqa", "fast_dropout", "cpu_causal_attention", "fast_rms_norm")},
    "skip_padding_mask": "use speed.switches.skip_padding_mask",
}

# Speed switches that benchmarks turn off one at a time (docs/speed.md). Each is on unless `speed.cpu_kernels: off`
# (the CPU ones) or `speed.switches` says otherwise; each applies only where the module docstring of its piece says.
CPU_KERNEL_SWITCHES = ("half_frozen_base", "sdpa_gqa", "fast_dropout", "cpu_causal_attention", "fast_rms_norm")
SPEED_SWITCHES = (*CPU_KERNEL_SWITCHES, "skip_padding_mask", "gpu_varlen_attention")


class SpeedConfig(StrictModel):
    """How fast and lean a run trains; what is learned stays the same (docs/speed.md says what each choice does and
    what measured it). The run resolves this once into a speed plan (`tunesmith.speed.plan`) that training, the
    planner and the run log read."""

    loss: Literal["auto", "full", "supervised", "chunked", "liger"] = Field(
        "auto", description="full: logits at every position (transformers' loss); supervised: the LM head only "
                            "where the next token is trained; chunked: that, over chunks of tokens with no tokens x "
                            "vocabulary logits; liger: Liger's fused kernels (CUDA; pip install 'tunesmith[gpu]'); "
                            "auto: chunked, falling back to supervised or full where a model cannot take it")
    cpu_kernels: Literal["auto", "off"] = Field(
        "auto", description="CPU: tunesmith's kernels (RMSNorm backward, dropout masks, causal attention, "
                            "grouped-query SDPA, the frozen base held in bf16) where they apply; off: torch's own")
    cpu_allocator: Literal["auto", "tcmalloc", "tbbmalloc", "lean", "default"] = Field(
        "auto", description="CPU (Linux): tcmalloc or tbbmalloc (preloaded by the tunesmith command; glibc's speed, "
                            "~lean's memory); lean returns freed tensors to the OS (lower, predictable peak RSS; "
                            "slower steps); default keeps glibc's settings (fast, retains freed memory); auto: "
                            "tcmalloc, else tbbmalloc when installed, else default when the predicted peak leaves "
                            "room, else lean")
    cpu_threads: int | None = Field(None, gt=0, le=1024,
                                    description="torch threads on CPU (default: physical cores; at most the CPUs "
                                                "this process may use)")
    torch_compile: bool = Field(False, description="torch.compile the model")
    activation_offload: bool = Field(False, description="keep saved activations in CPU memory (CUDA); "
                                                        "with gradient_checkpointing only the layer inputs")
    switches: dict[str, bool] = Field(default_factory=dict,
                                      description="benchmarks: one speed piece on or off (docs/speed.md)")

    @field_validator("switches")
    @classmethod
    def _known_switches(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(SPEED_SWITCHES))
        if unknown:
            raise ValueError(f"unknown speed switch {', '.join(unknown)}; known: {', '.join(SPEED_SWITCHES)}")
        return value

    def switch(self, name: str) -> bool:
        """Whether the speed piece `name` is wanted (where it applies)."""
        default = self.cpu_kernels == "auto" or name not in CPU_KERNEL_SWITCHES
        return self.switches.get(name, default)


class GeneralEvalData(StrictModel):
    path: str = Field(description="general text (.txt, or records with `text`) or instruction data")
    max_samples: int | None = Field(64, gt=0)

    _local_data = field_validator("path")(absolute_if_local)


class EvalConfig(StrictModel):
    general: list[GeneralEvalData] = Field(
        default_factory=list, description="scored (perplexity; response tokens for instruction data) with the base "
                                          "and the fine-tuned model after training; the forgetting rate goes into "
                                          "the model card")
    max_length: int = Field(512, gt=8)


class ClassificationConfig(StrictModel):
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="Second text for sentence-pair tasks")
    label_column: str = "label"
    label_names: list[str] | None = Field(None, description="Names in label-id order; default: sorted labels seen")
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = "macro_f1"


# DPO's loss variants in TRL's DPOConfig (trl>=1.0); several may be combined with loss_weights.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
PREFERENCE_TASKS = ("dpo", "orpo", "simpo", "kto", "reward")
# Which preference options each task reads; setting another task's option is an error, not silently ignored.
PREFERENCE_OPTIONS = {
    "dpo": {"beta", "loss_type", "loss_weights", "label_smoothing", "max_prompt_length", "precompute_ref_log_probs"},
    "orpo": {"beta", "max_prompt_length"},
    "simpo": {"beta", "simpo_gamma", "cpo_alpha", "label_smoothing", "max_prompt_length"},
    "kto": {"beta", "desirable_weight", "undesirable_weight", "max_prompt_length", "precompute_ref_log_probs"},
    "reward": {"center_rewards_coefficient", "max_prompt_length"},
}


class PreferenceConfig(StrictModel):
    """Loss options of the preference tasks (docs/alignment.md); TRL computes the losses."""

    beta: float | None = Field(None, gt=0, description="strength of the pull towards the reference (dpo, kto: KL "
                                                       "weight; orpo: odds-ratio weight; simpo: reward scale); "
                                                       "default TRL's: 0.1, simpo 2.0")
    loss_type: str | list[str] = Field("sigmoid", description=f"dpo: one of {', '.join(DPO_LOSSES)}, or a list "
                                                                "combined by loss_weights")
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo robust/cDPO, simpo: assumed label noise")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")
    cpo_alpha: float = Field(0.0, ge=0, description="simpo: weight of an NLL term on the chosen reply (0: pure "
                                                    "SimPO; 1: CPO-SimPO)")
    desirable_weight: float = Field(1.0, gt=0, description="kto: loss weight of desirable examples")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: loss weight of undesirable examples")
    max_prompt_length: int | None = Field(None, gt=0, description="drop examples whose rendered prompt has more "
                                                                  "tokens (default: keep all; data.max_length "
                                                                  "cuts each sequence's end)")
    precompute_ref_log_probs: bool = Field(False, description="dpo, kto: reference log-probs computed once before "
                                                              "training (full method: no second model in memory)")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="reward: pulls rewards towards 0")

    @field_validator("loss_type")
    @classmethod
    def _known_losses(cls, value: str | list[str]) -> str | list[str]:
        unknown = [name for name in ([value] if isinstance(value, str) else value) if name not in DPO_LOSSES]
        if unknown:
            raise ValueError(f"unknown DPO loss {', '.join(unknown)}; known: {', '.join(DPO_LOSSES)}")
        return value


REWARD_BUILTINS = ("format", "exact_answer", "length")


class RewardSpec(StrictModel):
    """One GRPO reward function: a built-in, or a function by import path (`module:function`, `file.py:function`)
    called as TRL calls it: `f(prompts, completions, **columns) -> list[float]`."""

    name: str = Field(description=f"built-in ({', '.join(REWARD_BUILTINS)}) or module:function / file.py:function")
    weight: float = 1.0
    pattern: str | None = Field(None, description="format: a regex the completion must contain (re.search); "
                                                  "exact_answer: a regex whose first group (or match) is the answer")
    field: str = Field("answer", description="exact_answer: the record field holding the right answer")
    target: int | None = Field(None, gt=0, description="length: the target length of a completion")
    unit: Literal["words", "characters"] = "words"

    @model_validator(mode="after")
    def _builtin_options(self):
        import re

        if self.name == "format" and not self.pattern:
            raise ValueError("reward format needs `pattern` (a regex the completion must contain)")
        if self.name == "length" and not self.target:
            raise ValueError("reward length needs `target` (its length in `unit`)")
        if self.name not in REWARD_BUILTINS and ":" not in self.name:
            raise ValueError(f"unknown reward '{self.name}': use a built-in ({', '.join(REWARD_BUILTINS)}) or "
                             f"an import path module:function / file.py:function")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regex: {exc}") from None
        return self


class GrpoConfig(StrictModel):
    """`task: grpo` (TRL's GRPOTrainer): completions sampled per prompt, scored by reward functions, and the policy
    moved towards the better ones of each group."""

    rewards: list[RewardSpec] = Field(default_factory=list, description="reward functions, summed by weight")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group)")
    max_completion_length: int = Field(64, gt=0, description="tokens generated per completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    beta: float = Field(0.0, ge=0, description="KL weight towards the reference (0, TRL's default: no reference)")

    @field_validator("rewards", mode="before")
    @classmethod
    def _names(cls, value):
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) \
            else value


class RetainData(DatasetSpec):
    """Old-ability data: a DatasetSpec, or a plain-text `.txt` file (one passage per non-empty line). Plain text
    (`.txt`, or records with only `text`) trains with the LM loss on every token; instruction records as SFT."""

    max_samples: int | None = Field(None, gt=0)


class ReplayConfig(StrictModel):
    data: list[RetainData] = Field(min_length=1, description="old-ability data mixed into the training stream")
    ratio: float = Field(0.2, gt=0, lt=1, allow_inf_nan=False,
                         description="share of the training stream that is replay")


class L2spConfig(StrictModel):
    weight: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False,
                          description="λ of λ·Σ‖θ−θ₀‖² (LoRA family: the update ‖(α/r)·BA‖²); 0 = off")


class EwcConfig(StrictModel):
    weight: float = Field(0.0, ge=0, le=1e9, allow_inf_nan=False,
                          description="λ of λ/2·Σ F·(θ−θ₀)² (LoRA family: over the update of each adapted weight); "
                                      "0 = off")
    data: list[RetainData] = Field(default_factory=list,
                                   description="data the Fisher is computed on (default: retain.replay.data)")
    samples: int = Field(128, gt=0, le=1_000_000, description="samples the Fisher averages over")


class KdConfig(StrictModel):
    weight: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False, description="α of α·T²·KL(teacher‖student); 0 = off")
    temperature: float = Field(2.0, gt=0, le=100, allow_inf_nan=False)
    on: Literal["replay", "train", "both"] = Field("replay", description="which samples' trained tokens distil")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, values: Any):
        """YAML 1.1 (PyYAML) reads the key `on` as the boolean True."""
        if isinstance(values, dict) and True in values:
            values = {("on" if key is True else key): value for key, value in values.items()}
        return values


class RetainConfig(StrictModel):
    """Training options that protect the starting model's abilities (docs/forgetting.md). θ₀, the teacher and the
    Fisher's model are always the model the run starts from."""

    replay: ReplayConfig | None = None
    l2sp: L2spConfig = Field(default_factory=L2spConfig)
    ewc: EwcConfig = Field(default_factory=EwcConfig)
    kd: KdConfig = Field(default_factory=KdConfig)

    def active(self) -> list[str]:
        """The options that change training, in a fixed order."""
        return [name for name, on in (("replay", self.replay is not None), ("l2sp", self.l2sp.weight > 0),
                                      ("ewc", self.ewc.weight > 0), ("kd", self.kd.weight > 0)) if on]

    def ewc_data(self) -> list[RetainData]:
        return self.ewc.data or (self.replay.data if self.replay else [])


class RunConfig(StrictModel):
    task: Literal["sft", "classification", *PREFERENCE_TASKS, "grpo"] = "sft"
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    model: ModelConfig
    method: Any = Field(default_factory=lambda: {"name": "lora"}, validate_default=True)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    retain: RetainConfig | None = Field(None, description="replay, L2-SP, EWC, distillation from the base "
                                                          "(docs/forgetting.md)")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="several processes: ddp, fsdp, deepspeed (docs/distributed.md)")

    @field_validator("method", mode="before")
    @classmethod
    def _method_options(cls, value: Any):
        from ..methods.registry import get_method

        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            if hasattr(value, "name"):
                return value
            raise ValueError("method must be a mapping with at least 'name'")
        if "name" not in value:
            raise ValueError("method needs a 'name' (e.g. lora, qlora, dora, rslora, full)")
        return get_method(value["name"]).Options.model_validate(value)

    @model_validator(mode="after")
    def _combinations(self):
        from ..errors import ConfigError
        from ..methods.registry import get_method

        if self.data.packing is True and self.model.attn_implementation not in (None, *PACKING_ATTENTION):
            raise ConfigError(
                f"packing needs an attention path that keeps packed samples apart; "
                f"'{self.model.attn_implementation}' does not",
                where="data.packing", hint=f"set model.attn_implementation to one of {PACKING_ATTENTION}")
        if self.training.early_stopping_patience and not (self.data.validation or self.data.val_size):
            raise ConfigError("early stopping needs validation data", where="training.early_stopping_patience",
                              hint="set data.val_size (e.g. 0.05) or data.validation")
        # An option at its default is not counted as set: a run's config.yaml holds every section in full, and
        # `tunesmith train RUN/config.yaml` must read it back.
        changed = {name for name in self.preference.model_fields_set
                   if getattr(self.preference, name) != PreferenceConfig.model_fields[name].default}
        for option in sorted(changed - PREFERENCE_OPTIONS.get(self.task, set())):
            readers = [task for task, options in PREFERENCE_OPTIONS.items() if option in options]
            raise ConfigError(f"preference.{option} does not apply to task: {self.task}",
                              where=f"preference.{option}", hint=f"it is read by task: {' | '.join(readers)}")
        if self.grpo != GrpoConfig() and self.task != "grpo":
            raise ConfigError(f"the grpo section does not apply to task: {self.task}", where="grpo",
                              hint="set task: grpo, or remove the section")
        if self.task == "grpo":
            _check_grpo(self)
        if self.retain is not None:
            _check_retain(self)
        get_method(self.method.name).validate(self.method, self)
        check_distributed_config(self)
        return self


def _check_grpo(cfg: RunConfig) -> None:
    from ..errors import ConfigError

    if not cfg.grpo.rewards:
        raise ConfigError("task: grpo needs at least one reward function", where="grpo.rewards",
                          hint="e.g. rewards: [{name: exact_answer, pattern: '(-?\\d+)'}] (docs/alignment.md)")
    batch, group = cfg.training.batch_size * cfg.training.grad_accum, cfg.grpo.num_generations
    if batch % group:
        # TRL samples each prompt's group within one generation batch (batch_size x grad_accum completions).
        raise ConfigError(f"training.batch_size x grad_accum ({batch}) must be a multiple of grpo.num_generations "
                          f"({group})", where="grpo.num_generations",
                          hint=f"e.g. training.batch_size: {group} (each step then samples {group} completions "
                               f"of one prompt)")


def _check_retain(cfg: RunConfig) -> None:
    """Each retain option where it means something for this task and method, and its data where it can be read."""
    from ..errors import ConfigError
    from ..methods.registry import get_method

    retain = cfg.retain
    if retain.active() and cfg.task != "sft":
        raise ConfigError(f"retain options train with task: sft only, not task: {cfg.task}", where="retain",
                          hint="remove the retain section, or use task: sft")
    method = get_method(cfg.method.name)
    for name in ("l2sp", "ewc"):
        if getattr(retain, name).weight > 0 and method.retain_distance is None:
            raise ConfigError(f"retain.{name} is not defined for method {method.name}: its trained tensors have no "
                              f"pre-trained value to stay near (or, for DoRA, PiSSA, OLoRA, AdaLoRA, VeRA, the "
                              f"update is not the low-rank product B·A)", where=f"retain.{name}",
                              hint="use lora, rslora, loraplus, qlora, full, freeze or ia3; or retain.kd / "
                                   "retain.replay, which work with every method")
    if retain.kd.weight > 0 and not method.retain_kd:
        raise ConfigError(f"retain.kd is not defined for method {method.name}: its virtual tokens shift the "
                          f"student's positions against the teacher's", where="retain.kd",
                          hint="use retain.replay with this method, or a LoRA-family method")
    if retain.ewc.weight > 0:
        if cfg.model.quantization != "none":
            raise ConfigError("retain.ewc needs gradients of the base weights for its Fisher; a 4-bit base has "
                              "none", where="retain.ewc", hint="use retain.l2sp or retain.kd with qlora")
        if not retain.ewc_data():
            raise ConfigError("retain.ewc needs old-ability data for its Fisher", where="retain.ewc.data",
                              hint="set retain.ewc.data (e.g. [{path: ../shared/data/general/wiki_demo.txt}]) or "
                                   "retain.replay.data")
    if retain.kd.weight > 0 and retain.kd.on == "replay" and retain.replay is None:
        raise ConfigError("retain.kd.on: replay distils on replay samples, but retain.replay is not set",
                          where="retain.kd.on", hint="set retain.replay, or retain.kd.on: train")
    sections = [("retain.replay.data", retain.replay.data if retain.replay else []),
                ("retain.ewc.data", retain.ewc.data)]
    for where, specs in sections:
        for index, spec in enumerate(specs):
            if not Path(spec.path).is_file():
                raise ConfigError(f"data file not found: {spec.path}", where=f"{where}[{index}].path",
                                  hint="retain data is a local file (.txt, .json, .jsonl, .csv, .parquet); "
                                       "relative paths are read from the working directory")
