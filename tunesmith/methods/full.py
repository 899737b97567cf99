"""Full fine-tuning: every weight is trained and the run saves a complete model."""

from typing import Literal

from pydantic import Field

from ..errors import ConfigError
from .base import Method, MethodOptions
from .registry import register


class FullOptions(MethodOptions):
    name: Literal["full"] = "full"
    freeze_embeddings: bool = Field(False, description="Keep input embeddings fixed (saves optimizer memory)")


@register
class FullMethod(Method):
    name = "full"
    description = "Train every parameter; saves a full model"
    Options = FullOptions
    is_peft = False
    retain_distance = "trainable"
    artifact = "full"

    def validate(self, opts, full_config):
        if full_config.model.quantization != "none":
            raise ConfigError("full fine-tuning cannot update quantised weights",
                              where="model.quantization", hint="use method: qlora, or model.quantization: none")

    def prepare(self, model, opts, *, gradient_checkpointing, total_steps=None):
        for param in model.parameters():
            param.requires_grad_(True)
        if opts.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model
