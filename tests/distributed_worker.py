"""One rank of the multi-process tests (tests/test_distributed.py): `tunesmith train` as the CLI runs it, with two
test hooks on the Trainer's step: each rank records the samples of its batches, and one rank can be killed at a
step (SIGKILL: no clean-up, as when a machine or the OOM killer takes a process).

    python tests/distributed_worker.py RECORD_DIR KILL_RANK KILL_STEP -- TRAIN ARGS...   (KILL_RANK -1: none)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def recording_step(record_dir: Path, kill_rank: int = -1, kill_step: int = 0):
    """The Trainer's step, appending (step, this batch's token rows) to RECORD_DIR/rank{RANK}.jsonl first. In a
    test process, set it with monkeypatch so that later tests get the Trainer's own step back."""
    from tunesmith.training.trainer import TunesmithTrainer

    rank = int(os.environ.get("RANK", 0))
    original = TunesmithTrainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        step = self.state.global_step + 1
        if rank == kill_rank and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        ids = inputs["input_ids"].tolist()
        masks = inputs["attention_mask"].tolist() if "attention_mask" in inputs else [[1] * len(row) for row in ids]
        rows = [[t for t, keep in zip(row, mask) if keep] for row, mask in zip(ids, masks)]
        with open(record_dir / f"rank{rank}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "rows": rows}) + "\n")
        return original(self, model, inputs, *args, **kwargs)

    return training_step


def install(record_dir: Path, kill_rank: int = -1, kill_step: int = 0) -> None:
    """Patch the Trainer's step for this (worker) process: see `recording_step`."""
    from tunesmith.training.trainer import TunesmithTrainer

    TunesmithTrainer.training_step = recording_step(record_dir, kill_rank, kill_step)


if __name__ == "__main__":
    split = sys.argv.index("--")
    record, kill_rank, kill_step = sys.argv[1:split]
    install(Path(record), int(kill_rank), int(kill_step))
    from tunesmith.cli.main import main

    sys.exit(main(sys.argv[split + 1:]))
