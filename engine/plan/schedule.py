"""Plan a batch schedule: the batch that grows as training needs it, from a profile and a noise curve.

The gradient noise scale grows as the loss falls (McCandlish et al. 2018), so the best fixed
batch is a compromise: too large early, too small late. Smith, Kindermans, Ying and Le (2018)
grow the batch instead of decaying the learning rate. This plans that growth from what largestep
measured: the step time t(B) of every eligible batch of a recommendation (measured, memory-safe,
within --max-lr) and the noise scale B_noise(f) at fractions f of one baseline run's training.

The model of steps is the recommender's (:mod:`largestep.plan.steps`), with its correction from earlier
verifications where the recommendation has one, applied phase by phase with the local noise scale. Steps
to a target,
S(B) = S_min (1 + B_noise/B), says that a stretch of training the baseline B0 covers in ΔS0 steps
takes a batch B

    ΔS(B) = ΔS0 (1 + B_noise/B) / (1 + B_noise/B0)   steps, so   ΔT(B) = ΔS(B) t(B).

The baseline's training is cut into equal stretches (``CELLS``) at the noise scale interpolated
from the curve; the schedule is the non-decreasing sequence of measured batches with the least
total predicted time (a shortest path over stretches x batches). The best fixed batch is priced by
the same model over the same curve, so the two predictions compare like with like; when the
recommendation itself was ranked on this curve, its choice is the best fixed batch (ranked on its
prediction interval's lower end), so the planner and the recommender cannot name different ones.

Learning rate: recommend's rule (linear: lr/batch fixed; or sqrt) at every phase; each increase
ramps the rate linearly from the previous phase's over the workload's warm-up length in samples.
The predicted speedups carry a prediction interval: the planned path priced again under draws of
each curve point's noise scale (within its bootstrap interval) and each batch's step time (its
profile visits resampled), as recommend's interval is.
Pure: no I/O, no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UsageError
from .recommend import PREDICTION_COVERAGE, PREDICTION_DRAWS, prediction_interval, scale_lr, step_time_draws
from .steps import CELLS, StepsModel, scaled_noise

__all__ = ["Phase", "plan_schedule", "with_batch_schedule", "schedule_spec", "CELLS"]
SPEC_DIGITS = 3  # decimals of a phase's start fraction in the `--batch-schedule` spec


@dataclass(frozen=True)
class Phase:
    batch_size: int
    learning_rate: float  # after this phase's warm-up
    start_fraction: float  # of the scheduled run's samples at which the phase begins
    baseline_fraction: float  # of the baseline's training (the noise curve's axis) it begins at
    noise_scale: float  # B_noise at its start (interpolated from the curve)
    warmup_samples: int  # linear ramp from the previous phase's rate (from 0 for the first)
    step_time_s: float  # measured t(B)


def plan_schedule(rec: dict, curve: list[dict]) -> dict:
    """The batch schedule for a recommendation document (see :func:`largestep.plan.recommend.recommend`)
    and a stored noise curve (points with ``fraction`` and ``b_simple``; unreliable ones are left out).

    Raises UsageError when the curve has fewer than two reliable points.
    """
    if rec.get("rule") == "noise":
        raise UsageError(
            "a batch schedule scales its rate by the linear or sqrt rule: recommend with --rule linear "
            "or sqrt to plan one"
        )
    fractions, scales, left_out = _reliable_points(curve)
    model = StepsModel.from_curve(curve)
    correction = _correction(rec)
    b0 = rec["baseline"]["batch_size"]
    lr0 = rec["baseline"]["learning_rate"]
    eligible = sorted((c for c in rec["candidates"] if c["eligible"]), key=lambda c: c["batch_size"])
    batches = np.array([c["batch_size"] for c in eligible], dtype=float)
    step_times = np.array([c["step_time_s"] for c in eligible], dtype=float)
    t0 = next(c["step_time_s"] for c in rec["candidates"] if c["batch_size"] == b0)

    # each stretch's noise scale (corrected as the recommendation's), and each batch's time over it as a share of
    # the baseline's whole run
    starts = np.arange(CELLS) / CELLS
    noise = scaled_noise(model.cell_noise()[:, None], np.array([correction or 1.0]))[:, 0]
    with np.errstate(invalid="ignore"):
        steps_ratio = np.where(
            np.isinf(noise[:, None]),
            b0 / batches[None, :],
            (1 + noise[:, None] / batches[None, :]) / (1 + noise[:, None] / b0),
        )  # [cell, batch]
    cost = steps_ratio * step_times[None, :] / t0 / CELLS

    path = _cheapest_growing_path(cost)
    schedule_time = float(cost[np.arange(CELLS), path].sum())
    fixed_times = cost.sum(axis=0)
    best_fixed = int(np.argmin(fixed_times))
    if _ranked_on(rec, model) and rec["batch_size"] in batches:  # the recommender's choice, on the same model
        best_fixed = int(np.flatnonzero(batches == rec["batch_size"])[0])
    # samples of each stretch (in baseline-run units): steps x batch
    samples = steps_ratio[np.arange(CELLS), path] * batches[path] / b0 / CELLS
    samples_ratio = float(samples.sum())
    sample_starts = np.concatenate([[0.0], np.cumsum(samples)[:-1]]) / samples_ratio

    warmup = int(rec.get("warmup_samples") or 0)
    phases: list[Phase] = []
    for cell in range(CELLS):
        if phases and batches[path[cell]] == phases[-1].batch_size:
            continue
        b = int(batches[path[cell]])
        phases.append(
            Phase(
                batch_size=b,
                learning_rate=scale_lr(lr0, b0, b, rec.get("rule", "linear")),
                start_fraction=float(sample_starts[cell]),
                baseline_fraction=float(starts[cell]),
                noise_scale=float(noise[cell]),
                warmup_samples=warmup,
                step_time_s=float(step_times[path[cell]]),
            )
        )
    over_baseline, over_fixed = _schedule_intervals(model, rec, eligible, b0, path, best_fixed)
    return {
        "curve_id": curve[0].get("curve_id") if curve else None,
        "rule": rec.get("rule", "linear"),
        "phases": [asdict(p) for p in phases],
        "spec": schedule_spec(phases),
        "samples_ratio": samples_ratio,  # the scheduled run's samples over the baseline run's
        "epochs": (rec.get("epochs") or 0) * samples_ratio or None,
        "predicted_speedup": {
            "over_baseline": 1 / schedule_time,
            "over_best_fixed": float(fixed_times[best_fixed]) / schedule_time,
            "over_baseline_interval": over_baseline,
            "over_best_fixed_interval": over_fixed,
            "coverage": PREDICTION_COVERAGE,
        },
        "best_fixed": {
            "batch_size": int(batches[best_fixed]),
            "speedup_over_baseline": 1 / float(fixed_times[best_fixed]),
        },
        "noise_curve": [{"fraction": f, "b_simple": s} for f, s in zip(fractions, scales)],
        "reasons": _reasons(
            phases,
            fractions,
            scales,
            left_out,
            int(batches[best_fixed]),
            float(fixed_times[best_fixed]) / schedule_time,
            int(batches[-1]),
            over_fixed,
        ),
    }


def with_batch_schedule(rec: dict, curve: list[dict], chosen: bool = False) -> dict:
    """The recommendation with its ``batch_schedule`` planned from ``curve`` (none: it stays as it is).

    ``chosen``: the user named the curve, so a curve too unreliable to plan from is their error; the
    newest curve picked by default only adds a reason saying why no schedule was planned.
    """
    if not curve:
        return rec
    try:
        return {**rec, "batch_schedule": plan_schedule(rec, curve)}
    except UsageError as error:
        if chosen:
            raise
        return {**rec, "reasons": [*rec["reasons"], f"no batch schedule: {error}"]}


def schedule_spec(phases: list[Phase]) -> str:
    """The `largestep train --batch-schedule` spelling: ``batch:start_fraction`` per phase."""
    return ",".join(f"{p.batch_size}:{round(p.start_fraction, SPEC_DIGITS):g}" for p in phases)


def _reliable_points(curve: list[dict]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The curve's reliable points (fraction, B_simple) by fraction, and the fractions left out."""
    kept = sorted(
        (p["fraction"], p["b_simple"])
        for p in curve
        if p.get("b_simple") is not None and math.isfinite(p["b_simple"]) and p["b_simple"] > 0
    )
    left_out = sorted(p["fraction"] for p in curve if p.get("b_simple") is None)
    if len(kept) < 2:
        raise UsageError(
            f"the noise curve has {len(kept)} reliable point(s); a schedule needs two at least: "
            f"run `largestep noise --at 0,0.25,0.5,1` again with more --batches"
        )
    return np.array([f for f, _ in kept]), np.array([s for _, s in kept]), left_out


