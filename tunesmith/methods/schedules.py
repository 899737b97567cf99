"""The TrainerCallbacks that methods add to a run (`Method.callbacks`): staged training and AdaLoRA's rank budget.

Kept apart from the method modules because importing transformers' TrainerCallback loads torch and the Trainer (4-5 s):
the method modules are imported to validate a config, which must stay instant; these only when a run trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import TrainerCallback


class StageSchedule(TrainerCallback):
    """Calls `enter(stage)` at the first step of each stage: stage 1 until `boundaries[0]`, 2 until `boundaries[1]`,
    then 3; boundaries in `unit`: "steps", "epochs" or "fraction" (of the run's steps)."""

    def __init__(self, boundaries: Sequence[float], unit: str, enter: Callable[[int], None]):
        self.boundaries, self.unit, self.enter, self.stage = boundaries, unit, enter, 0

    def position(self, state) -> float:
        if self.unit == "steps":
            return state.global_step
        if self.unit == "epochs":
            return state.epoch or 0.0
        return state.global_step / max(state.max_steps, 1)

    def on_step_begin(self, args, state, control, **kwargs):
        stage = 1 + sum(self.position(state) >= boundary for boundary in self.boundaries)
        if stage != self.stage:
            self.stage = stage
            self.enter(stage)


class AllocateRankBudget(TrainerCallback):
    """Runs AdaLoRA's importance scoring and rank masking after each optimizer step (gradients still present)."""

    def __init__(self, model):
        self.model = model

    def on_optimizer_step(self, args, state, control, **kwargs):
        # global_step is incremented after this event, so +1 gives the step that just ran.
        self.model.base_model.update_and_allocate(state.global_step + 1)
