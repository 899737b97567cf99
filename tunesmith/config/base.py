"""Shared pydantic base: unknown keys are errors, so a typo never silently becomes a default."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
