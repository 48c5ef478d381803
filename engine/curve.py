"""What a step-time curve may do, and which number stands for a batch size's step time.

Shared by the profiler, which measures the curve and checks it while it can still measure again, and by the
recommender and every page that uses a stored profile, which refuse one that cannot be trusted. Pure: a point
is a :class:`largestep.measure.profiler.ProfilePoint` or a stored point's dict, read through the same names.

**The estimate.** Interference on a shared machine (another process taking a core, a scheduler slice lost
by one of torch's threads) only ever adds time to a step; nothing makes one faster than the hardware. So a
low statistic of a size's raw step times is robust to it, where the median is not once half the steps are
slowed (Chen and Revels, "Robust benchmarking in noisy environments", 2016; Python's ``timeit``: "the
lowest value gives a lower bound for how fast your machine can run the given code snippet"). The median is
kept beside it; which one a profile used is stored with it. See ``bench/bench_profile_repro.py``.

**The physics check** cannot pass vacuously: it compares point estimates with a tolerance that is the
machine's quiet spread (never more than the noisy threshold), not quartiles, which a loaded point's are wide
enough to overlap with anything.

- A larger batch is never faster: throughput may not rise by more than the batch ratio between two sizes
  (step time may not fall by more than the quiet spread), for any two sizes, in the estimate or the median.
- Above the trend: a point far above the chord of its neighbours (a step-time curve is flat while the device
  is underused, then grows) was slowed.
- A point whose spread (IQR/median) exceeds the noisy threshold is measured, but it is never the saturation
  batch and never a recommended one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = [
    "ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "estimate",
    "quartiles",
    "Timing",
    "timings",
    "quiet_spread",
    "physics_problems",
    "saturation_batch",
    "loaded_sizes",
    "untrusted_sizes",
    "refusal",
    "threads_note",
    "others_busy",
    "NOISY_IQR_RATIO",
    "FALL_SLACK",
    "TREND_SLACK",
    "ACCEPT_LOAD_FLAG",
]

NOISY_IQR_RATIO = 0.2  # a point's IQR/median above this flags it noisy (ProfileConfig.noisy_iqr_ratio's default)
FALL_SLACK = 0.05  # the least a step time may fall as the batch grows before the check fires (kernel choice)
TREND_SLACK = 0.25  # a point may lie this far above the chord of its neighbours (a cache cliff)
BLOCK_STEPS = 5  # "min-block-mean": the mean of this many consecutive steps, the least of them
ACCEPT_LOAD_FLAG = "--accept-load"
CONTENTION_SLACK_CORES = 0.25  # other processes may keep this much of a core busy beyond the spare ones (system
# daemons) before the steps' threads count as contending with them

ESTIMATORS = {
    "median": "the median of the timed steps",
    "p25": "the 25th percentile of the timed steps",
    "p10": "the 10th percentile of the timed steps",
    "min": "the fastest timed step",
    "min-block-mean": f"the least mean of {BLOCK_STEPS} consecutive timed steps",
}
DEFAULT_ESTIMATOR = "min"  # chosen on bench/bench_profile_repro.py's figures (bench/README.md)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def estimate(times: Sequence[float], estimator: str = DEFAULT_ESTIMATOR) -> float:
    """The step time ``estimator`` (one of ESTIMATORS) makes of raw step times, in their timed order."""
    if not times:
        raise ValueError("no step times to estimate from")
    if estimator == "median":
        return _percentile(times, 50)
    if estimator == "p25":
        return _percentile(times, 25)
    if estimator == "p10":
        return _percentile(times, 10)
    if estimator == "min":
        return min(times)
    if estimator == "min-block-mean":
        k = min(BLOCK_STEPS, len(times))
        return min(sum(times[i : i + k]) / k for i in range(0, len(times) - k + 1, k))
    raise ValueError(f"unknown estimator {estimator!r}; one of {', '.join(ESTIMATORS)}")


def quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    return _percentile(times, 25), _percentile(times, 50), _percentile(times, 75)


def _get(point: Any, name: str) -> Any:
    return point.get(name) if isinstance(point, dict) else getattr(point, name, None)


@dataclass(frozen=True)
class Timing:
    """What the checks need of one measured batch size."""

    batch_size: int
    step_s: float  # the profile's estimate (its median for a profile stored before estimates)
    median_s: float
    spread: float | None  # IQR / median; None without quartiles
    under_load: bool
    others_busy_cores: float | None


def timings(points: Iterable[Any]) -> list[Timing]:
    """The measured points (status ok, with a step time), by batch size."""
    out = []
    for p in points:
        if isinstance(p, Timing):
            out.append(p)
            continue
        median = _get(p, "median_s")
        if _get(p, "status") != "ok" or not median:
            continue
        p25, p75 = _get(p, "p25_s"), _get(p, "p75_s")
        out.append(
            Timing(
                int(_get(p, "batch_size")),
                float(_get(p, "estimate_s") or median),
                float(median),
                (p75 - p25) / median if p25 is not None and p75 is not None else None,
                bool(_get(p, "under_load")),
                _get(p, "others_busy_cores"),
            )
        )
    return sorted(out, key=lambda t: t.batch_size)


def is_noisy(timing: Timing, noisy_threshold: float = NOISY_IQR_RATIO) -> bool:
    return timing.spread is not None and timing.spread > noisy_threshold


def quiet_spread(points: Iterable[Any], noisy_threshold: float = NOISY_IQR_RATIO) -> float:
    """How far a step time may fall as the batch grows before it cannot be the hardware: the median spread
    (IQR/median) of the points measured without load and not noisy, at least FALL_SLACK and never more than
    ``noisy_threshold``; FALL_SLACK when no point was quiet (a loaded point's spread says nothing of the
    machine's own, and must not widen the check until it cannot fire)."""
    quiet = sorted(
        t.spread for t in timings(points) if not t.under_load and t.spread is not None and t.spread <= noisy_threshold
    )
    if not quiet:
        return FALL_SLACK
    return min(noisy_threshold, max(FALL_SLACK, _percentile(quiet, 50)))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def physics_problems(points: Iterable[Any], noisy_threshold: float = NOISY_IQR_RATIO) -> list[tuple[int, str]]:
    """(batch size, why) of each point whose step time cannot be the hardware's, by batch size.

    - faster than its batch: for any two sizes S < L, throughput at L over throughput at S may not exceed L/S
      by more than the quiet spread (equivalently, the step time may not fall by more than it), in the
      profile's estimate or in its median: more work in less time means the smaller batch was slowed, or the
      larger one had the machine to itself; both are named, as either could be the one that is wrong;
    - above the trend: a point whose estimate lies above the chord of its neighbours' by more than TREND_SLACK.
    """
    measured = timings(points)
    tolerance = quiet_spread(measured, noisy_threshold)
    problems: dict[int, str] = {}
    for statistic in ("step_s", "median_s"):
        for j, large in enumerate(measured):
            t_large = getattr(large, statistic)
            # every smaller size slower than this one: each pair names both (either could be the wrong one)
            for small in measured[:j]:
                t_small = getattr(small, statistic)
                if t_large * (1 + tolerance) >= t_small:
                    continue
                gain = (large.batch_size / t_large) / (small.batch_size / t_small)
                which = "" if statistic == "step_s" else "median "
                why = (
                    f"{which}throughput rises {gain:.3g}x from batch {small.batch_size} to {large.batch_size}, "
                    f"more than the batch ({large.batch_size / small.batch_size:.3g}x): the {which}step time falls "
                    f"from {_ms(t_small)} to {_ms(t_large)}, beyond the machine's quiet spread of {tolerance:.0%}"
                )
                problems.setdefault(small.batch_size, why)
                problems.setdefault(large.batch_size, why)
    for left, point, right in zip(measured, measured[1:], measured[2:]):
        share = (point.batch_size - left.batch_size) / (right.batch_size - left.batch_size)
        chord = left.step_s + share * (right.step_s - left.step_s)
        if point.step_s > chord * (1 + TREND_SLACK + tolerance):
            problems.setdefault(
                point.batch_size,
                (
                    f"batch {point.batch_size}'s {_ms(point.step_s)} lies above its neighbours' trend "
                    f"({_ms(left.step_s)} at {left.batch_size}, {_ms(right.step_s)} at {right.batch_size})"
                ),
            )
    return sorted(problems.items())


def saturation_batch(
    points: Iterable[Any],
    share: float = 0.9,
    noisy_threshold: float = NOISY_IQR_RATIO,
) -> int | None:
    """The smallest batch reaching ``share`` of the best throughput, among the points that are not noisy
    (a noisy point's throughput is no figure to reach, nor to be); None when every point is noisy."""
    steady = [t for t in timings(points) if not is_noisy(t, noisy_threshold)]
    if not steady:
        return None
    best = max(t.batch_size / t.step_s for t in steady)
    return min(t.batch_size for t in steady if t.batch_size / t.step_s >= share * best)


def loaded_sizes(points: Iterable[Any]) -> list[int]:
    """The batch sizes measured under load (too few uncontended visits: their steps include contended ones)."""
    return [t.batch_size for t in timings(points) if t.under_load]


def untrusted_sizes(profile: dict) -> list[int]:
    """The batch sizes that make ``profile`` untrusted: measured under load, or named by the physics check.
    A re-profile measures these again and carries the others over."""
    config = profile.get("config") or {}
    threshold = config.get("noisy_iqr_ratio", NOISY_IQR_RATIO) if isinstance(config, dict) else NOISY_IQR_RATIO
    points = profile.get("points") or []
    return sorted(set(loaded_sizes(points)) | {b for b, _ in physics_problems(points, threshold)})


def refusal(profile: dict, accept: str = f"pass {ACCEPT_LOAD_FLAG}") -> str | None:
    """Why the stored ``profile`` (``points``, ``id``, optionally ``config``) cannot be used for recommending,
    in one line that says what to do; None when it can. ``accept``: how the user overrides it where the line
    is shown ("pass --accept-load" on the command line, a checkbox on a page)."""
    config = profile.get("config") or {}
    threshold = config.get("noisy_iqr_ratio", NOISY_IQR_RATIO) if isinstance(config, dict) else NOISY_IQR_RATIO
    measured = timings(profile.get("points") or [])
    if not measured:
        return None
    loaded = [t for t in measured if t.under_load]
    problems = physics_problems(measured, threshold)
    if not loaded and not problems:
        return None
    parts = []
    if loaded:
        busy = [t.others_busy_cores for t in loaded if t.others_busy_cores is not None]
        parts.append(
            f"{len(loaded)} of {len(measured)} batch sizes were measured under load"
            + (f" (other processes kept {min(busy):.2f} to {max(busy):.2f} cores busy)" if busy else "")
        )
    if problems:
        parts.append(f"it fails the physics check: {problems[0][1]}")
    return f"profile {profile.get('id')} cannot be trusted: {'; '.join(parts)}; rerun on a quiet machine, or {accept}"


def others_busy(profile: dict) -> float | None:
    """The most CPU cores other processes kept busy while a size of ``profile`` was timed: over the visits kept
    (``others_busy_cores``), or over all of them, set-aside visits included (the telemetry's
    ``background_cpu_p90_pct``, of the whole machine); None where neither was measured."""
    cores = profile.get("cores")
    seen = []
    for p in profile.get("points") or []:
        if _get(p, "others_busy_cores") is not None:
            seen.append(float(_get(p, "others_busy_cores")))
        if cores and _get(p, "background_cpu_p90_pct") is not None:
            seen.append(float(_get(p, "background_cpu_p90_pct")) / 100 * cores)
    return max(seen) if seen else None


def threads_note(profile: dict) -> str | None:
    """On the CPU, when torch's threads and the cores other processes kept busy exceed the machine's cores: say
    so, and offer --threads. A step then waits whenever one of its threads loses its core (a scheduler slice,
    100 ms and more, where the step takes one), so its times are bimodal and no statistic of them is the
    hardware's. None when they fit, or where the profile did not record its threads and cores."""
    threads, cores = profile.get("threads"), profile.get("cores")
    if profile.get("device_kind") not in (None, "cpu") or not threads or not cores:
        return None
    busy = others_busy(profile)
    if busy is None or threads + busy <= cores + CONTENTION_SLACK_CORES:
        return None
    fewer = max(1, min(threads - 1, math.floor(cores - busy))) if threads > 1 else None
    offer = (
        f"`--threads {fewer}` leaves {cores - fewer:g} core{'s' if cores - fewer != 1 else ''} to them (the "
        f"runs trained from the profile use the same)"
        if fewer
        else "profile when the machine is quieter"
    )
    return (
        f"torch's {threads} thread{'s' if threads != 1 else ''} and the {busy:.2f} cores other processes kept "
        f"busy exceed this machine's {cores} cores: a step waits whenever one of its threads loses its core; "
        f"{offer}"
    )
