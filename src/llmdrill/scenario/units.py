"""The one spelling of durations, sizes and fractions in scenario files.

Durations are strings with a unit: ``500ms``, ``20s``, ``2m``, ``1h`` (``1.5s`` allowed).
Sizes are strings with a binary unit: ``512B``, ``64KiB``, ``1MiB``, ``1GiB``.
Fractions (rates, tolerances) are plain numbers between 0 and 1: ``0.2`` means 20%.
A bare number where a duration is expected is an error, because ``10`` could mean
seconds or milliseconds and a drill must never guess.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)\s*$")
_SIZE_FACTORS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_duration(value: Any) -> float:
    """Seconds from a duration string; raises ValueError with a helpful message."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        raise ValueError(
            f"a duration needs a unit: write '{value}s' or '{value}ms' "
            "(units: ms, s, m, h)"
        )
    if not isinstance(value, str):
        raise ValueError("a duration is a string with a unit, e.g. '20s' or '500ms'")
    match = _DURATION.match(value)
    if not match:
        if value.strip().startswith("-") and _DURATION.match(value.strip()[1:]):
            raise ValueError(f"a duration cannot be negative, got '{value}'")
        raise ValueError(
            f"'{value}' is not a duration; write a number and a unit, e.g. '20s', "
            "'500ms', '2m' (units: ms, s, m, h)"
        )
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{round(seconds, 3):g}s"


def parse_size(value: Any) -> int:
    """Bytes from a size string such as '64KiB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        raise ValueError(
            f"a size needs a unit: write e.g. '{value}B' or '{value}KiB' "
            "(units: B, KiB, MiB, GiB)"
        )
    if not isinstance(value, str):
        raise ValueError(
            "a size is a whole number and a unit, e.g. '64KiB' (units: B, KiB, MiB, GiB)"
        )
    match = _SIZE.match(value)
    if not match:
        raise ValueError(
            f"'{value}' is not a size; write a whole number and a unit, e.g. '64KiB' "
            "(units: B, KiB, MiB, GiB)"
        )
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2)]


def _fraction(value: Any) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        raise ValueError(
            f"write fractions as a number between 0 and 1 (e.g. 0.2 for 20%), not '{value}'"
        )
    if isinstance(value, str):
        # A value from ${VAR} interpolation arrives as text.
        try:
            value = float(value)
        except ValueError:
            raise ValueError(
                f"a fraction is a number between 0 and 1, e.g. 0.05, not '{value}'"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a fraction is a number between 0 and 1, e.g. 0.05")
    if not 0 <= value <= 1:
        raise ValueError(f"{value} is not between 0 and 1 (write 0.2 for 20%)")
    return float(value)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$",
            "description": "A duration with a unit: ms, s, m or h (e.g. '20s').",
        }
    ),
]
"""A duration in seconds once parsed."""

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(B|KiB|MiB|GiB)$",
            "description": "A size with a binary unit: B, KiB, MiB or GiB (e.g. '64KiB').",
        }
    ),
]
"""A size in bytes once parsed."""

Fraction = Annotated[
    float,
    BeforeValidator(_fraction),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "A fraction between 0 and 1 (0.2 means 20%).",
        }
    ),
]

PositiveInt = Annotated[int, Field(gt=0)]
