"""Numbers as people read them: every formatting helper of the CLI, the dashboard and the report.

Each returns a short string, and a dash when the value is unknown (None or not finite), so a
table cell never shows "None" or "nan".
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = [
    "DASH",
    "format_bytes",
    "byte_unit",
    "format_duration",
    "format_ms",
    "format_si",
    "grouped",
    "format_number",
    "format_count",
    "short_count",
    "mean_std",
    "plural",
    "significant",
    "known",
    "format_pct",
    "format_background_load",
    "unreadable_runs",
    "format_math",
]

DASH = "—"


def known(value) -> bool:
    """A finite number (not None, NaN or infinite)."""
    try:
        return value is not None and math.isfinite(value)
    except TypeError:
        return False


def format_bytes(n: float | int | None) -> str:
    """1536 -> "1.5 KiB"; binary units, one decimal."""
    if not known(n):
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def byte_unit(largest: float | None) -> tuple[float, str]:
    """The divisor and name of the binary unit that shows ``largest`` bytes as a readable number."""
    for divisor, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest is not None and largest >= divisor:
            return float(divisor), name
    return 1.0, "B"


def format_duration(seconds: float | None) -> str:
    """12.3 s, 4m 05s, 2h 03m, 3d 04h: short enough for a table cell."""
    if not known(seconds):
        return DASH
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


def format_ms(seconds: float | None) -> str:
    """0.01234 -> "12.34": seconds shown as milliseconds with two decimals."""
    return f"{seconds * 1e3:.2f}" if known(seconds) else DASH


def format_si(value: float | None, unit: str) -> str:
    """1.23e9, "FLOP/s" -> "1.23 GFLOP/s"."""
    if not known(value):
        return DASH
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def grouped(value: float | None, digits: int = 0) -> str:
    """12345.6 -> "12,346": thousands grouped, a fixed number of decimals."""
    return f"{value:,.{digits}f}" if known(value) else DASH


def format_number(value: float | None) -> str:
    """A table cell: 281,246 rather than 2.812e+05; 0.0534 and 15.96 at four significant figures."""
    if not known(value):
        return DASH
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def format_count(value: float | None) -> str:
    """1,234,567 / 42.5 / 0.123: a count per day, readable at any size."""
    if not known(value):
        return DASH
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def short_count(n: float) -> str:
    """8, 512, 4k, 64k, 1M: a batch size short enough for an axis tick."""
    n = int(n)
    for divisor, suffix in ((2**20, "M"), (2**10, "k")):
        if n >= divisor and n % divisor == 0:
            return f"{n // divisor}{suffix}"
    return str(n)


def mean_std(stats: dict | None, digits: int = 3, unit: str = "") -> str:
    """{"mean": 12.34, "std": 1.234} -> "12.3 ± 1.2": the mean to ``digits`` significant digits, the spread
    to two; a dash with no mean."""
    if not stats or not known(stats.get("mean")):
        return DASH
    text = f"{stats['mean']:.{digits}g}"
    if known(stats.get("std")):
        text += f" ± {stats['std']:.2g}"
    return text + unit


def format_pct(value: float | None) -> str:
    """12.34 -> "12%": a percentage (0 to 100) to the nearest point."""
    return f"{value:.0f}%" if known(value) else DASH


def format_background_load(cpu_pct: float | None, gpu_processes: float | None = None) -> str:
    """A run's background load: "45% CPU" busy with other processes, "+ 2 on the GPU" where others shared it."""
    if not known(cpu_pct) and not known(gpu_processes):
        return DASH
    text = f"{format_pct(cpu_pct)} CPU"
    if known(gpu_processes) and gpu_processes:
        text += f" + {int(gpu_processes)} on the GPU"
    return text


def unreadable_runs(run_ids: Iterable[str]) -> str | None:
    """What a listing says under its table about runs set aside at ingest (listed FAILED, their numbers
    dashes), or None when there are none: the CLI's `runs` and the Runs page."""
    ids = list(run_ids)
    if not ids:
        return None
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    return (
        f"{plural(len(ids), 'run')} could not be read ({shown}): listed as FAILED; `largestep doctor` says "
        f"why and what to do"
    )


def format_math(settings: dict | None) -> str:
    """TF32 and cuDNN as a profile or run recorded them (largestep.measure.devices.math_settings), in one line:
    "TF32 on (matmul and cuDNN), float32 matmul precision high, cuDNN autotuning off"."""
    if not settings:
        return DASH
    matmul, cudnn = settings.get("matmul_allow_tf32"), settings.get("cudnn_allow_tf32")
    tf32 = (
        "on (matmul and cuDNN)"
        if matmul and cudnn
        else "off"
        if not (matmul or cudnn)
        else "on for matmuls only"
        if matmul
        else "on for cuDNN only"
    )
    return (
        f"TF32 {tf32}, float32 matmul precision {settings.get('float32_matmul_precision', DASH)}, "
        f"cuDNN autotuning {'on' if settings.get('cudnn_benchmark') else 'off'}"
    )


def plural(n: int, word: str) -> str:
    """3, "step" -> "3 steps"; 1, "step" -> "1 step"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def significant(values: Iterable[float | None], digits: int = 4) -> list[float | None]:
    """Rounded to ``digits`` significant figures: 183.9 ms and 0.01234 ms both stay readable."""
    out = []
    for v in values:
        if not known(v):
            out.append(None)
        elif v == 0:
            out.append(0.0)
        else:
            out.append(round(float(v), digits - 1 - int(math.floor(math.log10(abs(v))))))
    return out
