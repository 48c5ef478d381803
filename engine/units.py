"""Parsing the quantities users type: memory sizes, batch-size lists, counts. Printing is in :mod:`engine.format`."""

from __future__ import annotations

import re

from engine.errors import UsageError

__all__ = ["parse_size", "parse_batch_sizes", "parse_positive_int"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
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


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"32,128,512"`` -> (32, 128, 512); each a positive integer."""
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    if not parts:
        raise UsageError("--batch-sizes is empty: give a comma-separated list such as 32,128,512")
    return tuple(sorted({parse_positive_int(p, "batch size") for p in parts}))