def _correction(rec: dict) -> float | None:
    """The factor the recommendation's noise model was corrected by (None: none, or an absolute critical batch,
    which a curve does not scale)."""
    correction = rec.get("correction") or {}
    return None if correction.get("absolute") or not correction.get("factor") else float(correction["factor"])


def _ranked_on(rec: dict, model: StepsModel) -> bool:
    """Whether the recommendation ranked its fixed batches on this same curve."""
    stored = rec.get("steps_model") or {}
    return (
        stored.get("kind") == "curve"
        and list(stored.get("fractions") or []) == list(model.fractions)
        and list(stored.get("scales") or []) == list(model.scales)
    )


def _schedule_intervals(
    model: StepsModel,
    rec: dict,
    eligible: list[dict],
    b0: int,
    path: np.ndarray,
    best_fixed: int,
    draws: int = PREDICTION_DRAWS,
    seed: int = 0,
) -> tuple[list, list]:
    """Prediction intervals of the planned path's speedup over the baseline and over the best fixed batch: both
    priced again under draws of each reliable curve point's B_noise (:meth:`StepsModel.noise_draws`), of the
    recommendation's correction, and of each batch's step time."""
    from .calibration import Correction

    rng = np.random.default_rng(seed)
    noise = model.noise_draws(draws, rng)  # [cell, draw]
    correction = Correction.of(rec.get("correction"))
    if _correction(rec) is not None and correction is not None:
        noise = scaled_noise(noise, correction.draws(draws, rng))
    elif _correction(rec) is not None:
        noise = noise * _correction(rec)
    t0 = (
        next(step_time_draws(c, draws, rng) for c in eligible if c["batch_size"] == b0)
        if any(c["batch_size"] == b0 for c in eligible)
        else None
    )
    times = np.stack([step_time_draws(c, draws, rng) for c in eligible])  # [batch, draw]
    if t0 is None:
        t0 = times[0]
    batches = np.array([c["batch_size"] for c in eligible], dtype=float)

    def cost(columns: np.ndarray) -> np.ndarray:  # the baseline-relative time of a batch per cell: [draw]
        b = batches[columns][:, None]
        with np.errstate(invalid="ignore"):
            steps = np.where(np.isinf(noise), b0 / b, (1 + noise / b) / (1 + noise / b0))
        return (steps * times[columns] / t0[None, :]).sum(axis=0) / CELLS

    schedule = cost(path)
    fixed = cost(np.full(CELLS, best_fixed))
    return prediction_interval(1 / schedule), prediction_interval(fixed / schedule)


