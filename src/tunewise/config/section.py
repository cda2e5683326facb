"""What every ``project.yaml`` section shares: unknown keys, NaN and huge numbers are refused."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

# The largest magnitude any number in project.yaml may have. No count, rate or price here comes
# near it; past it a value is a typo (1e400 reads as inf) that would fail far from the file, after
# the model loads (an OverflowError in the step count), or quietly (a learning rate of inf).
MAX_MAGNITUDE = 10**12


def _too_large(value: Any) -> float | int | None:
    """The first number in ``value`` (a number, list or mapping of them) past MAX_MAGNITUDE."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if abs(value) > MAX_MAGNITUDE else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return next((big for v in value if (big := _too_large(v)) is not None), None)
    return None


class _Section(BaseModel):
    # Unknown keys are typos, and a typo in a training config silently costs a day. NaN and inf
    # are never meant: refused for every float field (allow_inf_nan), huge numbers just below.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _not_huge(cls, v: Any) -> Any:
        big = _too_large(v)
        if big is not None:
            # An int may be too large for a float, or for str() (4300 digits): say its size.
            shown = (
                f"{big:.3g}"
                if isinstance(big, float)
                else f"about {'-' if big < 0 else ''}10^{abs(big).bit_length() * 0.30103:.0f}"
            )
            raise PydanticCustomError(
                "number_too_large",
                "{shown} is too large: numbers here are at most 1e12 in size",
                {"shown": shown},
            )
        return v
