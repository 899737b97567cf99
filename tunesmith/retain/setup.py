"""A run's retain options made ready: replay in the data, θ₀, the Fisher and the teacher taken from the model the
run starts from. The SFT recipe calls `add_replay` on its data and `prepare_terms` once the model has its method
and before the speed plan's pieces go in and before the Trainer loads a checkpoint, so that everything here is of
the starting model, on a fresh run and on a resumed one alike."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config.schema import RunConfig
from ..reporting import Reporter
from .anchors import TrainableAnchor
from .ewc import FISHER_FILE, empirical_fisher, fisher_rows, load_or_compute_fisher
from .kd import Teacher
from .replay import REPLAY_COLUMN, ReplayMaskCollator, encode_retain_data
from .terms import RetainTerms

#: Beside the run's checkpoints: what a resumed run reads back instead of recomputing.
RETAIN_DIR = "retain"


def prepare_terms(cfg: RunConfig, model, method, tokenizer, template, *, run_dir: Path, resume: bool,
                  reporter: Reporter, compute_dtype: torch.dtype | None = None,
                  device: str = "cpu") -> RetainTerms | None:
    """The loss terms of `cfg.retain` for `model` (None when no term has a weight); `compute_dtype`: the training
    autocast's."""
    retain = cfg.retain
    if retain is None or not {"l2sp", "ewc", "kd"} & set(retain.active()):
        return None
    distance = method.retain_distance
    teacher = Teacher(model, adapters_off_is_start=method.adapters_off_is_start, compute_dtype=compute_dtype) \
        if retain.kd.weight > 0 else None
    anchor = None
    if distance == "trainable" and (retain.l2sp.weight > 0 or retain.ewc.weight > 0):
        anchor = TrainableAnchor(model, source=teacher.copy if teacher is not None else None)
    fisher = None
    if retain.ewc.weight > 0:
        computed: list[int] = []  # the samples, when computed here rather than read back

        def compute():
            model.to(device)  # where the Trainer would put it anyway: the Fisher's backward passes run there
            rows = encode_retain_data(retain.ewc_data(), tokenizer, template, cfg.data)
            rows = fisher_rows(rows, retain.ewc.samples, cfg.data.seed)
            computed.append(len(rows))
            return empirical_fisher(model, rows, distance, reporter)

        fingerprint = {"model": cfg.model.name_or_path, "method": cfg.method.model_dump(mode="json"),
                       "data": [spec.model_dump(mode="json") for spec in retain.ewc_data()],
                       "samples": retain.ewc.samples, "seed": cfg.data.seed, "max_length": cfg.data.max_length}
        fisher = load_or_compute_fisher(run_dir / RETAIN_DIR, fingerprint, reuse=resume, compute=compute)
        where = run_dir / RETAIN_DIR / FISHER_FILE
        reporter.info(f"EWC: Fisher of the starting model on {computed[0]} samples, saved to {where}" if computed
                      else f"EWC: Fisher read back from {where}")
    terms = RetainTerms(distance=distance, l2sp=retain.l2sp.weight, ewc=retain.ewc.weight, kd=retain.kd.weight,
                        temperature=retain.kd.temperature, kd_on=retain.kd.on, anchor=anchor, fisher=fisher,
                        teacher=teacher)
    reporter.info(f"retain: {', '.join(retain.active())} (logged as {', '.join(terms.names)} beside loss_task)")
    return terms


def with_replay_mask(collator, train_dataset, *, packing: bool, terms: RetainTerms | None):
    """The collator, reading past the replay column; marking replay tokens when there are loss terms to read them."""
    if REPLAY_COLUMN not in train_dataset.column_names:
        return collator
    return ReplayMaskCollator(collator, packing, mark=terms is not None)
