"""The curve doctor during training: stop on NaN/Inf before a bad checkpoint is written, warn about spikes
and exploding gradients as they happen, and save every finding with the run (diagnostics.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..compat import load_checkpoint_weights
from ..errors import TunesmithError
from ..io import atomic_write_json
from ..reporting import Reporter, reporter_or_default
from .curves import detect_grad_health, detect_spikes, diagnose
from .findings import Finding, sort_findings

DIAGNOSTICS_FILE = "diagnostics.json"
_LIVE = ("spike", "grad_explosion")  # worth telling the user before the run ends
_UNSTABLE = ("nonfinite", "spike", "grad_explosion", "oscillation")


class TrainingDiverged(TunesmithError):
    """Training produced NaN/Inf before any checkpoint could be kept."""


class DiagnosticsCallback(TrainerCallback):
    def __init__(self, run_dir: Path, reporter: Reporter | None = None, max_grad_norm: float | None = None):
        self.run_dir = Path(run_dir)
        self.reporter = reporter_or_default(reporter)
        self.max_grad_norm = max_grad_norm
        self.records: list[dict] = []
        self.diverged: Finding | None = None
        self.findings: list[Finding] = []
        self._told: set[tuple[str, int | None]] = set()

    def _stop(self, control, step: int, what: str) -> None:
        self.diverged = Finding("nonfinite", "error", step, f"{what} (training diverged); stopped at step {step}",
                                "lower the learning rate (e.g. ÷10), keep max_grad_norm at 1.0 or lower, use bf16 "
                                "rather than fp16, and check the data for empty or extremely long samples")
        control.should_training_stop = True
        control.should_save = False  # never checkpoint broken weights; the last good checkpoint stays
        self.reporter.warning(f"diverged: {what} at step {step}; stopping without saving")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # A checkpoint is about to be written: make sure the weights are sound (a NaN may have entered between
        # two logged steps).
        if control.should_save and model is not None and self.diverged is None and not _weights_finite(model):
            self._stop(control, state.global_step, "weights contain NaN/Inf")
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
            losses = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
            grads = [(r["step"], r["grad_norm"]) for r in self.records if "grad_norm" in r]
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
        findings = diagnose(records, max_grad_norm=self.max_grad_norm)
        if self.diverged:  # non-finite values are not written to metrics.jsonl, so add the event itself
            findings = sort_findings([self.diverged] + [f for f in findings if f.code != "nonfinite"])
        findings = sort_findings(findings + _precision_note(args, findings))
        self.findings = findings
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
def _weights_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def restore_last_good(trainer, run_dir: Path, diverged: Finding, reporter: Reporter) -> Path:
    """After a NaN/Inf stop: load the newest checkpoint (all were written before the divergence) into the
    trainer's model, so the run folder gets sound weights. Without one, nothing sound exists: raise."""
    from ..training.checkpoints import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainingDiverged(f"training diverged at step {diverged.step} before the first checkpoint; "
                               f"no model was saved", where=str(run_dir),
                               hint=diverged.advice + f"; the curves are in {run_dir}/metrics.jsonl")
    load_checkpoint_weights(trainer, checkpoint)
    reporter.warning(f"restored the last good weights from {checkpoint}")
    return checkpoint


def card_section(findings: list[dict] | None, restored_from: str | None = None) -> list[str]:
    """Model-card lines for the training diagnostics."""
    if findings is None:
        return []
    lines = ["## Training diagnostics", ""]
    if restored_from:
        lines += [f"**Training diverged; the saved weights are those of `{restored_from}`, the last checkpoint "
                  f"before it.**", ""]
    if not findings:
        return lines + ["No problems found in the loss and gradient curves.", ""]
    return lines + [f"- **{f['code']}** ({f['severity']}{', step ' + str(f['step']) if f['step'] is not None else ''})"
                    f": {f['message']}. {f['advice']}" for f in findings] + [""]
