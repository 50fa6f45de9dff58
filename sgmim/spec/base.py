"""What every section of the job spec shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for every spec model: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class FieldError(ValueError):
    """Raised by a model validator to name the field a cross-field rule is about."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(message)
