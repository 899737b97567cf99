"""Which checkpoint a resumed run continues from, and which one a failed run falls back to.

transformers writes a checkpoint's files one after another and `trainer_state.json` last, so a run killed while
saving leaves a folder without a readable state. Such folders are skipped: only complete checkpoints count.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..compat import load_checkpoint_weights
from ..diagnostics.callback import TrainingDiverged, weights_sound
from ..diagnostics.findings import Finding
from ..reporting import Reporter
from .callbacks import read_metrics

CHECKPOINT_DIR = "checkpoints"
_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def is_complete(folder: Path) -> bool:
    state = folder / "trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    match = _PATTERN.match(folder.name)
    has_weights = any(folder.glob("*.safetensors"))
    return bool(match) and data.get("global_step") == int(match.group(1)) and has_weights


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PATTERN.match(p.name)) and p.is_dir()]
    return [(step, folder) for step, folder in sorted(found) if is_complete(folder)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    complete = complete_checkpoints(run_dir)
    return complete[-1][1] if complete else None


def checkpoint_step(folder: Path) -> int:
    return int(_PATTERN.match(folder.name).group(1))


def restore_last_good(trainer, run_dir: Path, stopped: Finding, reporter: Reporter) -> Path:
    """After a divergence or collapse stopped training: of the complete checkpoints written before it, load the one
    with the lowest logged training loss whose weights are sound, so the run folder gets the best sound weights.
    Without one nothing sound exists: raise, with nothing saved."""
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}

    def logged_loss(step: int) -> float:
        before = [s for s in losses if s <= step]
        return losses[max(before)] if before else math.inf

    candidates = [(logged_loss(step), -step, folder) for step, folder in complete_checkpoints(run_dir)
                  if step < (stopped.step or math.inf)]
    for loss, _, checkpoint in sorted(candidates):
        load_checkpoint_weights(trainer, checkpoint)
        if weights_sound(trainer.model):
            reporter.warning(f"restored the best sound weights from {checkpoint} (training loss {loss:.4g})")
            return checkpoint
    raise TrainingDiverged(f"training stopped at step {stopped.step} ({stopped.code}) and no sound checkpoint was "
                           f"written before it; no model was saved", where=str(run_dir),
                           hint=stopped.advice + f"; the curves are in {run_dir}/metrics.jsonl")
