"""What every fine-tuning method provides. One subclass per method, one module each."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from ..config.base import StrictModel


class MethodOptions(StrictModel):
    """Options of a method; subclasses add their own fields. `name` selects the method."""

    name: str


class Method:
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    #: True when the run saves a PEFT adapter rather than the full model.
    is_peft: ClassVar[bool] = True

    def load_kwargs(self, opts: Any, compute_dtype: torch.dtype) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. a quantisation config)."""
        return {}

    def prepare(self, model: torch.nn.Module, opts: Any, *, gradient_checkpointing: bool) -> torch.nn.Module:
        """Return the model ready for training with only this method's parameters trainable."""
        raise NotImplementedError

    def validate(self, opts: BaseModel, full_config: Any) -> None:
        """Raise ConfigError for combinations this method cannot run."""
        from ..errors import ConfigError

        if full_config.model.quantization != "none":
            raise ConfigError(f"method '{self.name}' does not train on a quantised base",
                              where="model.quantization", hint="use method: qlora for a 4-bit base")
