"""Parsing the quantities users type: memory sizes, batch-size lists, counts. Printing is in :mod:`largestep.format`."""

from __future__ import annotations

import math
import re
from typing import Iterable

from .errors import UsageError

__all__ = [
    "parse_size",
    "parse_batch_sizes",
    "parse_positive_int",
    "parse_float",
    "parse_count",
    "parse_fractions",
    "check_int",
    "check_number",
    "check_switch",
    "INT32_MAX",
    "INT64_MAX",
]

# The largest values the database's columns hold: a number is checked against the column it lands
# in where it enters (CLI, dashboard, Python API), so a job never records what the store refuses.
INT32_MAX = 2**31 - 1  # INTEGER columns: batch sizes, seeds, accumulate
INT64_MAX = 2**63 - 1  # BIGINT columns: samples, bytes

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"12GiB"`` -> 12884901888. Decimal units (GB) are powers of ten; binary (GiB, G) of two."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}: give a number with a unit, such as 512MiB, 12GiB or 8GB")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise UsageError(f"bad size {text!r}: it must be at least one byte")
    return int(value)


def parse_positive_int(text: str | int, what: str = "value") -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise UsageError(f"{what} must be a positive integer, not {text!r}") from None
    if value <= 0:
        raise UsageError(f"{what} must be a positive integer, not {text!r}")
    return value


def parse_batch_sizes(text: "str | Iterable[int]") -> tuple[int, ...]:
    """``"32,128,512"`` (or ``[32, 128, 512]``, from Python) -> (32, 128, 512); each a positive integer."""
    parts = _listed(text)
    if not parts:
        raise UsageError("--batch-sizes is empty: give a comma-separated list such as 32,128,512")
    return tuple(sorted({parse_positive_int(p, "batch size") for p in parts}))


def parse_float(text: "str | float | None", what: str) -> float | None:
    """A number as typed (or given from Python); None stays None. Its range is the config's to check."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise UsageError(f"{what} must be a number, not {text!r}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, not {text!r}") from None


def parse_count(text: "str | int", what: str) -> int:
    """A whole number of at least 0, as typed (or given from Python)."""
    if isinstance(text, bool):
        value = -1
    elif isinstance(text, int):
        value = text
    else:
        try:
            value = int(str(text))
        except ValueError:
            value = -1
    if value < 0:
        raise UsageError(f"{what} must be a whole number of at least 0 (or auto), not {text!r}")
    return value


def _listed(value: object) -> list:
    """A comma-separated list as typed, or the items of a list given from Python (one item when not a list)."""
    if isinstance(value, str):
        return [p for p in value.replace(" ", "").split(",") if p]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def parse_fractions(text: "str | Iterable[float]", what: str = "--at") -> tuple[float, ...]:
    """``"0,0.25,0.5,1"`` (or ``[0, 0.25, 0.5, 1]``, from Python) -> (0.0, 0.25, 0.5, 1.0): distinct numbers between
    0 and 1, sorted."""
    parts = _listed(text)
    if not parts:
        raise UsageError(f"{what} is empty: give fractions between 0 and 1 such as 0,0.25,0.5,1")
    values = set()
    for part in parts:
        try:
            if isinstance(part, bool):
                raise ValueError(part)
            value = float(part)
        except (TypeError, ValueError):
            raise UsageError(f"{what} takes fractions between 0 and 1 such as 0,0.25,0.5,1, not {part!r}") from None
        if not 0 <= value <= 1:  # also refuses NaN
            raise UsageError(f"{what} takes fractions between 0 and 1, not {part}")
        values.add(value)
    return tuple(sorted(values))


def check_int(value: object, what: str, low: int = 1, high: int = INT32_MAX) -> int:
    """``value`` as an int in [low, high], else a UsageError naming the field and the range."""
    kind = "a positive integer" if low == 1 else "a whole number"
    if isinstance(value, bool) or not isinstance(value, int) or (low == 1 and value < 1):
        raise UsageError(f"{what} must be {kind}, not {value!r}")
    if not low <= value <= high:
        raise UsageError(f"{what} must be between {low:,} and {high:,}, not {value:,}")
    return value


def check_number(
    value: object, what: str, low: float | None = None, high: float | None = None, low_inclusive: bool = False
) -> float:
    """``value`` as a finite float above ``low`` (or at it, if inclusive) and at most ``high``.

    NaN and infinity are refused everywhere: a job given one starts and then fails, or a
    comparison answers nonsense.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number, not {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low:
        bound = (
            "a positive number"
            if low == 0 and not low_inclusive
            else f"at least {low:g}"
            if low_inclusive
            else f"above {low:g}"
        )
        raise UsageError(f"{what} must be {bound}, not {value:g}")
    if high is not None and value > high:
        raise UsageError(f"{what} must be at most {high:g}, not {value:g}")
    return float(value)


def check_switch(value: object, what: str) -> bool | None:
    """``value`` as a setting that is on (True), off (False) or left as it is (None), else a UsageError."""
    if value is not None and not isinstance(value, bool):
        raise UsageError(f"{what} must be true, false or unset, not {value!r}")
    return value
