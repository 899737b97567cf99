"""The policy a preference run trains, where it starts from, and its reference model."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config.schema import RunConfig
from ...errors import ConfigError
from ...models.loading import load_model, read_run_meta, run_base_config

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter


def start_from_run(cfg: RunConfig) -> tuple[RunConfig, Path | None]:
    """`model.name_or_path` may be an earlier tunesmith run folder (an SFT run). A full-model run is an HF folder
    and loads as any model. An adapter run: the config's model becomes that run's base, and training continues the
    run's adapter (its own rank and targets; the method options' are not used), which is then also the reference
    (TRL keeps a frozen copy of it). Returns (the config to train, the adapter folder or None)."""
    folder = Path(cfg.model.name_or_path)
    meta = read_run_meta(folder) if folder.is_dir() else None
    if meta is None or meta["artifact"] == "full":
        return cfg, None
    if meta["artifact"] != "adapter" or not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"{folder} holds a {meta['artifact']} run, which a preference run cannot start from",
                          where="model.name_or_path", hint="start from a LoRA/DoRA/QLoRA or full SFT run")
    if cfg.method.name not in ("lora", "dora", "rslora", "qlora", "pissa", "olora", "loraplus"):
        raise ConfigError(f"method {cfg.method.name} cannot continue the adapter of {folder}",
                          where="method.name", hint="use the adapter's method (lora, dora, qlora ...), or merge the "
                                                    "run first (tunesmith export --merge) and start from that")
    base = run_base_config(meta, folder, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    base = base.model_copy(update={"quantization": cfg.model.quantization,
                                   "attn_implementation": cfg.model.attn_implementation or base.attn_implementation})
    return cfg.model_copy(update={"model": base}), folder


def load_policy(cfg: RunConfig, run, tokenizer, *, adapter: Path | None, total_steps: int):
    """The causal LM to train, prepared by the run's method, or carrying the adapter to continue."""
    method, runtime = run.method, run.runtime
    model = load_model(cfg.model, dtype=runtime.load_dtype,
                       extra=method.load_kwargs(cfg.method, runtime.compute_dtype))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # training never reuses a KV cache
    if adapter is None:
        model = method.prepare(model, cfg.method, gradient_checkpointing=cfg.training.gradient_checkpointing,
                               total_steps=total_steps)
        method.initialise(model, cfg.method, tokenizer)
        return model
    from peft import PeftModel

    if cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def reference_model(cfg: RunConfig, run, policy):
    """None where no second model is needed: a PEFT policy (TRL computes the reference through a frozen copy of the
    starting adapter, "ref": a fresh LoRA/DoRA adapter changes nothing, so that is the base model; an SFT run's
    adapter makes it the SFT model), or reference log-probs computed before training. Otherwise (full and
    tunesmith's own adapters) a second, frozen copy of the starting model."""
    from peft import PeftModel

    if isinstance(policy, PeftModel) or cfg.preference.precompute_ref_log_probs:
        return None
    model = load_model(cfg.model, dtype=run.runtime.load_dtype)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


def drop_reference_adapter(model) -> None:
    """The saved artifact is the trained adapter alone: TRL's frozen reference copy is removed first."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


@torch.no_grad()
def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """The sum of each row's completion-token log-probs (what DPO compares), computed plainly from the logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)
