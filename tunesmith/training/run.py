"""`train(config)`: data, model, method, Trainer, and a run folder that plain Hugging Face code can load."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console
from transformers import EarlyStoppingCallback, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .. import __version__
from ..config.schema import RunConfig
from ..data.collator import make_collator
from ..data.dataset import build_datasets
from ..data.templates.registry import get_template
from ..io import atomic_write_json, atomic_write_text, publish_dir_contents
from ..methods.registry import get_method
from ..models.loading import RUN_META, load_model, load_tokenizer, training_compute_dtype, training_load_dtype
from ..models.pypi_models import default_cache_root
from ..models.targets import count_parameters
from ..hardware import native_bf16_cpu, usable_cpus
from .arguments import build_training_arguments, configure_cpu_runtime
from .cpu_memory import choose_cpu_allocator, configure_cpu_allocator, release_free_memory, tcmalloc_tip
from .cpu_layers import apply_cpu_layers
from .frozen_base import hold_for_training, release
from ..diagnostics.callback import DiagnosticsCallback, restore_last_good
from .causal_attention import kernel_failure, restore_attention, use_causal_attention_kernel
from .callbacks import MetricsFileCallback, RichProgressCallback, read_metrics
from .checkpoints import CHECKPOINT_DIR, is_complete, latest_checkpoint
from .model_card import write_model_card
from .plots import plot_loss_curves
from .trainer import TunesmithTrainer, has_virtual_tokens, supports_supervised_logits

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    trainable_params: int
    total_params: int
    metrics: dict
    data_stats: dict
    extra_meta: dict | None = None  # diagnostics findings, forgetting: saved in tunesmith_run.json and the card


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None,
          extra_callbacks: list | None = None) -> TrainResult:
    """Train as `cfg` says; the trained model is saved in training.output_dir. Once the model and trainer are gone,
    freed memory goes back to the OS, so what the process does next (evaluation, chat, the demo's probes) starts
    small (`release_free_memory`)."""
    try:
        if cfg.task == "classification":
            from ..tasks.classification.train import train_classification

            return train_classification(cfg, resume=resume, console=console, extra_callbacks=extra_callbacks)
        return _train_causal_lm(cfg, resume=resume, console=console, extra_callbacks=extra_callbacks)
    finally:
        release_free_memory()


def _train_causal_lm(cfg: RunConfig, *, resume: bool, console: Console | None,
                     extra_callbacks: list | None) -> TrainResult:
    console = console or Console(stderr=True)
    run_dir = Path(cfg.training.output_dir)
    checkpoint = _checkpoint_to_resume(run_dir, resume, console)
    set_seed(cfg.training.seed)
    threads, cpus = configure_cpu_runtime(cfg), usable_cpus()
    if threads and threads > cpus:
        console.print(f"[yellow]warning:[/] training.cpu_threads {threads} is more than the {cpus} CPUs this "
                      f"process may use; oversubscribed threads wait on each other (unset it for the physical cores)")
    method = get_method(cfg.method.name)
    compute_dtype = training_compute_dtype(cfg.model.dtype, bf16_safe=method.bf16_autocast_safe(cfg.method))

    console.print(f"[bold]tunesmith[/] {cfg.method.name} on {cfg.model.name_or_path}")
    _report_precision(cfg, method, compute_dtype, console)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "right"
    template = get_template(cfg.data.template, tokenizer)
    with console.status("preparing data"):
        data = build_datasets(cfg.data, tokenizer, template,
                              cache_root=default_cache_root() if cfg.data.cache else None)
    _report_data(console, data.stats)

    load_dtype = training_load_dtype(method.is_peft, compute_dtype)
    with console.status("pre-flight: predicting peak memory"):
        from ..planning.preflight import preflight

        # Config only (meta device): no weights loaded twice. Its probe tensors must not shift the seeded RNG,
        # or a run's adapter initialisation would depend on whether the planner ran.
        with torch.random.fork_rng(devices=[]):
            plan = preflight(cfg, console=console)
    if not torch.cuda.is_available():
        from ..planning.preflight import device_memory

        allocator = choose_cpu_allocator(cfg.training.cpu_allocator, plan.peak if plan else None, device_memory("cpu"))
        console.print(f"CPU allocator: {configure_cpu_allocator(allocator)}")
        tip = tcmalloc_tip(cfg.training.cpu_allocator, allocator)
        if tip:
            console.print(f"[dim]tip: {tip}[/]")
    with console.status("loading model"):
        model = load_model(cfg.model, dtype=load_dtype, extra=method.load_kwargs(cfg.method, compute_dtype))
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
    # Outside the status above: it shows its own, and rich before 14.1 allows one live display at a time.
    apply_cpu_layers(cfg, model, console)
    with console.status("preparing the frozen base for training"):
        held = hold_for_training(model, method, compute_dtype, cuda=torch.cuda.is_available(),
                                 enabled=cfg.training.half_frozen_base)
    attention_before = _use_cpu_causal_attention(cfg, model, compute_dtype, console)
    cfg = _resolve_packing(cfg, model, attention_before is not None, console)
    if held:
        dtype = str(held[0].weight.dtype).removeprefix("torch.")
        console.print(f"[dim]frozen base: {len(held)} linear weights held in {dtype} "
                      f"for training, the values autocast multiplies with (training.half_frozen_base)[/]")
    trainable, total = count_parameters(model)
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

    args = build_training_arguments(cfg, compute_dtype=compute_dtype, has_validation=data.validation is not None)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                             allow_unicode=True))
    diagnostics = DiagnosticsCallback(run_dir, console, max_grad_norm=cfg.training.max_grad_norm)
    callbacks = [RichProgressCallback(console), MetricsFileCallback(run_dir / "metrics.jsonl"), diagnostics]
    if cfg.training.tensorboard:
        callbacks.append(_tensorboard(run_dir))
    if cfg.training.early_stopping_patience and data.validation is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    callbacks += method.callbacks(model, cfg.method)
    # Logits only where the loss reads them, unless Liger's fused linear cross-entropy takes the head: it needs
    # almost no memory, but on an H200 it was slower than the chunked loss (docs/benchmarks.md, section "GPU").
    t = cfg.training
    supervised = t.supervised_logits and not t.liger_kernel and supports_supervised_logits(model)
    trainer = TunesmithTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                               data_collator=make_collator(tokenizer, packing=cfg.data.packing),
                               processing_class=tokenizer,
                               callbacks=callbacks + list(extra_callbacks or []),
                               optimizers=(method.optimizer(model, cfg.method, args), None),
                               supervised_logits=supervised, chunked_loss=t.chunked_loss,
                               activation_offload=t.activation_offload, skip_padding_mask=t.skip_padding_mask)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    release(held)
    restore_attention(model, attention_before)

    extra_meta = {"diagnostics": [f.to_dict() for f in diagnostics.findings]}
    if diagnostics.diverged:  # the last good checkpoint becomes the run's weights
        extra_meta["restored_from"] = restore_last_good(trainer, run_dir, diagnostics.diverged, console).name
    metrics = dict(output.metrics)
    if data.validation is not None:
        metrics.update(trainer.evaluate())
    if cfg.eval.general:
        from ..evaluation.forgetting import measure_forgetting

        extra_meta["forgetting"] = measure_forgetting(cfg, trainer.model, tokenizer, template.name, console)
    result = TrainResult(run_dir, trainable, total, metrics, data.stats, extra_meta)
    _save_run(cfg, result, trainer.model, tokenizer, template.name, method)
    console.print(f"[green]saved[/] {run_dir}  (chat: tunesmith chat {run_dir})")
    return result


def _use_cpu_causal_attention(cfg: RunConfig, model, compute_dtype: torch.dtype, console: Console) -> str | None:
    """`training.cpu_causal_attention`: CPU bf16 runs attend through the causal kernel; returns the attention to
    restore after training (None: unchanged). Not under `training.torch_compile`, whose graphs attend through SDPA
    (the kernel is not traceable), so that `data.packing: auto` does not pack for a kernel that will not run."""
    if torch.cuda.is_available() or compute_dtype != torch.bfloat16 or not cfg.training.cpu_causal_attention:
        return None
    if cfg.training.torch_compile:
        console.print("[dim]CPU causal attention kernel: not under training.torch_compile (it cannot be traced); "
                      "attention runs on SDPA[/]")
        return None
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return None
    with console.status("CPU causal attention kernel (compiled on first use, about 25 s)"):
        before = use_causal_attention_kernel(model)
    if before is None:
        console.print(f"[dim]CPU causal attention kernel: {kernel_failure()}; attention runs on SDPA "
                      "(training.cpu_causal_attention)[/]")
    else:
        console.print("CPU causal attention: query blocks meet only the keys before them "
                      "(training.cpu_causal_attention)")
    return before


def _report_precision(cfg: RunConfig, method, compute_dtype: torch.dtype, console: Console) -> None:
    """Say which precision `auto` chose and how to change it (mixed precision changes the numerics); warn when a
    method whose gradients half precision spoils trains in it."""
    safe = method.bf16_autocast_safe(cfg.method)
    if compute_dtype != torch.float32 and not safe:
        dtype = str(compute_dtype).removeprefix("torch.")
        console.print(f"[yellow]warning:[/] {method.name}'s gradients are far off under {dtype} "
                      "(measured for bf16 autocast on CPU: benchmarks/bf16_gradients.py); a learning rate that "
                      "trains in fp32 may diverge. model.dtype: float32 trains in full precision")
    if cfg.model.dtype != "auto":
        return
    if torch.cuda.is_available():
        console.print(f"precision: {str(compute_dtype).removeprefix('torch.')} mixed precision on "
                      f"{torch.cuda.get_device_name()} (model.dtype auto); model.dtype: float32 trains in full fp32")
        return
    flag = native_bf16_cpu()
    if not safe and training_compute_dtype("auto", cuda=False) == torch.bfloat16:
        console.print(f"precision: fp32 (model.dtype auto): {method.name}'s gradients are far off under bf16 "
                      "autocast (benchmarks/bf16_gradients.py); model.dtype: bfloat16 forces it")
    elif compute_dtype == torch.bfloat16:
        console.print(f"precision: bf16 autocast over an fp32 model (model.dtype auto: this CPU has {flag}); "
                      "model.dtype: float32 trains in full fp32")


def _check_packing(cfg: RunConfig, model) -> None:
    from ..errors import ConfigError

    # Padding-free packing tells samples apart only through restarted position ids; models without them
    # (e.g. ALiBi models such as BLOOM) would attend across samples.
    if cfg.data.packing is True and not _takes_position_ids(model):
        raise ConfigError(f"packing is not supported for {type(model).__name__}: it takes no position ids, so "
                          f"packed samples would attend to each other", where="data.packing",
                          hint="set data.packing: false (length-grouped dynamic padding is used instead)")


def _takes_position_ids(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "position_ids" in inspect.signature(base.forward).parameters


def _resolve_packing(cfg: RunConfig, model, kernel: bool, console: Console) -> RunConfig:
    """`data.packing: auto` packs where attention computes each packed sample alone: tunesmith's CPU causal kernel
    (`kernel`), which takes packed rows as segments: as fast as length-grouped padding there, with less memory
    (docs/benchmarks.md); and FlashAttention (2, 3 or a hub kernel of it), whose varlen path transformers takes for a
    packed row's restarted position ids, so no token of padding or of another sample is computed (not measured here:
    no GPU). SDPA would compute each packed row's whole square under a block-diagonal mask, so elsewhere batches are
    padded. Returns the config with the choice made (the run's config.yaml records it)."""
    if cfg.data.packing != "auto":
        return cfg
    attention = "the CPU causal kernel" if kernel else "varlen FlashAttention" if _flash_attention(model) else None
    packing = attention is not None and _takes_position_ids(model) and not has_virtual_tokens(model)
    if packing:
        console.print(f"packing: each batch's samples in one row, attending only within each sample on {attention}, "
                      f"no padding (data.packing auto; false pads length-grouped batches)")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": packing})})


def _flash_attention(model) -> bool:
    from transformers.utils.generic import is_flash_attention_requested

    return is_flash_attention_requested(_base_config(model))


def _check_context(cfg: RunConfig, model) -> None:
    from ..errors import ConfigError

    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and cfg.data.max_length > context:
        raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the model's context of {context} tokens",
                          where="data.max_length", hint=f"set data.max_length <= {context}")


