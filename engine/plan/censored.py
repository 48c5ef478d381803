"""Times to a target that some runs never reached: medians, intervals and a test that keep a bound a bound.

A run that never reached the target is right-censored: its time is "more than its whole training
time" (infinite when it ended without one: diverged, crashed). Every function here works on arrays
whose last axis holds one arm's seeds and whose leading axes stack comparisons, so one comparison
(a batch of one) and hundreds of simulated autopilots run the same code.

- :func:`km_medians`: the Kaplan-Meier median (the earliest time by which half the runs are estimated
  to have reached the target), or, where it never falls to a half, the bound it is known to exceed.
- :func:`ratio_interval`: a bootstrap percentile interval of the ratio of two arms' medians that is
  built for censored data. A resample whose median is only a bound contributes the whole range the
  bound allows (a recommended median past its bound: the ratio anywhere from 0 up to baseline/bound),
  the low end of the interval taken from the low ends and the high end from the high ends. An end the
  bounds reach stays open (None) instead of being filled in with a bound read as a measurement.
- :func:`gehan_test`: a two-sided permutation test of "the arms' times are exchangeable" with
  Gehan's generalisation of the Wilcoxon score to censored data; exact (every split of the pooled
  runs) while the splits are few, a Monte-Carlo permutation test beyond. Its false-alarm rate is at
  most its level whatever the number of seeds, which a bootstrap of three seeds cannot promise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["km_medians", "ratio_interval", "gehan_test", "smallest_p", "EXACT_SPLITS", "PERMUTATIONS"]

EXACT_SPLITS = 5000  # enumerate every split of the pooled runs up to this many (3+3: 20, 7+7: 3432)
PERMUTATIONS = 4000  # random splits beyond (a p-value's Monte-Carlo error ~ sqrt(p/4000): 0.0016 at p = 0.01)


def km_medians(times: np.ndarray, reached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, bound) along the last axis; NaN where undefined.

    ``times``: each run's time to the target, or the time it is censored at (inf: it ended without one);
    ``reached``: whether it reached the target. The median is NaN where the Kaplan-Meier survival never
    falls to one half; the bound, set only there, is the longest time seen (the median lies beyond it).
    Ties: a run reaching the target at a time sorts before one censored at it (the usual convention).
    """
    times, reached = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    lead, n = times.shape[:-1], times.shape[-1]
    ordered = _by_time(times.reshape(-1, n), reached.reshape(-1, n))
    median, bound = _medians_of_copies(*ordered, np.ones((1, n), dtype=int))
    return median[:, 0].reshape(lead), bound[:, 0].reshape(lead)


