"""Parsing and printing the quantities users type: memory sizes and batch-size lists."""

from __future__ import annotations

import math
import re

from engine.errors import UsageError

__all__ = ["parse_size", "format_bytes", "format_duration", "parse_batch_sizes", "parse_positive_int"]

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


def format_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """12.3 s, 4m 05s, 2h 03m, 3d 04h: short enough for a table cell; "—" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


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
