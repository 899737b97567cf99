"""Supervised fine-tuning of a causal LM on instruction or chat data: `tunesmith train` with `task: sft`.

Read top to bottom: the data, the model with its method, the speed plan's pieces, the Trainer, the result. What
every run shares (run folder, resume, callbacks, the staged save) is `training.run.TrainingRun`.
"""

from __future__ import annotations

import inspect
import logging

import torch

from ..config.schema import RunConfig
from ..data.collator import make_collator
from ..data.dataset import build_datasets
from ..data.templates.registry import get_template
from ..errors import ConfigError
from ..models.loading import load_model, load_tokenizer
from ..models.pypi_models import default_cache_root
from ..models.targets import count_parameters
from ..reporting import Reporter
from ..retain.replay import add_replay
from ..retain.setup import prepare_terms, with_replay_mask
from ..training.arguments import build_training_arguments
from ..training.model_card import write_model_card
from ..training.run import TrainingRun, TrainResult, base_model_meta, finite_metrics, total_steps
from ..speed.logits import has_virtual_tokens, supports_supervised_logits
from ..training.distributed import main_process_first
from ..training.trainer import TunesmithTrainer
from ..compat import base_config

log = logging.getLogger(__name__)


def train_sft(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
              extra_callbacks: list | None = None) -> TrainResult:
    with TrainingRun(cfg, resume=resume, reporter=reporter, extra_callbacks=extra_callbacks) as run:
        method, runtime, report = run.method, run.runtime, run.reporter
        report.info(f"tunesmith {cfg.method.name} on {cfg.model.name_or_path}")
        _report_precision(cfg, method, runtime, report)

        tokenizer = load_tokenizer(cfg.model)
        tokenizer.padding_side = "right"
        template = get_template(cfg.data.template, tokenizer)
        # With several processes rank 0 tokenises (and caches) first; the others then read its cache.
        with report.status("preparing data"), main_process_first(run.world):
            data = build_datasets(cfg.data, tokenizer, template,
                                  cache_root=default_cache_root() if cfg.data.cache else None)
            if cfg.retain is not None and cfg.retain.replay is not None:
                data = add_replay(data, cfg.retain.replay, tokenizer, template, cfg.data)
        _report_data(report, data.stats)
        cfg = run.settle_defaults(data.stats)
        run.preflight()

        with report.status("loading model"):
            model = load_model(cfg.model, dtype=runtime.load_dtype,
                               extra=method.load_kwargs(cfg.method, runtime.compute_dtype))
            if getattr(model.config, "pad_token_id", None) is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            # Training never reuses a KV cache; and with a cache present transformers stops detecting packed
            # sequences from position ids, so packed samples would silently attend to each other.
            model.config.use_cache = False
            _check_packing(cfg, model)
            _check_context(cfg, model)
            model = method.prepare(model, cfg.method, gradient_checkpointing=cfg.training.gradient_checkpointing,
                                   total_steps=total_steps(cfg, len(data.train)))
            method.initialise(model, cfg.method, tokenizer)
        # θ₀, the Fisher and the teacher are of the model the run starts from: taken before the speed pieces go in
        # and before the Trainer loads a checkpoint to resume.
        retain_terms = prepare_terms(cfg, model, method, tokenizer, template, run_dir=run.run_dir, resume=resume,
                                     reporter=report, compute_dtype=runtime.compute_dtype, device=runtime.device)
        run.speed_up(model)
        cfg = _resolve_packing(cfg, model, run.speedups.packed_attention)
        trainable, total = count_parameters(model)
        report.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

        args = build_training_arguments(cfg, runtime=runtime, speed=run.speed,
                                        has_validation=data.validation is not None)
        run.write_config(cfg)
        trainer = TunesmithTrainer(
            model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
            data_collator=with_replay_mask(make_collator(tokenizer, packing=cfg.data.packing), data.train,
                                           packing=cfg.data.packing, terms=retain_terms),
            processing_class=tokenizer, loss_terms=retain_terms,
            callbacks=run.callbacks(early_stopping=data.validation is not None,
                                    method_callbacks=method.callbacks(model, cfg.method)),
            optimizers=(method.optimizer(model, cfg.method, args), None),
            # Logits only where the loss reads them, unless Liger's fused linear cross-entropy takes the head: it
            # needs almost no memory, but on an H200 it was slower than the chunked loss (docs/speed.md).
            supervised_logits=run.speed.supervised_logits and supports_supervised_logits(model),
            chunked_loss=run.speed.chunked_loss, activation_offload=run.speed.activation_offload,
            skip_padding_mask=run.speed.skip_padding_mask)
        metrics, facts = run.fit(trainer, model, planned_steps=total_steps(cfg, len(data.train)))

        if data.validation is not None:
            metrics.update(run.held_out_metrics(trainer))
        if cfg.eval.general and run.world.is_main:  # scored once, by the rank that saves
            from ..evaluation.forgetting import measure_forgetting

            facts["forgetting"] = measure_forgetting(cfg, trainer.model, tokenizer, template.name, reporter=report)
        result = TrainResult(run.run_dir, trainable, total, metrics, data.stats, facts)
        base_config(trainer.model).use_cache = True  # the saved model is for inference
        meta = {"artifact": method.artifact, "method": cfg.method.model_dump(mode="json"),
                "base_model": base_model_meta(cfg), "template": template.name, "max_length": cfg.data.max_length,
                "trainable_params": trainable, "total_params": total, "data": data.stats,
                "metrics": finite_metrics(metrics), **facts}
        if run.derived is not None and run.derived.values:
            meta["defaults_from_data"] = run.derived.as_dict()
        if cfg.retain is not None:
            meta["retain"] = cfg.retain.model_dump(mode="json")
        gathered = run.gathered_weights(trainer)  # FSDP / DeepSpeed: every rank joins; None for a whole model
        run.save(save_weights=lambda folder: method.save(trainer.model, cfg.method, folder) if gathered is None
                 else trainer.model.save_pretrained(folder, state_dict=gathered), tokenizer=tokenizer,
                 meta=meta, title=f"{cfg.method.name} on {cfg.model.name_or_path}",
                 write_card=lambda path, meta, plot: write_model_card(path, cfg, meta, has_plot=plot))
        report.info(f"saved {run.run_dir}  (chat: tunesmith chat {run.run_dir})")
        return result


