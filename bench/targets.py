"""What every benchmark with a target prints: each figure beside its target, and one line for ``bench/suite.py``.

A figure is a ratio against a reference measured in the same run (or a share of a wall time), so it means the
same on any machine. Its quick target (``--quick``: a few seconds a benchmark) is the full target widened by
the margin the machine's own floor needs: the reference measured against itself in the same minute
(``--floor``), which a quick figure cannot be expected to beat. ``--floor`` reports that self-disagreement
instead, against the margin: when it exceeds the margin, the machine is too noisy for the quick targets.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass

FIGURES_LINE = "bench-figures: "  # the line bench/suite.py reads: this prefix, then JSON

# What a side's rounds come to: their median in a full run; in a quick one (--quick) the best round, since
# interference only adds time (DESIGN.md, "Measuring on a shared machine") and a median of five rounds of a few
# tenths of a second each still carries it.
_best_round = False


def quick_rounds(quick: bool) -> None:
    global _best_round
    _best_round = quick


def typical_time(values: list[float]) -> float:
    return min(values) if _best_round else statistics.median(values)


def typical_rate(values: list[float]) -> float:
    return max(values) if _best_round else statistics.median(values)


def rounds_word() -> str:
    """How the rounds were summarised, for a figure's detail: "best of" or "median of"."""
    return "best of" if _best_round else "median of"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    at_least: float | None = None
    at_most: float | None = None
    detail: str = ""  # what the ratio is made of (the two sides' own figures)

    @property
    def met(self) -> bool:
        return (self.at_least is None or self.value >= self.at_least) and (
            self.at_most is None or self.value <= self.at_most
        )

    @property
    def target(self) -> str:
        if self.at_least is not None and self.at_most is not None:
            return f"{self.at_least:.3g} to {self.at_most:.3g}"
        if self.at_least is not None:
            return f"at least {self.at_least:.3g}"
        return f"at most {self.at_most:.3g}" if self.at_most is not None else "none"


@dataclass(frozen=True)
class Target:
    """A figure's target in a full run, and the margin its quick run is given (the machine's floor). A quick
    figure measured on other sizes than the full one (ingest: a tenth of the rows, where fixed costs weigh more)
    has its own quick bounds instead, set from measurements of the healthy code and of a planted regression."""

    at_least: float | None = None
    at_most: float | None = None
    quick_margin: float = 0.0
    quick_at_least: float | None = None
    quick_at_most: float | None = None

    def figure(self, name: str, value: float, quick: bool, detail: str = "") -> Figure:
        if not quick:
            return Figure(name, value, self.at_least, self.at_most, detail)
        at_least = (
            self.quick_at_least
            if self.quick_at_least is not None
            else (None if self.at_least is None else self.at_least - self.quick_margin)
        )
        at_most = (
            self.quick_at_most
            if self.quick_at_most is not None
            else (None if self.at_most is None else self.at_most + self.quick_margin)
        )
        return Figure(name, value, at_least, at_most, detail)

    def floor(self, name: str, self_ratio: float, detail: str = "") -> Figure:
        """The reference against itself: within 1 ± the quick margin, or the quick target is not to be trusted."""
        return Figure(f"floor: {name}", self_ratio, 1 - self.quick_margin, 1 + self.quick_margin, detail)

    def floor_difference(self, name: str, difference: float, detail: str = "") -> Figure:
        """Two measurements of the same thing, as a difference (a share of wall time): within the quick margin."""
        return Figure(f"floor: {name}", difference, -self.quick_margin, self.quick_margin, detail)


def report(bench: str, figures: list[Figure]) -> int:
    """Print each figure beside its target and the line bench/suite.py reads; 0 when every one is met, else 1."""
    load = os.getloadavg()[0]
    for f in figures:
        print(
            f"{bench}: {f.name}: {f.value:.3f} (target {f.target}) {'met' if f.met else 'MISSED'}"
            f"{'; ' + f.detail if f.detail else ''}",
            flush=True,
        )
    print(
        FIGURES_LINE
        + json.dumps(
            {
                "bench": bench,
                "load_average": load,
                "figures": [{**asdict(f), "target": f.target, "met": f.met} for f in figures],
            }
        ),
        flush=True,
    )
    return 0 if all(f.met for f in figures) else 1