def _by_time(times: np.ndarray, reached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's runs by time, a run that reached the target before one censored at the same time."""
    order = np.lexsort((~reached, times), axis=-1)
    return np.take_along_axis(times, order, axis=-1), np.take_along_axis(reached, order, axis=-1)


def _medians_of_copies(times: np.ndarray, reached: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier (median, bound) of every row of runs ``[row, rank]`` (sorted by :func:`_by_time`) taken
    ``copies[resample, rank]`` times: ``[row, resample]`` arrays.

    A bootstrap resample of n seeds is a count of copies of each; drawing the counts per rank instead of
    per seed is the same distribution, so one plan of counts serves every row, and the survival curve of a
    resample depends on a row only through which of its ranks reached the target. The curve is worked
    out once per such pattern (few, however many rows), then each row reads its times at the ranks found.
    """
    n = copies.shape[-1]
    at_risk = n - np.cumsum(copies, axis=-1) + copies
    with np.errstate(divide="ignore", invalid="ignore"):
        # log of the survival factor at each rank, were it a rank that reached the target (copies at once)
        log_factor = np.where(at_risk > 0, np.log1p(-copies / np.maximum(at_risk, 1)), 0.0)
    last = n - 1 - np.argmax(copies[:, ::-1] > 0, axis=-1)  # the longest time drawn
    bound = times[:, last]
    median = np.full(bound.shape, np.nan)
    patterns, which = np.unique(reached, axis=0, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    half = math.log(0.5 + 1e-12)
    for index, pattern in enumerate(patterns):
        survival = np.cumsum(np.where(pattern, log_factor, 0.0), axis=-1)
        hit = pattern & (copies > 0) & (survival <= half)
        found, rank = hit.any(axis=-1), np.argmax(hit, axis=-1)
        rows = np.flatnonzero(which == index)
        median[rows] = np.where(found, times[rows][:, rank], np.nan)
    return median, np.where(np.isnan(median), bound, np.nan)


def _ratio_range(base_median, base_bound, other_median, other_bound) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, both) of baseline/other for medians that may be bounds: the ratio's whole possible range."""
    both = ~np.isnan(base_median) & ~np.isnan(other_median)
    base_known, other_known = ~np.isnan(base_median), ~np.isnan(other_median)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = base_median / other_median
        # the other arm's median lies past its bound: the ratio is below base/bound, as low as 0
        below = np.where(np.isinf(other_bound), 0.0, base_median / other_bound)
        # the baseline's median lies past its bound: the ratio is above bound/other, with no top
        above = np.where(np.isinf(base_bound), np.inf, base_bound / other_median)
    low = np.where(both, point, np.where(base_known, 0.0, np.where(other_known, above, 0.0)))
    high = np.where(both, point, np.where(base_known, below, np.inf))
    return low, high, both


def ratio_interval(
    base_times, base_reached, other_times, other_reached, confidence: float, resamples: int = 2000, seed: int = 0
) -> dict:
    """The ``confidence`` interval of (baseline median / other median), resampling each arm's seeds.

    Arrays ``(..., n)`` and ``(..., m)`` with the same leading shape. Returns arrays of that shape:
    ``low`` and ``high`` (NaN: open at that end, because the bounds of censored resamples reach it) and
    ``both`` (resamples in which both medians were reached, of ``resamples``).
    """
    base_times, base_reached = np.asarray(base_times, float), np.asarray(base_reached, bool)
    other_times, other_reached = np.asarray(other_times, float), np.asarray(other_reached, bool)
    lead = base_times.shape[:-1]
    n, m = base_times.shape[-1], other_times.shape[-1]
    rng = np.random.default_rng(seed)
    # the same resampling plan for every comparison: copies of each rank in each resample
    base_copies = rng.multinomial(n, np.full(n, 1 / n), size=resamples)
    other_copies = rng.multinomial(m, np.full(m, 1 / m), size=resamples)
    base_median, base_bound = _medians_of_copies(
        *_by_time(base_times.reshape(-1, n), base_reached.reshape(-1, n)), base_copies
    )
    other_median, other_bound = _medians_of_copies(
        *_by_time(other_times.reshape(-1, m), other_reached.reshape(-1, m)), other_copies
    )
    lows, highs, known = _ratio_range(base_median, base_bound, other_median, other_bound)
    tail = (1.0 - confidence) / 2.0
    low = np.quantile(lows, tail, axis=-1, method="inverted_cdf")
    high = np.quantile(highs, 1.0 - tail, axis=-1, method="inverted_cdf")
    low = np.where(low > 0, low, np.nan)
    high = np.where(np.isfinite(high), high, np.nan)
    return {
        "low": low.reshape(lead),
        "high": high.reshape(lead),
        "both": known.sum(axis=-1).reshape(lead),
        "resamples": resamples,
    }


def _gehan_scores(times: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """Each run's Gehan score among the pooled runs: how many are surely faster minus how many surely slower.

    Run j is surely faster than run i when j reached the target before i's time (or at it, when i was
    censored there: i's own time lies beyond). A run censored at infinity is slower than every run
    that reached the target and tied with every other censored run."""
    t_i, t_j = times[..., :, None], times[..., None, :]
    e_i, e_j = reached[..., :, None], reached[..., None, :]
    faster_than_i = e_j & ((t_j < t_i) | ((t_j == t_i) & ~e_i))  # [.., i, j]: j surely before i
    return faster_than_i.sum(axis=-1) - faster_than_i.sum(axis=-2)


def gehan_test(base_times, base_reached, other_times, other_reached, seed: int = 0) -> dict:
    """Two-sided permutation p-value of "the baseline's and the other arm's times are exchangeable".

    The statistic is the sum of the baseline runs' Gehan scores among the pooled runs (large when the
    baseline is slower). Returns arrays ``p`` (the leading shape) and ``exact`` (a bool: every split
    enumerated) and ``smallest``: the least p-value any data could give with these seeds (2 splits of
    the 20 a 3+3 comparison has: 0.1), so a caller sees when a level is out of reach."""
    base_times, base_reached = np.asarray(base_times, float), np.asarray(base_reached, bool)
    other_times, other_reached = np.asarray(other_times, float), np.asarray(other_reached, bool)
    lead = base_times.shape[:-1]
    n, m = base_times.shape[-1], other_times.shape[-1]
    times = np.concatenate([base_times, other_times], axis=-1).reshape(-1, n + m)
    reached = np.concatenate([base_reached, other_reached], axis=-1).reshape(-1, n + m)
    scores = _gehan_scores(times, reached).astype(float)  # [comparison, run]
    observed = scores[:, :n].sum(axis=-1)
    splits = math.comb(n + m, n)
    exact = splits <= EXACT_SPLITS
    if exact:
        masks = np.zeros((splits, n + m))
        for row, chosen in enumerate(itertools.combinations(range(n + m), n)):
            masks[row, list(chosen)] = 1.0
    else:
        rng = np.random.default_rng(seed)
        masks = (rng.permuted(np.tile(np.arange(n + m), (PERMUTATIONS, 1)), axis=1) < n).astype(float)
    # the scores sum to zero over the pooled runs, so the statistic's null distribution is centred on 0
    null = np.abs(scores @ masks.T)  # [comparison, split]
    extreme = (null >= np.abs(observed)[:, None] - 1e-9).sum(axis=-1)
    p = extreme / splits if exact else (extreme + 1) / (PERMUTATIONS + 1)
    smallest = smallest_p(n, m)
    return {"p": np.minimum(p, 1.0).reshape(lead), "exact": exact, "smallest": smallest}


def smallest_p(n: int, m: int | None = None) -> float:
    """The least p-value :func:`gehan_test` can give with ``n`` and ``m`` seeds an arm, whatever the data (two splits
    of the 20 a 3+3 comparison has: 0.1): a level below it can never be reached."""
    m = n if m is None else m
    splits = math.comb(n + m, n)
    return ((2 if n == m else 1) / splits) if splits <= EXACT_SPLITS else 1 / (PERMUTATIONS + 1)
