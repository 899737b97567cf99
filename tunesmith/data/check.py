"""A first read of a run's local data files, before anything heavy loads.

On a CPU `tunesmith train` starts itself again with its allocator preloaded (speed/cpu/allocator.py), and the
restarted process loads torch, transformers and the model before it reads the data: a malformed file was reported
after 8-16 s. Read here first, in the process that has loaded nothing, it is reported within a second. The run reads
the files again (this check keeps nothing), so files over CHECK_MAX_BYTES in all are left to the run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..config.schema import PREFERENCE_TASKS, RunConfig
from .dataset import load_samples
from .preference import load_preference
from .readers import read_records

CHECK_MAX_BYTES = 64 << 20  # Alpaca's 52k records are 22 MB; a second read of that costs about 0.3 s


def check_data_files(cfg: RunConfig) -> None:
    """Raise the run's own DataError for the first unreadable file or record among the local training and validation
    files: syntax for every task, and the records' fields where the task's reader needs nothing heavy (sft and the
    preference tasks; classification and grpo records are checked when the run reads them)."""
    specs = [spec for spec in (*cfg.data.train, *cfg.data.validation) if Path(spec.path).is_file()]
    if sum(Path(spec.path).stat().st_size for spec in specs) > CHECK_MAX_BYTES:
        return
    for spec in specs:
        if cfg.task in PREFERENCE_TASKS:
            load_preference(spec, unpaired=cfg.task == "kto")
        elif cfg.task == "sft":
            with warnings.catch_warnings():  # its warnings (unfilled placeholders) come once, from the run's read
                warnings.simplefilter("ignore")
                load_samples(spec)
        else:
            read_records(spec.path, spec.split)
