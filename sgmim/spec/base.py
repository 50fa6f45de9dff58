"""What every section of the job spec shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, StrictFloat, StrictInt, WithJsonSchema

from sgmim.spec.timm_names import TIMM_NAMES


class StrictModel(BaseModel):
    """Base for every spec model: unknown keys are errors, not silently dropped, and values keep
    their JSON/YAML types: `"32"` or `true` is not an integer, `0` is not a boolean (an integer
    is a number, though)."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=(), strict=True)


# Sane upper bounds: far beyond any real run, short of values that overflow or never end.
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000
MAX_IMAGES = 100_000_000
MAX_SEED = 2**32 - 1

# Pairs arrive as JSON/YAML lists: the container is lax (list -> tuple), the items strict.
IntPair = Annotated[tuple[StrictInt, StrictInt], Strict(False)]
FloatPair = Annotated[tuple[StrictFloat, StrictFloat], Strict(False)]

_KNOWN_TIMM_NAMES = frozenset(TIMM_NAMES)


def _known_timm_name(name: str) -> str:
    if name not in _KNOWN_TIMM_NAMES:
        raise ValueError(f"{name!r} is not a Swin, SwinV2 or ViT model of timm's registry "
                         "(e.g. swin_base_patch4_window7_224, swinv2_base_window8_256, vit_base_patch16_224)")
    return name


TimmName = Annotated[
    str,
    AfterValidator(_known_timm_name),
    WithJsonSchema({"type": "string", "enum": list(TIMM_NAMES)}),
]


class FieldError(ValueError):
    """Raised by a model validator to name the field a cross-field rule is about."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(message)
