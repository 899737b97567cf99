"""What every fine-tuning method provides. One subclass per method, one module each.

Method modules import torch, PEFT and transformers inside the functions that use them: validating a config imports
every method (for its options), and that must not load the training libraries (4-5 s;
tests/test_config_cli.py::test_validating_every_example_config_loads_no_training_library).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from ..config.base import StrictModel

if TYPE_CHECKING:
    import torch


class MethodOptions(StrictModel):
    """Options of a method; subclasses add their own fields. `name` selects the method."""

    name: str


class Method:
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    #: True when the run saves a PEFT adapter rather than the full model.
    is_peft: ClassVar[bool] = True
    #: What retain.l2sp / retain.ewc measure the distance from the starting model on (tunesmith/retain/):
    #: "trainable" (each trained tensor against its value at the start: full, freeze, IA3's scales, which start at
    #: 1, the identity), "low_rank" (the LoRA update (α/r)·B·A, zero at the start), or None where neither is the
    #: model's change (virtual tokens, randomly initialised bottlenecks, DoRA's normalised weight, PiSSA's moved base).
    retain_distance: ClassVar[str | None] = None
    #: Whether the model with its adapters disabled is the model the run starts from (retain.kd's teacher then
    #: costs no copy); not where the method moves the base weights at the start (PiSSA, OLoRA).
    adapters_off_is_start: ClassVar[bool] = True
    #: False where the student's logits do not line up with the teacher's token by token (virtual tokens).
    retain_kd: ClassVar[bool] = True
    #: What the run folder holds: "adapter" (PEFT), "full" (a whole model) or "bottleneck" (tunesmith adapters).
    artifact: ClassVar[str] = "adapter"
    #: False when the method reads frozen base weights outside their layer's matmul (DoRA's weight norm), so they
    #: must keep the loaded precision (training/frozen_base.py).
    frozen_weights_in_matmuls_only: ClassVar[bool] = True

    def bf16_autocast_safe(self, opts: Any) -> bool:
        """False when bf16 autocast measurably spoils this method's gradients (`benchmarks/bf16_gradients.py`);
        then `model.dtype: auto` trains it in fp32 on CPU, where bf16 is tunesmith's speed choice
        (models/loading.py), and a forced half precision is warned about."""
        return True

    def load_kwargs(self, opts: Any, compute_dtype: torch.dtype) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. a quantisation config)."""
        return {}

    def prepare(self, model: torch.nn.Module, opts: Any, *, gradient_checkpointing: bool,
                total_steps: int | None = None) -> torch.nn.Module:
        """Return the model ready for training with only this method's parameters trainable."""
        raise NotImplementedError

    def initialise(self, model: torch.nn.Module, opts: Any, tokenizer: Any) -> None:
        """Initialisation that needs the tokenizer (P-tuning v2's prefixes from a text), after `prepare`, before
        training. The planners, which only count and time, skip it."""

    def callbacks(self, model: torch.nn.Module, opts: Any) -> list:
        """TrainerCallbacks the method needs during training (rank re-allocation, schedules...)."""
        return []

    def optimizer(self, model: torch.nn.Module, opts: Any, args: Any) -> torch.optim.Optimizer | None:
        """A custom optimizer (e.g. per-group learning rates), or None for the Trainer's own."""
        return None

    def save(self, model: torch.nn.Module, opts: Any, path: Path) -> None:
        """Write the trained artifact into `path`."""
        model.save_pretrained(path)

    def load(self, base: torch.nn.Module, run_dir: Path, meta: dict) -> torch.nn.Module:
        """Rebuild the trained model for inference from its base and the run folder."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base, run_dir)

    def validate(self, opts: BaseModel, full_config: Any) -> None:
        """Raise ConfigError for combinations this method cannot run."""
        from ..errors import ConfigError

        if full_config.model.quantization != "none":
            raise ConfigError(f"method '{self.name}' does not train on a quantised base",
                              where="model.quantization", hint="use method: qlora for a 4-bit base")