def _checkpoint_to_resume(run_dir: Path, resume: bool, console: Console) -> Path | None:
    if not resume:
        if (run_dir / CHECKPOINT_DIR).is_dir() and any((run_dir / CHECKPOINT_DIR).iterdir()):
            console.print(f"[yellow]note:[/] {run_dir} already has checkpoints; starting over "
                          f"(pass --resume to continue)")
            shutil.rmtree(run_dir / CHECKPOINT_DIR)
        return None
    checkpoint = latest_checkpoint(run_dir)
    for folder in (run_dir / CHECKPOINT_DIR).glob("checkpoint-*"):
        if not is_complete(folder):
            console.print(f"[yellow]skipping incomplete checkpoint[/] {folder} (the run stopped while saving)")
            shutil.rmtree(folder)
    console.print(f"resuming from {checkpoint}" if checkpoint else "no checkpoint to resume; starting fresh")
    return checkpoint


def _tensorboard(run_dir: Path) -> TensorBoardCallback:
    from torch.utils.tensorboard import SummaryWriter

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))


def _report_data(console: Console, stats: dict) -> None:
    console.print(f"data: {stats.get('train_samples', '?')} training samples, "
                  f"{stats.get('validation_samples', 0)} validation samples")
    dropped = stats.get("dropped_no_label", 0)
    if dropped:
        console.print(f"[yellow]warning:[/] dropped {dropped} samples with no supervised token left "
                      f"(prompt too long for data.max_length?)")
    if stats.get("truncated"):
        console.print(f"[yellow]note:[/] truncated {stats['truncated']} samples to data.max_length "
                      f"(prompt cut first)")


