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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PATTERN.match(p.name)) and p.is_dir()]
    for _, folder in sorted(found, reverse=True):
        if is_complete(folder):
            return folder
    return None
