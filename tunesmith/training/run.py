"""The run skeleton every training recipe runs in (`tunesmith/recipes/`).

A recipe says what is trained: its data, its model, its Trainer. `TrainingRun` holds what every run shares, so that
no recipe writes it again:
- the run folder: `config.yaml`, the run log `train.log` (every choice the run made), `metrics.jsonl`;
- experiment tracking (`training.report_to`: TensorBoard, MLflow, W&B; `tracking.py`);
- resume: the newest complete checkpoint (incomplete ones are dropped), or a fresh start;
- the runtime (device, precision) and the speed plan, each decided once (`tunesmith/runtime.py`, `speed/plan.py`);
- the pre-flight memory prediction and the CPU allocator it implies;
- the callbacks every run has: progress (the reporter's), the metrics file, the trackers, early stopping, the curve
  doctor (`diagnostics/`), which stops on NaN/Inf, after which the last good checkpoint becomes the run's weights;
- the save: weights, tokenizer, `tunesmith_run.json`, the loss plot and the model card, staged in a hidden folder
  and published together, so the folder never holds half of a result;
- several processes (`distributed.py`): rank 0 alone writes the run folder and talks to the user; the Trainer
  writes checkpoints (each rank its part) and reduces the logged metrics over the ranks.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from transformers import EarlyStoppingCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .. import __version__
from ..config.schema import RunConfig
from ..compat import load_checkpoint_weights
from ..diagnostics.callback import DiagnosticsCallback, TrainingDiverged
from ..errors import ConfigError
from ..hardware import physical_cores
from ..io import atomic_write_json, atomic_write_text, staged_dir
from ..methods.registry import get_method
from ..models.loading import RUN_META
from ..reporting import Reporter, RunLog, reporter_or_default
from ..retain.setup import RETAIN_DIR
from ..runtime import resolve_runtime
from ..speed.apply import ModelSpeedups, apply_to_model, configure_allocator, configure_process
from ..speed.cpu.allocator import release_free_memory, retained_peak
from ..speed.plan import resolve_speed_plan
from .callbacks import MetricsFileCallback, finite_number, read_metrics
from .tracking import Tracking, check_trackers
from .distributed import check_resume_world, check_strategy, current_world, join_process_group, process_record
from .checkpoints import CHECKPOINT_DIR, checkpoint_step, is_complete, latest_checkpoint, restore_last_good
from ..plots import plot_loss_curves

log = logging.getLogger(__name__)
RUN_LOG = "train.log"
# What only a tunesmith run folder holds (one of them is written before any other file of a run).
RUN_MARKERS = (RUN_META, RUN_LOG, CHECKPOINT_DIR, RETAIN_DIR)


@dataclass
class TrainResult:
    run_dir: Path
    trainable_params: int
    total_params: int
    metrics: dict
    data_stats: dict
    extra_meta: dict | None = None  # diagnostics findings, forgetting: saved in tunesmith_run.json and the card


class TrainingRun:
    """One training run of `cfg`, used as a context (`with TrainingRun(cfg) as run:`); see the module docstring.
    On leaving, freed memory goes back to the OS, so what the process does next (evaluation, chat, the demo's
    probes) starts small."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
                 extra_callbacks: list | None = None):
        self.cfg = cfg
        self.world = current_world()
        # Only rank 0 talks to the user; the other ranks' lines still go to the `tunesmith` log.
        self.reporter = reporter_or_default(reporter if self.world.is_main else None)
        self.run_dir = Path(cfg.training.output_dir)
        self.resume = resume
        self.extra_callbacks = list(extra_callbacks or [])
        self.method = get_method(cfg.method.name)
        self.runtime = resolve_runtime(cfg, self.method)
        check_strategy(cfg, self.world, cuda=self.runtime.cuda)
        # The processes on one machine share its cores.
        self.speed = resolve_speed_plan(cfg, self.runtime.device,
                                        cpu_threads=max(1, physical_cores() // self.world.local_size))
        self.checkpoint: Path | None = None
        self.speedups = ModelSpeedups()
        self.diagnostics: DiagnosticsCallback | None = None
        self.stopped = None  # the diagnostics finding that stopped training (divergence, collapse)
        self._stale_checkpoints: list[Path] = []
        self._log = RunLog()
        self.derived = None  # the settings derived from the data (`settle_defaults`), if the recipe asked
        check_output_dir(self.run_dir, overwrite=cfg.training.overwrite_output_dir)
        check_trackers(cfg)
        self.tracking = Tracking(cfg, self.run_dir)

    def __enter__(self) -> TrainingRun:
        self._log.__enter__()
        log.info("tunesmith %s: %s", __version__, self.runtime.describe())
        if self.world.launched:
            join_process_group(self.cfg, self.world, cuda=self.runtime.cuda)
            log.info("%s, strategy %s", self.world.describe(), self.cfg.distributed.strategy)
        for line in self.speed.describe():
            log.info(line)
        self.checkpoint = self._checkpoint_to_resume()
        set_seed(self.cfg.training.seed)
        configure_process(self.speed)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.world.is_main:
                self.tracking.finish(ok=exc[0] is None)  # after `save`, or a run that failed on the way
        except Exception:
            if exc[0] is None:
                raise
            log.warning("could not close the tracker's run", exc_info=True)  # the run's own error matters more
        self._log.__exit__(*exc)
        release_free_memory()

    def _checkpoint_to_resume(self) -> Path | None:
        """The checkpoint to continue from. Starting over, an earlier run's checkpoints are removed only when
        training starts (`fit`), after data and model have loaded: a mistake in the config costs nothing."""
        checkpoints = self.run_dir / CHECKPOINT_DIR
        if not self.resume:
            # Only the checkpoint folders a run writes; anything else in there is not tunesmith's to delete.
            self._stale_checkpoints = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir()]
            return None
        checkpoint = latest_checkpoint(self.run_dir)
        for folder in checkpoints.glob("checkpoint-*") if self.world.is_main else ():
            if not is_complete(folder):
                self.reporter.warning(f"skipping incomplete checkpoint {folder} (the run stopped while saving)")
                shutil.rmtree(folder)
        note = check_resume_world(checkpoint, self.cfg, self.world) if checkpoint else None
        if note:
            self.reporter.info(note)
        self.reporter.info(f"resuming from {checkpoint}" if checkpoint else "no checkpoint to resume; starting fresh")
        return checkpoint

    # --- before training -------------------------------------------------------------------------------------

    def preflight(self, seq: int | None = None):
        """Predict the peak memory from the config (meta device: no weights loaded), tell the user, and choose the
        CPU allocator for it. The planner's probe tensors must not shift the seeded RNG, or a run's adapter
        initialisation would depend on whether it ran. `seq`: the longest sequence, when the data bounds it below
        data.max_length."""
        from ..planning.preflight import device_memory, preflight

        with self.reporter.status("pre-flight: predicting peak memory"), torch.random.fork_rng(devices=[]):
            plan = preflight(self.cfg, reporter=self.reporter, speed=self.speed,
                             devices=self.world.shard_group(self.cfg), seq=seq)
        allocator = configure_allocator(self.speed, plan.peak if plan else None, device_memory("cpu"))
        # Full and freeze train the model's own weights (not an adapter's): the case tbbmalloc holds more for.
        retained = retained_peak(allocator, plan.peak if plan else None, trains_base_weights=not self.method.is_peft)
        if retained:  # the prediction is of live tensors; say what the allocator may keep on top (docs/planning.md)
            from ..planning.units import human

            why, better = (("glibc's default allocator keeps freed memory",
                            "tcmalloc, tbbmalloc (pip install tbb) or speed.cpu_allocator: lean")
                           if allocator == "default" else
                           ("tbbmalloc's heap fragments around the optimizer state when the model's own weights "
                            "train", "speed.cpu_allocator: lean"))
            self.reporter.info(f"pre-flight: {why}, so the process can hold {human(retained)} or more; with "
                               f"{better} it stays near {human(plan.peak)} (docs/planning.md)")
        return plan

    def settle_defaults(self, stats: dict) -> RunConfig:
        """Fill the training settings the user left unset (epochs, learning rate, warm-up, LoRA rank) from the
        tokenised data, the method and the model's size (`planning/defaults.py`), tell the user in one line, and
        return the config the rest of the run uses (its config.yaml records the values). Before `preflight`, so the
        memory prediction sees the rank the run trains."""
        from ..planning.defaults import derive_defaults, model_parameters

        wants_size = "learning_rate" not in self.cfg.training.model_fields_set
        cfg, self.derived = derive_defaults(
            self.cfg, samples=int(stats.get("train_samples", 0)),
            supervised_tokens=int(stats.get("train_supervised_tokens", 0)),
            parameters=model_parameters(self.cfg) if wants_size else None,
            # Each data-parallel rank takes its own batch: an epoch is that many times fewer steps.
            processes=self.world.size)
        if self.derived.values:
            self.reporter.info(self.derived.line())
        self.cfg = self.tracking.cfg = cfg
        return cfg

    def speed_up(self, model) -> None:
        """Swap the speed plan's pieces into the prepared model (undone after training): those the run's task takes
        (speed/plan.py, NOT_TAKEN)."""
        self.speedups = apply_to_model(self.speed, model, self.method, self.runtime.compute_dtype, self.reporter)

    def write_config(self, cfg: RunConfig | None = None) -> None:
        """Create the run folder, start its `train.log`, and write the resolved config (choices such as
        `data.packing: auto` made), so `tunesmith train config.yaml` in the run folder trains the same run again.
        Recipes call it once data and model have loaded."""
        cfg = cfg or self.cfg
        if not self.world.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log.write_to(self.run_dir / RUN_LOG)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                                       allow_unicode=True))

    def callbacks(self, *, diagnostics: bool = True, early_stopping: bool = False,
                  method_callbacks: list | None = None) -> list:
        """The callbacks of every run, the method's (`method_callbacks`), then the caller's extra ones.
        `early_stopping`: the run has validation data to stop on."""
        main = self.world.is_main
        callbacks = [*self.reporter.training_callbacks(), *([MetricsFileCallback(self.run_dir / "metrics.jsonl")]
                                                            if main else []), process_record(self.cfg, self.world)]
        if diagnostics:  # on every rank: each must stop at the same step (the logged metrics are reduced already)
            self.diagnostics = DiagnosticsCallback(self.run_dir, self.reporter,
                                                   max_grad_norm=self.cfg.training.max_grad_norm)
            callbacks.append(self.diagnostics)
        if main:  # the trackers' writers open files as they are made
            callbacks += self.tracking.callbacks()
        if self.cfg.training.early_stopping_patience and early_stopping:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=self.cfg.training.early_stopping_patience))
        return callbacks + list(method_callbacks or []) + self.extra_callbacks

    # --- training ----------------------------------------------------------------------------------------------

    def fit(self, trainer, model, *, planned_steps: int) -> tuple[dict, dict]:
        """Train (from the checkpoint to resume, if any) to `planned_steps`; then undo the speed pieces and, after
        a divergence or collapse, load the best sound checkpoint. A resumed run whose checkpoint already reached
        `planned_steps` trains nothing: its weights are that checkpoint's. Returns (the training metrics, run facts
        for tunesmith_run.json)."""
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        if self._stale_checkpoints and self.world.is_main:
            self.reporter.warning(f"{self.run_dir} already has checkpoints; starting over (pass --resume to "
                                  f"continue)")
            for folder in self._stale_checkpoints:
                shutil.rmtree(folder)
        if self.checkpoint is not None and checkpoint_step(self.checkpoint) >= planned_steps:
            load_checkpoint_weights(trainer, self.checkpoint)
            self.speedups.undo(model)
            self.reporter.info(f"the run had already finished: {self.checkpoint.name} is step "
                               f"{checkpoint_step(self.checkpoint)} of {planned_steps}; nothing to train, its "
                               f"weights are the run's")
            return {}, {"resumed_finished": self.checkpoint.name}
        output = trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        self.speedups.undo(model)
        extra: dict = {}
        if self.diagnostics is not None:
            extra["diagnostics"] = [f.to_dict() for f in self.diagnostics.findings]
            self.stopped = self.diagnostics.diverged
            if self.stopped:  # the best sound checkpoint becomes the run's weights
                restored = restore_last_good(trainer, self.run_dir, self.stopped, self.reporter)
                extra["restored_from"] = restored.name
        return dict(output.metrics), extra

    def held_out_metrics(self, trainer) -> dict:
        """The held-out (`eval_*`) metrics of the weights the run saves. transformers already evaluates at the last
        step of training; those numbers are reused unless the weights changed after it (the best checkpoint loaded
        at the end, the last good one restored), so the held-out set is not run twice."""
        last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
        unchanged = not self.stopped and not trainer.args.load_best_model_at_end
        if last is not None and unchanged and last.get("step") == trainer.state.global_step:
            return {key: value for key, value in last.items() if key.startswith("eval_")}
        return trainer.evaluate()

    def gathered_weights(self, trainer) -> dict | None:
        """Under FSDP or DeepSpeed each rank holds a shard of the weights: the whole state dict, gathered for rank 0
        (a collective every rank joins), for `save_pretrained(state_dict=...)`. None where the model is whole."""
        if not self.world.launched or self.cfg.distributed.strategy == "ddp":
            return None
        engine = trainer.deepspeed if self.cfg.distributed.strategy == "deepspeed" else trainer.model
        return trainer.accelerator.get_state_dict(engine)

    # --- the result --------------------------------------------------------------------------------------------

    def save(self, *, save_weights: Callable[[Path], None], tokenizer, meta: dict, title: str,
             write_card: Callable[[Path, dict, bool], None], plots: Callable[[Path], None] | None = None) -> None:
        """Publish the result into the run folder at once: `save_weights(folder)` (the method's artifact), the
        tokenizer, `tunesmith_run.json` (`meta` plus the version), the loss plot, the recipe's own `plots(folder)`,
        and the model card `write_card(path, meta, has_loss_plot)`."""
        meta = {"tunesmith_version": __version__, **meta}
        if not self.world.is_main:
            return  # rank 0 saves (the engines' weight gathering, a collective, happened in `gathered_weights`)
        with staged_dir(self.run_dir) as staging:
            save_weights(staging)
            tokenizer.save_pretrained(staging)
            atomic_write_json(staging / RUN_META, meta)
            plot_loss_curves(read_metrics(self.run_dir / "metrics.jsonl"), staging / "loss.png", title=title)
            if plots is not None:
                plots(staging)
            write_card(staging / "README.md", meta, (staging / "loss.png").exists())
        if self.stopped is not None:  # saved the best sound weights; the run itself failed
            raise TrainingDiverged(f"training stopped at step {self.stopped.step}: {self.stopped.message}",
                                   where=str(self.run_dir),
                                   hint=f"{self.stopped.advice}. The run folder holds the weights of "
                                        f"{meta.get('restored_from')}, the best sound checkpoint before it")