def _report_precision(cfg: RunConfig, method, runtime, report: Reporter) -> None:
    """Say which precision `auto` chose and how to change it (mixed precision changes the numerics); warn when a
    method whose gradients half precision spoils trains in it."""
    safe = method.bf16_autocast_safe(cfg.method)
    if runtime.compute_dtype != torch.float32 and not safe:
        report.warning(f"{method.name}'s gradients are far off under {runtime.dtype_name} (measured for bf16 "
                       "autocast on CPU: benchmarks/bf16_gradients.py); a learning rate that trains in fp32 may "
                       "diverge. model.dtype: float32 trains in full precision")
    if cfg.model.dtype != "auto":
        return
    if runtime.cuda:
        report.info(f"precision: {runtime.dtype_name} mixed precision on {torch.cuda.get_device_name()} (model.dtype auto); "
                    "model.dtype: float32 trains in full fp32")
    elif not safe and runtime.bf16_unit is not None:
        report.info(f"precision: fp32 (model.dtype auto): {method.name}'s gradients are far off under bf16 "
                    "autocast (benchmarks/bf16_gradients.py); model.dtype: bfloat16 forces it")
    elif runtime.dtype_name == "bfloat16":
        report.info(f"precision: bf16 autocast over an fp32 model (model.dtype auto: this CPU has "
                    f"{runtime.bf16_unit}); model.dtype: float32 trains in full fp32")


def _report_data(report: Reporter, stats: dict) -> None:
    report.info(f"data: {stats.get('train_samples', '?')} training samples, "
                f"{stats.get('validation_samples', 0)} validation samples"
                + (f" ({stats['replay_samples']} of them replay)" if stats.get("replay_samples") else ""))
    dropped = stats.get("dropped_no_label", 0)
    if dropped:
        report.warning(f"dropped {dropped} samples with no supervised token left (prompt too long for "
                       f"data.max_length?)")
    if stats.get("truncated"):
        report.info(f"note: truncated {stats['truncated']} samples to data.max_length (prompt cut first)")


def _check_packing(cfg: RunConfig, model) -> None:
    # Padding-free packing tells samples apart only through restarted position ids; models without them
    # (e.g. ALiBi models such as BLOOM) would attend across samples.
    if cfg.data.packing is True and not _takes_position_ids(model):
        raise ConfigError(f"packing is not supported for {type(model).__name__}: it takes no position ids, so "
                          f"packed samples would attend to each other", where="data.packing",
                          hint="set data.packing: false (length-grouped dynamic padding is used instead)")


def _takes_position_ids(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "position_ids" in inspect.signature(base.forward).parameters


def _resolve_packing(cfg: RunConfig, model, packed_attention: str | None) -> RunConfig:
    """`data.packing: auto` packs where attention computes each packed sample alone: the attention the speed plan
    swapped in (`packed_attention`: tunesmith's CPU causal kernel, as fast as length-grouped padding there with less
    memory; torch's varlen FlashAttention on CUDA, docs/speed.md), or FlashAttention (2, 3 or a hub kernel of it),
    whose varlen path transformers takes for a packed row's restarted position ids, so no token of padding or of
    another sample is computed. SDPA would compute each packed row's whole square under a block-diagonal mask, so
    elsewhere batches are padded. Returns the config with the choice made (the run's config.yaml records it)."""
    if cfg.data.packing != "auto":
        return cfg
    attention = packed_attention or ("varlen FlashAttention" if _flash_attention(model) else None)
    packing = attention is not None and _takes_position_ids(model) and not has_virtual_tokens(model)
    if packing:
        log.info("packing: each batch's samples in one row, attending only within each sample on %s, no padding "
                 "(data.packing auto; false pads length-grouped batches)", attention)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": packing})})


def _flash_attention(model) -> bool:
    from transformers.utils.generic import is_flash_attention_requested

    return is_flash_attention_requested(base_config(model))


def _check_context(cfg: RunConfig, model) -> None:
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and cfg.data.max_length > context:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the model's context of {context} tokens",
                          where="data.max_length", hint=f"set data.max_length <= {context}")