def _cheapest_growing_path(cost: np.ndarray) -> np.ndarray:
    """For each stretch, the batch (a column) minimising the total cost with batches never shrinking."""
    cells, options = cost.shape
    best = np.empty_like(cost)  # best[i, b]: least cost of stretches 0..i ending at batch b
    came_from = np.zeros((cells, options), dtype=int)
    best[0] = cost[0]
    for i in range(1, cells):
        # the cheapest predecessor at a batch no larger than b: a running minimum over the columns
        came_from[i] = [int(np.argmin(best[i - 1, : b + 1])) for b in range(options)]
        best[i] = cost[i] + best[i - 1, came_from[i]]
    path = np.empty(cells, dtype=int)
    path[-1] = int(np.argmin(best[-1]))
    for i in range(cells - 1, 0, -1):
        path[i - 1] = came_from[i, path[i]]
    return path


def _reasons(
    phases: list[Phase],
    fractions: np.ndarray,
    scales: np.ndarray,
    left_out: list[float],
    best_fixed: int,
    gain: float,
    largest: int,
    gain_interval: list[float],
) -> list[str]:
    reasons = [
        f"noise scale: B_noise goes from about {scales[0]:,.0f} at {fractions[0]:g} of the baseline's "
        f"training to about {scales[-1]:,.0f} at {fractions[-1]:g}; each phase uses the measured batch with "
        f"the least predicted time (1 + B_noise/B)·t(B) at its own noise scale"
    ]
    if left_out:
        reasons.append(f"the curve's points at {', '.join(f'{f:g}' for f in left_out)} were unreliable and left out")
    if len(phases) == 1:
        reasons.append(
            f"one batch ({phases[0].batch_size}) is best over the whole run: the noise scale does not "
            f"change enough to make another measured batch faster at any point"
        )
    else:
        steps = ", then ".join(f"{p.batch_size} from {p.baseline_fraction:.0%}" for p in phases)
        reasons.append(f"the batch grows as the noise scale does: {steps} of the baseline's training")
        reasons.append(
            f"predicted {gain:.2f}x the speed of the best fixed batch ({best_fixed}) under the same curve "
            f"({PREDICTION_COVERAGE:.0%} prediction interval {gain_interval[0]:.2f}x to "
            f"{gain_interval[1]:.2f}x): small batches while the gradient is clear, large ones once it is noisy"
        )
    if phases[-1].batch_size == largest:
        reasons.append(
            f"the largest eligible batch ({largest}) limited the last phase: profile larger batches "
            f"(--max-batch) to see whether they are faster still"
        )
    return reasons
