"""Model merging: combine fine-tuned experts without retraining, streamed tensor by tensor.

    from tunesmith.merging import load_config, run
    run(load_config("examples/merge_ties.yaml"))          # any method, or lora_to_base / lora_combine

Methods (one module each under `methods/`): linear, slerp, task_arithmetic, ties, dare_linear, dare_ties.
Adapters (`adapters.py`): fold a LoRA into its base; combine LoRAs by stacking ranks or by SVD.
`evaluate.py` scores a merge against its sources; `search.py` picks weights that maximise the worst task.
"""

from __future__ import annotations

from pathlib import Path

from ..reporting import Reporter
from .config import (AnyMergeConfig, LoraCombineConfig, LoraToBaseConfig, MergeConfig, load_config,
                     parse_config)
from .engine import MergeResult, merge
from .methods import available_methods, get_method


def run(config: AnyMergeConfig, output: str | Path | None = None, *, overwrite: bool = False,
        reporter: Reporter | None = None) -> Path:
    """Dispatch any merge config; returns the output folder."""
    if isinstance(config, LoraToBaseConfig):
        from .adapters import lora_to_base

        return lora_to_base(config, output, overwrite=overwrite, reporter=reporter)
    if isinstance(config, LoraCombineConfig):
        from .adapters import combine_loras

        return combine_loras(config, output, overwrite=overwrite, reporter=reporter)
    return merge(config, output, overwrite=overwrite, reporter=reporter).output


__all__ = ["MergeConfig", "LoraToBaseConfig", "LoraCombineConfig", "MergeResult", "available_methods",
           "get_method", "load_config", "merge", "parse_config", "run"]
