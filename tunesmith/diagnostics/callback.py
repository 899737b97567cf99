"""The curve doctor during training: stop on NaN/Inf before a bad checkpoint is written, warn about spikes
and exploding gradients as they happen, and save every finding with the run (diagnostics.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import TunesmithError
from ..io import atomic_write_json
from ..reporting import Reporter, reporter_or_default
from .curves import HEALTHY_SHARE, UNIFORM_MARGIN, detect_collapse, relative_to_uniform, detect_grad_health, detect_spikes, diagnose
from .findings import Finding, sort_findings

DIAGNOSTICS_FILE = "diagnostics.json"
_LIVE = ("spike", "grad_explosion")  # worth telling the user before the run ends
_UNSTABLE = ("nonfinite", "spike", "grad_explosion", "oscillation")


# Trainable weights beyond this are blown up even if finite (pretrained weights stay far below it).
MAX_SOUND_WEIGHT = 1e4


class TrainingDiverged(TunesmithError):
    """Training diverged or collapsed. Raised after the run folder got the last sound checkpoint's weights, or
    when no sound checkpoint exists (nothing saved). Not a bad input: its own exit code."""

    exit_code = 3


class DiagnosticsCallback(TrainerCallback):
    def __init__(self, run_dir: Path, reporter: Reporter | None = None, max_grad_norm: float | None = None):
        self.run_dir = Path(run_dir)
        self.reporter = reporter_or_default(reporter)
        self.max_grad_norm = max_grad_norm
        self.records: list[dict] = []
        self.vocab_size: int | None = None
        # The last logged loss was back at or above the uniform-guess level after being healthy: no checkpoint is
        # written then, so that checkpoint rotation never drops a sound checkpoint for one of a model that may be
        # collapsing.
        self.healthy = self.suspect = False
        self.diverged: Finding | None = None  # the finding that stopped training (nonfinite or collapse)
        self.findings: list[Finding] = []
        self._told: set[tuple[str, int | None]] = set()

    def _stop(self, control, step: int, what: str) -> None:
        self._stop_with(control, Finding(
            "nonfinite", "error", step, f"{what} (training diverged); stopped at step {step}",
            "lower the learning rate (e.g. ÷10), keep max_grad_norm at 1.0 or lower, use bf16 rather than fp16, and "
            "check the data for empty or extremely long samples"))

    def _stop_with(self, control, finding: Finding) -> None:
        self.diverged = finding
        control.should_training_stop = True
        control.should_save = False  # never checkpoint broken weights; the last good checkpoint stays
        self.reporter.warning(f"{finding.code} at step {finding.step}: {finding.message}; stopping without saving")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # A checkpoint is about to be written: make sure the weights are sound (a NaN, or a blow-up, may have
        # happened between two logged steps).
        if control.should_save and model is not None and self.diverged is None and not weights_sound(model):
            self._stop(control, state.global_step, f"weights contain NaN/Inf or values above {MAX_SOUND_WEIGHT:g}")
        control.should_save = control.should_save and not self.suspect
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.records.append(record)
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value) and self.diverged is None:
                self._stop(control, state.global_step, f"{key} became {value}")
        if "loss" in logs:
            # Against a uniform guess goes the cross-entropy alone: with retain penalties (loss_task beside them)
            # the total is not one.
            share = relative_to_uniform(logs.get("loss_task", logs["loss"]), self.vocab_size)
            self.healthy = self.healthy or (share is not None and share < HEALTHY_SHARE)
            self.suspect = self.healthy and share is not None and share >= UNIFORM_MARGIN
            control.should_save = control.should_save and not self.suspect
            losses = [(r["step"], r.get("loss_task", r["loss"])) for r in self.records if "loss" in r]
            grads = [(r["step"], r["grad_norm"]) for r in self.records if "grad_norm" in r]
            collapse = detect_collapse(losses, grads, self.vocab_size)
            if collapse and self.diverged is None:
                self._stop_with(control, collapse[0])
            for finding in detect_spikes(losses) + detect_grad_health(grads):
                key = (finding.code, finding.step)
                if finding.code in _LIVE and key not in self._told and finding.step == state.global_step:
                    self._told.add(key)
                    self.reporter.warning(f"{finding.code} at step {finding.step}: {finding.message}")
        return control

    def on_train_end(self, args, state, control, **kwargs):
        metrics_file = self.run_dir / "metrics.jsonl"
        records = self.records
        if metrics_file.exists():  # the whole history, including steps before a resume
            records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines()
                       if line.strip()]
        findings = diagnose(records, max_grad_norm=self.max_grad_norm, vocab_size=self.vocab_size)
        if self.diverged:  # non-finite values are not written to metrics.jsonl, so add the event itself
            findings = sort_findings([self.diverged] + [f for f in findings if f.code != self.diverged.code])
        findings = sort_findings(findings + _precision_note(args, findings))
        self.findings = findings
        if not state.is_world_process_zero:  # with several processes, rank 0 alone writes the run folder
            return control
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / DIAGNOSTICS_FILE, {"findings": [f.to_dict() for f in findings],
                                                            "diverged": self.diverged is not None})
        if not findings:
            self.reporter.info("training diagnostics: the curves look healthy")
        for finding in findings:
            line = f"training diagnostics: {finding.code} " + str(finding).split("] ", 1)[1]
            (self.reporter.info if finding.severity == "info" else self.reporter.warning)(line)
        return control


def _precision_note(args, findings: list[Finding]) -> list[Finding]:
    """Instability under half precision: the learning rate is the usual cause, but not the only one (prefix tuning
    diverged under bf16 autocast where fp32 trained at the same learning rate: docs/methods.md)."""
    half = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else None
    if half is None or not any(f.code in _UNSTABLE for f in findings):
        return []
    return [Finding("half_precision", "info", None, f"this run computed under {half} mixed precision",
                    "if a lower learning rate does not settle the curve, train once with model.dtype: float32 to "
                    "tell precision and learning rate apart (python benchmarks/bf16_gradients.py --methods NAME "
                    "measures how far bf16 moves a method's gradients)")]


@torch.no_grad()
def weights_sound(model) -> bool:
    """Every trainable weight finite and below MAX_SOUND_WEIGHT in magnitude."""
    return all(bool(torch.isfinite(p).all()) and float(p.detach().abs().max()) < MAX_SOUND_WEIGHT
               for p in model.parameters() if p.requires_grad and p.numel())


def card_section(findings: list[dict] | None, restored_from: str | None = None) -> list[str]:
    """Model-card lines for the training diagnostics."""
    if findings is None:
        return []
    lines = ["## Training diagnostics", ""]
    if restored_from:
        lines += [f"**Training diverged or collapsed; the saved weights are those of `{restored_from}`, the best "
                  f"sound checkpoint before it (lowest training loss).**", ""]
    if not findings:
        return lines + ["No problems found in the loss and gradient curves.", ""]
    return lines + [f"- **{f['code']}** ({f['severity']}{', step ' + str(f['step']) if f['step'] is not None else ''})"
                    f": {f['message']}. {f['advice']}" for f in findings] + [""]
