"""Which TRL trainer runs each preference task, and the `preference:` options it is given (TRL computes the
losses; tunesmith only passes the options through)."""

from __future__ import annotations

import importlib

from ...config.schema import RunConfig
from ...errors import ConfigError

# task -> (module, trainer, config). SimPO is TRL's CPO trainer with loss_type "simpo"; ORPO and CPO live in
# trl.experimental since trl 1.0.
TRAINERS = {
    "dpo": ("trl", "DPOTrainer", "DPOConfig"),
    "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig"),
    "simpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig"),
    "kto": ("trl", "KTOTrainer", "KTOConfig"),
    "reward": ("trl", "RewardTrainer", "RewardConfig"),
}
SIMPO_BETA = 2.0  # the SimPO paper's default reward scale; CPOConfig's own default (0.1) is CPO's


def trl_classes(task: str) -> tuple[type, type]:
    module, trainer, config = TRAINERS[task]
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"task {task} trains with TRL, which is not installed or too old ({exc})", where="task",
                          hint="pip install 'tunesmith[trl]' (trl >= 1.16)") from None
    return getattr(loaded, trainer), getattr(loaded, config)


def trl_options(cfg: RunConfig) -> dict:
    """The task's TRL config fields from `preference:` (and data.max_length: each sequence's length)."""
    p, task = cfg.preference, cfg.task
    options: dict = {"max_length": cfg.data.max_length}
    if p.beta is not None and task != "reward":
        options["beta"] = p.beta
    if task == "dpo":
        options.update(loss_type=p.loss_type, loss_weights=p.loss_weights, label_smoothing=p.label_smoothing,
                       precompute_ref_log_probs=p.precompute_ref_log_probs)
    elif task == "simpo":
        options.update(loss_type="simpo", simpo_gamma=p.simpo_gamma, cpo_alpha=p.cpo_alpha,
                       label_smoothing=p.label_smoothing, beta=p.beta or SIMPO_BETA)
    elif task == "kto":
        # KTO estimates its KL term from the other examples of a batch in a fixed order (the data is shuffled
        # when it is mixed), so batches are drawn sequentially, as TRL requires.
        options.update(desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight,
                       precompute_ref_log_probs=p.precompute_ref_log_probs, train_sampling_strategy="sequential")
    elif task == "reward":
        options["center_rewards_coefficient"] = p.center_rewards_coefficient
    if task in ("dpo", "orpo", "simpo", "reward"):
        # Rows of prompt/chosen/rejected text have no `length` column to group by.
        options["train_sampling_strategy"] = "random"
    return options
