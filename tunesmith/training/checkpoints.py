"""Which checkpoint a resumed run continues from.

transformers writes a checkpoint's files one after another and `trainer_state.json` last, so a run killed while
saving leaves a folder without a readable state. Such folders are skipped: only complete checkpoints count.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
