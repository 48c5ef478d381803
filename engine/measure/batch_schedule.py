"""A batch that grows during a training run: phases that start at fractions of the run's samples.

``largestep train --batch-schedule "256:0,1024:0.3,4096:0.6"`` trains at batch 256 from the start,
1024 from 30% of the run's samples and 4096 from 60% (Smith, Kindermans, Ying and Le 2018: grow
the batch instead of decaying the learning rate). The run's length stays in samples (its epochs),
so a phase's share of the data does not depend on its batch.

Learning rate: ``--lr`` is the first phase's; each later phase keeps lr/batch fixed (linear rule)
or scales it with sqrt(B/B1), and each increase ramps linearly from the previous phase's rate over
the run's warm-up samples (Goyal et al. 2017's gradual warm-up, applied at every jump).

``--batch-schedule adaptive`` grows the batch from the noise scale measured live
(:class:`NoiseTrend`): each logging interval's |G|² and tr(Σ) estimates are pooled over the last
few intervals (the averages first, then the ratio, as McCandlish et al. do), with a bootstrap interval
over those intervals; the batch doubles only when the interval's lower end has stood above the
multiple times the batch for PATIENCE intervals in a row, and the pool starts again after a change
(hysteresis: one noisy interval can neither grow the batch nor, right after a growth, grow it again).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from ..units import check_int, check_number

__all__ = [
    "parse_batch_schedule",
    "check_batch_schedule",
    "phase_index",
    "lr_multiple",
    "scheduled_steps",
    "grown_batch",
    "check_adaptive",
    "RULES",
    "ADAPTIVE",
    "DEFAULT_ADAPTIVE_MULTIPLE",
    "NoiseTrend",
]

ADAPTIVE = "adaptive"  # --batch-schedule adaptive: the run grows its batch from the live noise scale
DEFAULT_ADAPTIVE_MULTIPLE = 2.0  # double once B_noise exceeds this many times the batch: the doubled batch
# stays at or below the noise scale, where larger batches still save steps

WINDOW = 8  # logging intervals pooled into the smoothed noise scale
MIN_INTERVALS = 4  # ... at least this many since the last change before the batch may grow
PATIENCE = 2  # consecutive intervals whose lower end stands above the threshold
TREND_CONFIDENCE = 0.90  # of the smoothed estimate's interval
TREND_RESAMPLES = 400  # bootstrap resamples of the pooled intervals

RULES = ("linear", "sqrt")
Phases = tuple[tuple[int, float], ...]  # (batch size, start fraction of the run's samples), by start


def parse_batch_schedule(text: str) -> Phases:
    """``"256:0,1024:0.3"`` -> ((256, 0.0), (1024, 0.3)), checked."""
    phases = []
    for part in (p for p in str(text).replace(" ", "").split(",") if p):
        batch, sep, start = part.partition(":")
        if not sep:
            raise UsageError(f"--batch-schedule phase {part!r} has no start: write batch:fraction, e.g. {part}:0.5")
        try:
            phases.append((int(batch), float(start)))
        except ValueError:
            raise UsageError(
                f"--batch-schedule takes batch:fraction pairs such as 256:0,1024:0.3, not {part!r}"
            ) from None
    return check_batch_schedule(tuple(phases))


def check_batch_schedule(phases: Phases, n_train: int | None = None) -> Phases:
    """The phases as given, or a one-line UsageError saying how to fix them."""
    if not phases:
        raise UsageError("--batch-schedule is empty: give batch:fraction pairs such as 256:0,1024:0.3")
    for batch, start in phases:
        check_int(batch, "a --batch-schedule batch")
        check_number(start, "a --batch-schedule start fraction", low=0, high=1, low_inclusive=True)
        if n_train is not None and batch > n_train:
            raise UsageError(f"--batch-schedule batch {batch} is larger than the {n_train} training samples")
    if phases[0][1] != 0:
        raise UsageError(
            f"--batch-schedule must start at fraction 0 (the first phase starts the run), not "
            f"{phases[0][1]:g}: e.g. {phases[0][0]}:0"
        )
    starts = [start for _, start in phases]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise UsageError("--batch-schedule start fractions must rise from phase to phase, e.g. 256:0,1024:0.3")
    batches = [batch for batch, _ in phases]
    if any(b <= a for a, b in zip(batches, batches[1:])):
        raise UsageError(
            f"--batch-schedule batches must grow from phase to phase, not {' then '.join(map(str, batches))}"
            f" (a batch that shrinks or stays is not a schedule: train at one --batch-size)"
        )
    return tuple((int(b), float(s)) for b, s in phases)


def phase_index(phases: Phases, samples_seen: int, total_samples: int) -> int:
    """The phase in force for the optimizer step about to run."""
    progress = samples_seen / total_samples if total_samples > 0 else 0.0
    return max(i for i, (_, start) in enumerate(phases) if progress >= start)


def lr_multiple(
    phases: Phases, samples_seen: int, total_samples: int, warmup_samples: int, rule: str = "linear"
) -> float:
    """The phase's rate over the first phase's, ramped from the previous phase's over the warm-up."""
    index = phase_index(phases, samples_seen, total_samples)
    first = phases[0][0]

    def multiple(i: int) -> float:
        ratio = phases[i][0] / first
        return ratio if rule == "linear" else math.sqrt(ratio)

    if index == 0 or warmup_samples <= 0:
        return multiple(index)
    batch, start = phases[index]
    ramp = min(1.0, (samples_seen - start * total_samples + batch) / warmup_samples)
    return multiple(index - 1) + (multiple(index) - multiple(index - 1)) * ramp