def check_output_dir(run_dir: Path, *, overwrite: bool) -> None:
    """A run writes into its output folder; one that holds files tunesmith did not write is refused, so that no
    file of the user's is overwritten, unless `overwrite` (training.overwrite_output_dir, `--overwrite`)."""
    if overwrite or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, but a run needs a folder", where="training.output_dir",
                          hint="choose a folder path (it is created when missing)")
    others = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if not others or any((run_dir / marker).exists() for marker in RUN_MARKERS):
        return
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    raise ConfigError(f"{run_dir} is not a tunesmith run folder and is not empty ({shown}); a run would overwrite "
                      f"files there", where="training.output_dir",
                      hint="choose a new or empty folder, or pass --overwrite (training.overwrite_output_dir: true): "
                           "tunesmith then writes its own files there and deletes nothing else")


def finite_metrics(metrics: dict) -> dict:
    """The numbers of a metrics dict that JSON and a model card can hold."""
    return {k: v for k, v in metrics.items() if finite_number(v)}


def base_model_meta(cfg: RunConfig) -> dict:
    """What a run records of its base model (what loading the run needs)."""
    return cfg.model.model_dump(mode="json", include={"name_or_path", "gguf_file", "revision", "trust_remote_code",
                                                      "attn_implementation"})


def total_steps(cfg: RunConfig, train_samples: int) -> int:
    """Optimizer steps of the whole run, known before training (AdaLoRA's budget schedule needs it)."""
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    per_epoch = max(math.ceil(math.ceil(train_samples / t.batch_size) / t.grad_accum), 1)
    return max(math.ceil(t.num_epochs * per_epoch), 1)
