"""Training recipes, one module each, read top to bottom: `sft.py` (instruction and chat data), `classification.py`
(labelled texts), `preference.py` (DPO, ORPO, SimPO, KTO), `reward.py` (reward models), `grpo.py` (GRPO). Each runs inside the shared skeleton `tunesmith.training.run.TrainingRun`.

`train(cfg)` runs the recipe of `cfg.task`; a new task adds a module here and an entry in `RECIPES`.
"""

from __future__ import annotations

import importlib

from ..config.schema import RunConfig
from ..reporting import Reporter

# task -> "module:function", imported on use (a recipe pulls in the Trainer).
RECIPES = {"sft": "sft:train_sft", "classification": "classification:train_classification",
           **{task: "preference:train_preference" for task in ("dpo", "orpo", "simpo", "kto")},
           "reward": "reward:train_reward", "grpo": "grpo:train_grpo"}


def train(cfg: RunConfig, *, resume: bool = False, reporter: Reporter | None = None,
          extra_callbacks: list | None = None):
    """Train as `cfg` says; the result is saved in `training.output_dir`. Returns a `TrainResult`."""
    module, function = RECIPES[cfg.task].split(":")
    recipe = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return recipe(cfg, resume=resume, reporter=reporter, extra_callbacks=extra_callbacks)