def scheduled_steps(phases: Phases, total_samples: int) -> int:
    """Optimizer steps of a run of ``total_samples``, stepped as the training loop steps: each step at
    the batch of the phase in force, until the samples are done."""
    steps = samples = 0
    while samples < total_samples:
        samples += phases[phase_index(phases, samples, total_samples)][0]
        steps += 1
    return steps


def check_adaptive(sizes: tuple[int, ...], batch: int, multiple: float, accumulate: int, nproc: int) -> None:
    """An adaptive run's settings, or a one-line UsageError saying how to fix them."""
    for size in sizes:
        check_int(size, "an adaptive batch size")
    check_number(multiple, "the adaptive noise multiple", low=0)
    if accumulate < 2:
        raise UsageError(
            "--batch-schedule adaptive estimates the noise scale from the micro-batches of each step: "
            "give --accumulate 2 or more"
        )
    if nproc != 1:
        raise UsageError("--batch-schedule adaptive runs in one process: drop --nproc")
    if batch not in sizes:
        raise UsageError(
            f"--batch-size {batch} is not among the batches the adaptive run may use "
            f"({', '.join(map(str, sorted(sizes)))}): profile it, or start from one of them"
        )
    if any(size % accumulate for size in sizes if size >= batch):
        raise UsageError(
            f"every batch the adaptive run may grow into must divide by --accumulate {accumulate}; "
            f"not {', '.join(str(s) for s in sorted(sizes) if s >= batch and s % accumulate)}"
        )


def grown_batch(
    batch: int, sizes: tuple[int, ...], noise_scale: float | None, multiple: float, n_train: int
) -> int | None:
    """The batch to grow into once the live noise scale exceeds ``multiple`` times ``batch``: double it,
    if the doubled batch is one of ``sizes`` (measured and memory-safe) and fits the data; else None."""
    doubled = 2 * batch
    if noise_scale is None or noise_scale <= multiple * batch or doubled not in sizes or doubled > n_train:
        return None
    return doubled


class NoiseTrend:
    """The noise scale measured live, smoothed over the last WINDOW logging intervals, with an interval.

    Each interval gives unbiased estimates of |G|² and tr(Σ) (they do not depend on the batch); the pooled
    estimate is the ratio of their means, and its TREND_CONFIDENCE interval is a percentile bootstrap over
    the pooled intervals. :meth:`grown` doubles the batch only on the interval's lower end, for PATIENCE
    intervals in a row, with MIN_INTERVALS pooled since the last change.
    """

    def __init__(self, seed: int = 0):
        self.g2: list[float] = []
        self.trace: list[float] = []
        self.above = 0  # consecutive intervals whose lower end stood above the threshold
        self.rng = np.random.default_rng(seed)

    def add(self, g2: float | None, trace_sigma: float | None) -> None:
        """One logging interval's estimates (skipped when missing or not finite)."""
        if g2 is None or trace_sigma is None or not (math.isfinite(g2) and math.isfinite(trace_sigma)):
            return
        self.g2 = (self.g2 + [float(g2)])[-WINDOW:]
        self.trace = (self.trace + [float(trace_sigma)])[-WINDOW:]

    def estimate(self) -> tuple[float, float | None, float | None] | None:
        """(B_simple, low, high) of the pooled intervals; an end None where unbounded; None until
        MIN_INTERVALS intervals are pooled or while the pooled |G|² is not positive."""
        if len(self.g2) < MIN_INTERVALS:
            return None
        g2, trace = np.asarray(self.g2), np.asarray(self.trace)
        if g2.mean() <= 0 or trace.mean() <= 0:
            return None
        picks = self.rng.integers(0, len(g2), size=(TREND_RESAMPLES, len(g2)))
        g2_draws, trace_draws = g2[picks].mean(axis=1), trace[picks].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            draws = np.where(g2_draws > 0, np.maximum(trace_draws, 0) / g2_draws, np.inf)
        tail = (1 - TREND_CONFIDENCE) / 2
        low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
        return (
            float(trace.mean() / g2.mean()),
            float(low) if low > 0 else None,
            float(high) if math.isfinite(high) else None,
        )

    def grown(
        self, batch: int, sizes: tuple[int, ...], multiple: float, n_train: int, estimate: tuple | None = None
    ) -> int | None:
        """The batch to grow into now, or None: :func:`grown_batch` on the interval's lower end, once it has
        stood above ``multiple`` times the batch for PATIENCE intervals; the pool starts again after it.
        ``estimate``: this interval's :meth:`estimate`, when the caller has it already."""
        estimate = estimate if estimate is not None else self.estimate()
        low = estimate[1] if estimate else None
        self.above = self.above + 1 if low is not None and low > multiple * batch else 0
        if self.above < PATIENCE:
            return None
        grown = grown_batch(batch, sizes, low, multiple, n_train)
        if grown is not None:
            self.g2, self.trace, self.above = [], [], 0
        return grown
