"""What a comparison may say: the words every view shows for a measured speedup, decided in one place.

The CLI's `compare`, the autopilot's headline, the Overview, the Runs page and the HTML report all
render :func:`speedup_verdict`; none words a speedup itself. The grammar:

- "faster" only when the speedup's interval lies above 1 and the exact (or permutation) test agrees at
  the same level; "slower" when the interval lies below 1 and the test agrees; otherwise
  "no measurable difference (90% interval a–b)";
- fewer than :data:`MIN_SEEDS` seeds in either arm: the ratio with "too few seeds to say", never a word;
- a median that is only a bound (fewer than half an arm's seeds reached the target): "at least Nx" or
  "at most Nx", never "faster", "slower" or decisive;
- repeated looks (`--until-decisive`) test each look at its share of the error rate
  (:func:`look_levels`), so adding seeds until something is "decisive" cannot manufacture a result.

The headline's colour follows :func:`headline_tone`: good only for "faster" with a quality not worse,
bad for "slower", a worse quality or seeds that failed, neutral otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "CONFIDENCE",
    "MIN_SEEDS",
    "Verdict",
    "speedup_verdict",
    "calls",
    "interval_text",
    "headline_tone",
    "look_levels",
    "SEQUENTIAL_RULE",
    "FASTER",
    "SLOWER",
    "NO_DIFFERENCE",
    "TOO_FEW",
    "AT_LEAST",
    "AT_MOST",
    "NOT_MEASURED",
    "QUALITY_FAILED",
    "QUALITY_TOO_FEW",
    "quality_words",
    "failed_text",
]

CONFIDENCE = 0.90  # of every interval of a comparison with a fixed number of seeds
MIN_SEEDS = 3  # seeds an arm before any "faster", "slower" or "equivalent"

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no measurable difference"
TOO_FEW, AT_LEAST, AT_MOST, NOT_MEASURED = "too few seeds to say", "at least", "at most", "not measured"
QUALITY_FAILED, QUALITY_TOO_FEW = "seeds failed", TOO_FEW  # quality verdicts besides compare's four

SEQUENTIAL_RULE = (
    'group-sequential alpha spending: the 10% chance of a false "faster" or "slower" is spent '
    "linearly over the seeds up to --max-repeats, and each look (its interval and its exact test) is "
    "tested at its own share, so by the union bound the total stays at most 10% whatever the looks' "
    "correlation"
)


@dataclass(frozen=True)
class Verdict:
    word: str  # FASTER, SLOWER, NO_DIFFERENCE, TOO_FEW, AT_LEAST, AT_MOST or NOT_MEASURED
    text: str  # for a sentence: "1.90× faster (90% interval 1.41–2.55×; exact test p = 0.10)"
    cell: str  # for a table cell: "1.90× faster (1.41–2.55×)"
    tone: str  # "good" | "bad" | "neutral"
    decisive: bool  # faster or slower: an interval and a test at the comparison's level agree


def interval_text(low: float | None, high: float | None) -> str:
    """ "1.41–2.55×"; an end the censored runs leave open is said as such: "up to 2.02×", "1.20× or more"."""
    if low is not None and high is not None:
        return f"{low:.2f}–{high:.2f}×"
    if high is not None:
        return f"up to {high:.2f}×"
    if low is not None:
        return f"{low:.2f}× or more"
    return "open at both ends"


def _ratio(value: float) -> str:
    return f"{value:.2f}×" if math.isfinite(value) else "∞"


def calls(low, high, p, seeds, confidence: float = CONFIDENCE):
    """+1 (faster), -1 (slower) or 0 for measured speedups: elementwise over numpy arrays, so the one rule serves
    a comparison and a simulation of hundreds. ``low``/``high``: the interval's ends (NaN where open);
    ``p``: the exact test's p-value (NaN: none); ``seeds``: the smaller arm's seeds."""
    import numpy as np

    low, high, p, seeds = (np.asarray(x, dtype=float) for x in (low, high, p, seeds))
    agrees = (p <= 1 - confidence + 1e-12) & (seeds >= MIN_SEEDS)
    with np.errstate(invalid="ignore"):
        return np.where(agrees & (low > 1), 1, np.where(agrees & (high < 1), -1, 0))


def speedup_verdict(group: dict, baseline_seeds: int, confidence: float = CONFIDENCE) -> Verdict:
    """The words for one arm's speedup over the baseline (a group of :func:`largestep.plan.compare.compare_groups`).

    Reads ``speedup`` (the ratio of Kaplan-Meier medians, None unless both are known), ``speedup_bound``
    ({"kind": "at least" | "at most", "value"} when one median is only a bound), ``speedup_interval``
    ([low, high], an end None where open), ``speedup_test`` ({"p", "exact"}) and ``n`` (its seeds)."""
    point, bound = group.get("speedup"), group.get("speedup_bound")
    interval, test = group.get("speedup_interval"), group.get("speedup_test") or {}
    seeds = min(group.get("n") or 0, baseline_seeds)
    level = f"{confidence:.0%}"
    if point is None and bound is None:
        text = "not measured: neither arm's median time reached the target"
        return Verdict(NOT_MEASURED, text, "not reached", "neutral", False)
    if point is None:
        kind, value = bound["kind"], bound["value"]
        why = (
            "fewer than half of its seeds reached the target"
            if kind == AT_MOST
            else "fewer than half of the baseline's seeds reached its own target"
        )
        if kind == AT_MOST and value == 0:  # most seeds ended without a time at all (diverged, crashed)
            return Verdict(
                AT_MOST,
                "not reached: fewer than half of its seeds reached the target and the others "
                "ended without a training time",
                "not reached",
                "neutral",
                False,
            )
        return Verdict(
            kind, f"{kind} {_ratio(value)} ({why}: only a bound is known)", f"{kind} {_ratio(value)}", "neutral", False
        )
    if seeds < MIN_SEEDS:
        text = f"{point:.2f}×, too few seeds to say ({seeds} in the smaller arm; {MIN_SEEDS} an arm are needed)"
        return Verdict(TOO_FEW, text, f"{point:.2f}× (too few seeds to say)", "neutral", False)
    low, high = interval if interval else (None, None)
    p = test.get("p")
    test_text = "" if p is None else f"; {'exact' if test.get('exact') else 'permutation'} test p = {p:.2g}"
    resamples = group.get("speedup_resamples") or {}
    if resamples and resamples["both_reached"] < resamples["of"]:  # the rest were bounds, kept as bounds
        test_text += f"; both medians reached in {resamples['both_reached']:,} of {resamples['of']:,} resamples"
    call = int(
        calls(
            math.nan if low is None else low,
            math.nan if high is None else high,
            math.nan if p is None else p,
            seeds,
            confidence,
        )
    )
    span = interval_text(low, high)
    if call == 1:
        return Verdict(
            FASTER,
            f"{point:.2f}× faster ({level} interval {span}{test_text})",
            f"{point:.2f}× faster ({span})",
            "good",
            True,
        )
    if call == -1:
        return Verdict(
            SLOWER,
            f"slower: {point:.2f}× ({level} interval {span}{test_text})",
            f"slower: {point:.2f}× ({span})",
            "bad",
            True,
        )
    return Verdict(
        NO_DIFFERENCE,
        f"no measurable difference ({level} interval {span}, median ratio {point:.2f}×{test_text})",
        f"no measurable difference ({span})",
        "neutral",
        False,
    )


def failed_text(failed: list[dict]) -> str:
    """ "recommended seed 1 diverged, baseline seed 2 crashed"."""
    return ", ".join(f"{f['group']} seed {f.get('seed')} {str(f.get('state') or 'failed').lower()}" for f in failed)


def quality_words(quality: dict | None, name: str, confidence: float = CONFIDENCE) -> str:
    """The quality difference for a sentence: "accuracy -0.0186 (90% interval -0.0280 to -0.0092): worse
    beyond ±0.0050"; failed seeds are named, counted against equivalence; too few seeds say nothing."""
    quality = quality or {}
    verdict, failed = quality.get("verdict"), quality.get("failed") or []
    difference, interval = quality.get("difference"), quality.get("interval")
    if difference is None:
        text = f"{name}: no finished seeds to compare"
    else:
        text = f"{name} {difference:+.4f}"
        if interval:
            text += f" ({confidence:.0%} interval {interval[0]:+.4f} to {interval[1]:+.4f})"
        else:
            text += " (no interval: fewer than two finished seeds on a side)"
    tolerance = quality.get("tolerance")
    if verdict == QUALITY_TOO_FEW:
        text += f": too few seeds to say ({quality.get('seeds')} in the smaller arm; {MIN_SEEDS} an arm are needed)"
    elif verdict == QUALITY_FAILED:
        text += f": not shown equivalent, {failed_text(failed)} (a failed seed counts against equivalence)"
    elif verdict and tolerance is not None:
        text += f": {verdict} within ±{tolerance:.4f}"
        if failed:
            text += f"; {failed_text(failed)}"
    return text


