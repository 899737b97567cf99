"""The retain options as extra loss terms of a training step: the hook `TunesmithTrainer` calls after the task
loss, returning each term by name (loss_l2sp, loss_ewc, loss_kd), already weighted; the Trainer adds them to the
loss and logs each on its own."""

from __future__ import annotations

import torch

from ..speed.logits import HeadRows, next_token_mask
from .anchors import TrainableAnchor
from .ewc import ewc_low_rank, ewc_trainable
from .kd import Teacher, kd_sum, select
from .l2sp import l2sp_low_rank, l2sp_trainable
from .replay import REPLAY_MASK


class RetainTerms:
    """Weighted L2-SP, EWC and KD terms of one batch. `distance`: the method's retain_distance; `anchor`: θ₀ of the
    trained tensors (trainable distance); `fisher`: EWC's; `teacher`: KD's; `kd_on`: replay | train | both."""

    batch_keys = (REPLAY_MASK,)  # batch entries for these terms, not for the model

    def __init__(self, *, distance: str | None, l2sp: float = 0.0, ewc: float = 0.0, kd: float = 0.0,
                 temperature: float = 2.0, kd_on: str = "replay", anchor: TrainableAnchor | None = None,
                 fisher: dict[str, torch.Tensor] | None = None, teacher: Teacher | None = None):
        self.distance, self.l2sp, self.ewc, self.kd = distance, l2sp, ewc, kd
        self.temperature, self.kd_on = temperature, kd_on
        self.anchor, self.fisher, self.teacher = anchor, fisher, teacher

    @property
    def names(self) -> list[str]:
        return [f"loss_{name}" for name, weight in (("l2sp", self.l2sp), ("ewc", self.ewc), ("kd", self.kd))
                if weight > 0]

    def __call__(self, model, inputs: dict, student: HeadRows, extras: dict) -> dict[str, torch.Tensor]:
        """`inputs`: the batch as the student's forward got it; `student`: its scores at the trained positions;
        `extras`: this hook's batch entries (`batch_keys`)."""
        terms = {}
        if self.l2sp > 0:
            value = l2sp_low_rank(model) if self.distance == "low_rank" else l2sp_trainable(model, self.anchor)
            terms["loss_l2sp"] = self.l2sp * value
        if self.ewc > 0:
            value = ewc_low_rank(model, self.fisher) if self.distance == "low_rank" else \
                ewc_trainable(model, self.fisher, self.anchor)
            terms["loss_ewc"] = self.ewc / 2 * value
        if self.kd > 0:
            terms["loss_kd"] = self.kd * self.temperature ** 2 * self.kd_mean(model, inputs, student, extras)
        return terms

    def kd_mean(self, model, inputs: dict, student: HeadRows, extras: dict) -> torch.Tensor:
        """Mean KL per distilled token of this batch (0 when it holds none)."""
        keep = next_token_mask(inputs["labels"])
        student = student.at(keep)
        which = None
        if self.kd_on != "both":
            replay = extras.get(REPLAY_MASK)
            replay = (torch.zeros_like(keep) if replay is None else replay.to(keep.device))[keep]
            which = replay if self.kd_on == "replay" else ~replay
            if not which.any():
                return torch.zeros((), device=keep.device)
        teacher = self.teacher.rows(model, {k: v for k, v in inputs.items() if k != "labels"}).at(keep)
        if which is not None:
            student, teacher = select(student, which), select(teacher, which)
        if student.rows() == 0:
            return torch.zeros((), device=keep.device)
        return kd_sum(student, teacher, self.temperature) / student.rows()