def _base_config(model):
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def total_steps(cfg: RunConfig, train_samples: int) -> int:
    """Optimizer steps of the whole run, known before training (AdaLoRA's budget schedule needs it)."""
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    per_epoch = max(math.ceil(math.ceil(train_samples / t.batch_size) / t.grad_accum), 1)
    return max(math.ceil(t.num_epochs * per_epoch), 1)


def _save_run(cfg: RunConfig, result: TrainResult, model, tokenizer, template_name: str, method) -> None:
    run_dir = result.run_dir
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=run_dir))
    _base_config(model).use_cache = True  # the saved model is for inference
    method.save(model, cfg.method, staging)
    tokenizer.save_pretrained(staging)
    meta = {
        "tunesmith_version": __version__,
        "artifact": method.artifact,
        "method": cfg.method.model_dump(mode="json"),
        "base_model": cfg.model.model_dump(mode="json", include={"name_or_path", "gguf_file", "revision",
                                                                  "trust_remote_code", "attn_implementation"}),
        "template": template_name,
        "max_length": cfg.data.max_length,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "data": result.data_stats,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        **(result.extra_meta or {}),
    }
    atomic_write_json(staging / RUN_META, meta)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    plot_loss_curves(metrics, staging / "loss.png", title=f"{cfg.method.name} on {cfg.model.name_or_path}")
    write_model_card(staging / "README.md", cfg, meta, has_plot=(staging / "loss.png").exists())
    publish_dir_contents(staging, run_dir)