def headline_tone(speed: Verdict | dict | None, quality: dict | None) -> str:
    """ "good" (a success box), "bad" (an error box) or "neutral" (a caution) for a headline: never good for
    an arm whose quality is worse or whose seeds failed, however fast."""
    word = speed.word if isinstance(speed, Verdict) else (speed or {}).get("word")
    verdict = (quality or {}).get("verdict")
    if word == SLOWER or verdict in ("worse", QUALITY_FAILED):
        return "bad"
    if word == FASTER and verdict in ("equivalent", "better"):
        return "good"
    return "neutral"


def look_levels(repeats: int, max_repeats: int, alpha: float = 1 - CONFIDENCE) -> dict[int, float]:
    """The error rate each look of `--until-decisive` is tested at, by seeds an arm at that look.

    Linear alpha spending over the information fraction k/max_repeats (Lan and DeMets's family with
    rho = 1): the first look, at ``repeats`` seeds, spends alpha·repeats/max_repeats, each seed pair after
    it alpha/max_repeats. Each look is tested at its own increment, so by the union bound the chance
    that any look calls identical arms faster or slower is at most ``alpha``, however the looks
    correlate. Without room for a second look (max_repeats <= repeats) the one look gets all of alpha.
    """
    if max_repeats <= repeats:
        return {repeats: alpha}
    levels = {repeats: alpha * repeats / max_repeats}
    levels.update({k: alpha / max_repeats for k in range(repeats + 1, max_repeats + 1)})
    return levels
