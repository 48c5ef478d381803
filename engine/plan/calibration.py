"""Predictions that learn from their own verifications.

Every verification (an autopilot's comparison, or a `compare` of a recommendation's baseline and
recommended runs) is a calibration point: the predicted speedup and its two factors beside what the runs
measured, each with its interval (:func:`verification_point`).

The steps half of a prediction rests on S(B) = S_min (1 + B_noise/B) with B_noise the measured B_simple,
but McCandlish et al. relate the critical batch to B_simple only up to a factor that depends on the
problem (the Hessian's conditioning). A measured steps factor r = S(B0)/S(B) says which critical batch
the runs behaved as if they had:

    (1 + B_crit/B0)/(1 + B_crit/B) = r   =>   B_crit = (r - 1) / (1/B0 - r/B),

0 when r <= 1 (a larger batch saved no steps), unbounded once r reaches B/B0 (perfect scaling). Its
interval follows from the steps factor's (B_crit grows with r). The correction a later recommendation on
the same workload and device uses is the ratio B_crit/B_simple (for a noise curve: the factor by which the
whole curve must be scaled to give r), drawn from the verifications seen (:class:`Correction`), so the
corrected prediction carries the verifications' own uncertainty. Runs that ended without a time (diverged,
crashed) say nothing about steps: such a verification is recorded, but corrects nothing.

Also here, because they read the same intervals: which batches a recommendation cannot tell apart
(:func:`indistinguishable`), and which pair `--until-verified` tries after a failed verification
(:func:`next_attempt`). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .censored import ratio_interval
from .steps import StepsModel, noise_draws
from .verdict import FASTER, QUALITY_FAILED, interval_text

__all__ = [
    "step_time_bias",
    "implied_critical_batch",
    "implied_correction",
    "measured_factors",
    "verification_point",
    "verification_id",
    "Correction",
    "correction_from",
    "indistinguishable",
    "indistinguishable_text",
    "next_attempt",
    "verified",
    "VERIFIED_QUALITY",
    "model_of",
    "CORRECTION_DRAWS",
]

VERIFIED_QUALITY = ("equivalent", "better")  # with "faster": what the headline shows in a success box
CORRECTION_DRAWS = 4000
_TIGHT = 1e-9  # the closed end of a bound, as an interval end a hair away from its point


def step_time_bias(point: dict) -> float | None:
    """What a verification measured of the profile's time-per-step factor: the runs' over the profile's (1.0: the
    profile had it right); None where it was not measured, or where the pair was the baseline twice. The prediction it checked may itself have been scaled
    by earlier runs' bias (``step_time_bias``), which is taken out."""
    measured, predicted = point.get("measured_step_time"), point.get("predicted_step_time")
    if not measured or not predicted or point.get("batch_size") == point.get("baseline_batch"):
        return None  # the baseline against itself: its ratio is 1 by definition, what it measured is noise
    return measured / (predicted / (point.get("step_time_bias") or 1.0))


def implied_critical_batch(steps_factor: float | None, b0: int, b: int) -> float | None:
    """The critical batch B_crit for which (1 + B_crit/B0)/(1 + B_crit/B) = ``steps_factor``; 0 when the
    factor is at most 1, infinite once it reaches B/B0; None without a factor or when B is not above B0."""
    if steps_factor is None or not b0 or not b or b <= b0 or math.isnan(steps_factor):
        return None
    if steps_factor <= 1:
        return 0.0
    if steps_factor >= b / b0:
        return math.inf
    return (steps_factor - 1) / (1 / b0 - steps_factor / b)


def implied_correction(model: StepsModel, steps_factor: float | None, b0: int, b: int) -> float | None:
    """The factor k by which the model's noise scales must be multiplied for its steps factor at B over B0
    to be ``steps_factor`` (B_crit/B_simple for one estimate); 0 and inf at the ends as for
    :func:`implied_critical_batch`; None for perfect scaling (no noise scale to scale) or no factor."""
    critical = implied_critical_batch(steps_factor, b0, b)
    if critical is None or model.perfect_scaling:
        return None
    if critical == 0 or math.isinf(critical):
        return critical
    if model.single is not None:
        return critical / model.single

    def gap(log_k: float) -> float:
        return math.log(model.factor(b0, b, math.exp(log_k))) - math.log(steps_factor)

    low, high = -40.0, 40.0  # the model's factor grows with k: from 1 (k -> 0) to B/B0 (k -> inf)
    if gap(high) < 0:
        return math.inf
    if gap(low) > 0:
        return 0.0
    from scipy import optimize  # here, not at the top: every command imports this module, few solve

    return math.exp(optimize.brentq(gap, low, high, xtol=1e-10))


def _arm(group: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, reached) of an arm's runs: steps to the target (censored at each run's steps, infinite where it
    ended without a time) or time per step (every run that trained has one)."""
    runs = group.get("runs") or []
    if key == "steps":
        values = [
            float(r["steps_to_target"])
            if r.get("time_to_target_s") is not None and r.get("steps_to_target")
            else float(r["steps"])
            if r.get("steps") and r.get("censored_at_s") is not None
            else math.inf
            for r in runs
        ]
        reached = [r.get("time_to_target_s") is not None and bool(r.get("steps_to_target")) for r in runs]
        return np.asarray(values, dtype=float), np.asarray(reached, dtype=bool)
    values = [float(r["time_per_step_s"]) for r in runs if r.get("time_per_step_s")]
    return np.asarray(values, dtype=float), np.ones(len(values), dtype=bool)


def _interval(low: float, high: float) -> list[float | None]:
    return [None if math.isnan(low) else float(low), None if math.isnan(high) else float(high)]


def measured_factors(comparison: dict) -> dict:
    """What the runs measured of each factor, on the headline's censored basis, with intervals at the
    comparison's confidence (bootstraps of the seeds, :func:`largestep.plan.censored.ratio_interval`).

    - steps: the baseline's Kaplan-Meier median steps to the target over the recommended arm's; where one median
      is only a bound (fewer than half the seeds reached the target), a bound ("at most" / "at least"), never a
      point; a bound at 0 or infinity (runs that ended without a time) is no measurement of steps at all;
    - time per step: the arms' median time over their median steps, recommended over baseline (the measured
      steps factor over it is the headline's speedup exactly); its interval resamples each run's whole-run
      time per step.
    """
    groups = comparison.get("groups") or []
    out = {"steps": None, "steps_interval": None, "steps_bound": None, "step_time": None, "step_time_interval": None}
    if len(groups) < 2:
        return out
    base, other = groups[0], groups[1]
    base_steps = base.get("steps_to_target_median") or {}
    steps = other.get("steps_to_target_median") or {}
    if base_steps.get("median") and steps.get("median"):
        out["steps"] = base_steps["median"] / steps["median"]
    elif base_steps.get("median") and steps.get("at_least") and math.isfinite(steps["at_least"]):
        out["steps"], out["steps_bound"] = base_steps["median"] / steps["at_least"], "at most"
    elif steps.get("median") and base_steps.get("at_least") and math.isfinite(base_steps["at_least"]):
        out["steps"], out["steps_bound"] = base_steps["at_least"] / steps["median"], "at least"
    confidence = comparison.get("confidence", 0.9)
    (bv, br), (ov, orr) = _arm(base, "steps"), _arm(other, "steps")
    if len(bv) >= 2 and len(ov) >= 2 and out["steps"] is not None:
        ends = ratio_interval(bv, br, ov, orr, confidence)
        out["steps_interval"] = _interval(float(ends["low"]), float(ends["high"]))
    base_time = (base.get("time_to_target") or {}).get("median_s")
    time = (other.get("time_to_target") or {}).get("median_s")
    if base_time and time and base_steps.get("median") and steps.get("median"):
        out["step_time"] = (time / steps["median"]) / (base_time / base_steps["median"])
    (bt, btr), (ot, otr) = _arm(base, "time"), _arm(other, "time")
    if len(bt) >= 2 and len(ot) >= 2 and out["step_time"] is not None:
        ends = ratio_interval(ot, otr, bt, btr, confidence)  # the recommended arm's over the baseline's
        out["step_time_interval"] = _interval(float(ends["low"]), float(ends["high"]))
    return out


def model_of(rec: dict) -> StepsModel:
    """The raw steps model a recommendation document was made with (documents from before curves and
    corrections: its single noise estimate, else perfect scaling)."""
    stored = rec.get("steps_model") or {}
    if stored.get("kind") == "curve":
        return StepsModel(
            "curve",
            tuple(stored["fractions"]),
            tuple(stored["scales"]),
            tuple(tuple(i) if i else None for i in stored.get("intervals") or [None] * len(stored["scales"])),
            stored.get("source_id"),
        )
    if rec.get("noise_scale"):
        return StepsModel.from_estimate(rec["noise_scale"], rec.get("noise_interval"), rec.get("noise_id"))
    return StepsModel.perfect()


def verification_id(baseline_runs: list[str], recommended_runs: list[str]) -> str:
    """The same runs compared make the same verification, whoever compared them (an autopilot, `compare`)."""
    text = ",".join(sorted(baseline_runs)) + "|" + ",".join(sorted(recommended_runs))
    return "ver-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def verified(comparison: dict) -> bool:
    """A verified pair: the recommended arm called faster (its interval above 1 and the exact test agreeing)
    with a quality equivalent or better: the headline's success box."""
    groups = comparison.get("groups") or []
    if len(groups) < 2:
        return False
    word = (groups[1].get("verdict") or {}).get("word")
    return word == FASTER and (groups[1].get("quality") or {}).get("verdict") in VERIFIED_QUALITY


def _failed_why(comparison: dict) -> str | None:
    groups = comparison.get("groups") or []
    if len(groups) < 2:
        return "no comparison"
    if verified(comparison):
        return None
    other = groups[1]
    quality = (other.get("quality") or {}).get("verdict")
    verdict = other.get("verdict") or {}
    parts = []
    if verdict.get("word") != FASTER:
        parts.append(f"speed: {verdict.get('cell') or verdict.get('word') or 'not measured'}")
    if quality not in VERIFIED_QUALITY:
        parts.append(f"quality: {quality or 'not compared'}")
    return "; ".join(parts)


def _candidate(rec: dict, batch: int) -> dict:
    return next((c for c in rec.get("candidates") or [] if c["batch_size"] == batch), {})


def verification_point(
    rec: dict,
    comparison: dict,
    *,
    source: str,
    created_at: float,
    autopilot_id: str | None = None,
    attempt: int = 1,
    device_name: str | None = None,
) -> dict:
    """One calibration point: a ``verifications`` row (see the migration m016) from a recommendation document and
    the comparison of its baseline (the first group) and recommended (the second) runs."""
    groups = comparison.get("groups") or []
    base_runs = [r["id"] for r in (groups[0].get("runs") or [])] if groups else []
    rec_runs = [r["id"] for r in (groups[1].get("runs") or [])] if len(groups) > 1 else []
    b0, b = rec["baseline"]["batch_size"], rec["batch_size"]
    chosen, baseline = _candidate(rec, b), _candidate(rec, b0)
    speed = rec.get("predicted_speedup") or {}
    raw = speed.get("raw") or {}
    model = model_of(rec)
    predicted_interval = speed.get("time_to_target_interval") or [None, None]
    raw_interval = raw.get("time_to_target_interval") or predicted_interval
    bias = rec.get("step_time_bias") or 1.0  # the runs' time per step over the profile's, as earlier runs measured
    step_time = (
        chosen["step_time_s"] / baseline["step_time_s"] * bias
        if chosen.get("step_time_s") and baseline.get("step_time_s")
        else None
    )
    predicted_steps = chosen.get("steps_factor") or model.factor(b0, b)
    measured = measured_factors(comparison)
    other = groups[1] if len(groups) > 1 else {}
    bound = other.get("speedup_bound") or {}
    measured_speedup = other.get("speedup") if other.get("speedup") is not None else bound.get("value")
    measured_interval = other.get("speedup_interval") or [None, None]
    steps_interval = measured["steps_interval"] or [None, None]
    point = {
        "id": verification_id(base_runs, rec_runs),
        "source": source,
        "autopilot_id": autopilot_id,
        "attempt": attempt,
        "recommendation_id": rec["recommendation_id"],
        "workload": rec.get("workload"),
        "device_id": (rec.get("device") or {}).get("id"),
        "device_name": device_name or (rec.get("device") or {}).get("name"),
        "created_at": created_at,
        "baseline_batch": b0,
        "batch_size": b,
        "rule": rec.get("rule"),
        "learning_rate": rec.get("learning_rate"),
        "predicted_speedup": speed.get("time_to_target"),
        "predicted_low": predicted_interval[0],
        "predicted_high": predicted_interval[1],
        "raw_speedup": raw.get("time_to_target", speed.get("time_to_target")),
        "raw_low": raw_interval[0],
        "raw_high": raw_interval[1],
        "predicted_steps": predicted_steps,
        "predicted_steps_low": (chosen.get("steps_interval") or [None, None])[0],
        "predicted_steps_high": (chosen.get("steps_interval") or [None, None])[1],
        "raw_steps": chosen.get("raw_steps_factor") or model.factor(b0, b),
        "predicted_step_time": step_time,
        "step_time_bias": bias,
        "predicted_step_time_low": (chosen.get("step_time_interval") or [None, None])[0],
        "predicted_step_time_high": (chosen.get("step_time_interval") or [None, None])[1],
        "measured_speedup": _finite(measured_speedup),
        "measured_low": measured_interval[0],
        "measured_high": measured_interval[1],
        "measured_bound": bound.get("kind"),
        "measured_steps": _finite(measured["steps"]),
        "measured_steps_low": steps_interval[0],
        "measured_steps_high": steps_interval[1],
        "steps_bound": measured["steps_bound"],
        "measured_step_time": measured["step_time"],
        "measured_step_time_low": (measured["step_time_interval"] or [None, None])[0],
        "measured_step_time_high": (measured["step_time_interval"] or [None, None])[1],
        "verdict": (other.get("verdict") or {}).get("word"),
        "quality": (other.get("quality") or {}).get("verdict"),
        "verified": verified(comparison),
        "failed_why": _failed_why(comparison),
        "noise_model": model.kind,
        "b_simple": model.single,
        "baseline_runs": base_runs,
        "recommended_runs": rec_runs,
        "comparison": comparison,
    }
    point.update(_implied(model, measured, b0, b))
    return point


def _finite(value):
    return None if value is None or not math.isfinite(value) else float(value)


def _implied(model: StepsModel, measured: dict, b0: int, b: int) -> dict:
    """The critical batch the measured steps factor implies, with its interval, the correction factor it means for
    the model, and in words what was learned (or why nothing was)."""
    out = {
        "implied_b_crit": None,
        "b_crit_low": None,
        "b_crit_high": None,
        "ratio": None,
        "ratio_low": None,
        "ratio_high": None,
        "learned": None,
    }
    steps, bound = measured["steps"], measured["steps_bound"]
    if b <= b0:
        out["learned"] = "nothing about the noise scale: the recommended batch is the baseline's"
        return out
    if steps is None:
        out["learned"] = (
            "nothing about the noise scale: the recommended runs ended without reaching the target or "
            "a training time (diverged or crashed), which says more about the learning rate than steps"
        )
        return out
    low, high = measured["steps_interval"] or (None, None)
    if bound == "at most":
        low, high = None, steps
    elif bound == "at least":
        low, high = steps, None
    critical = implied_critical_batch(steps, b0, b)
    critical_low = implied_critical_batch(low, b0, b) if low is not None else None
    critical_high = implied_critical_batch(high, b0, b) if high is not None else None
    out.update(implied_b_crit=_plain(critical), b_crit_low=_plain(critical_low), b_crit_high=_plain(critical_high))
    ratio = implied_correction(model, steps, b0, b)
    if ratio is not None:
        ratio_low = implied_correction(model, low, b0, b) if low is not None else None
        ratio_high = implied_correction(model, high, b0, b) if high is not None else None
        out.update(ratio=_plain(ratio), ratio_low=_plain(ratio_low), ratio_high=_plain(ratio_high))
    span = f"{_number(critical_low)} to {_number(critical_high)}"
    what = {"at most": "at most ", "at least": "at least "}.get(bound, "")
    text = f"the runs behaved as if the critical batch were {what}{_number(critical)} (interval {span})"
    if ratio is not None and model.single is not None:
        text += f": {what}{_number(ratio, 2)}× the measured B_simple {model.single:,.0f}"
    elif ratio is not None:
        text += f": the noise curve scaled {what}{_number(ratio, 2)}×"
    out["learned"] = text
    return out


def _plain(value):
    """inf kept as a number (it means perfect scaling); NaN as None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _number(value, digits: int = 0) -> str:
    if value is None:
        return "open"
    if math.isinf(value):
        return "unbounded"
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


# -- the correction a later recommendation uses ------------------------------------------------------------------


@dataclass(frozen=True)
class Correction:
    """The noise model's correction from earlier verifications on the same workload and device.

    ``factor``: the pooled B_crit/B_simple (the median of :meth:`draws`), by which every noise scale of the model
    is multiplied; ``absolute``: the model had no noise estimate (perfect scaling assumed), so ``factor`` is a
    critical batch itself. Each verification contributes its implied value and interval (a bound: a one-sided
    interval), and a draw picks one verification and then a value within its interval, as the step-time bias is
    drawn from the runs seen."""

    factor: float
    interval: list[float | None]
    absolute: bool
    verification_ids: tuple[str, ...]
    points: tuple[tuple[float, float | None, float | None], ...]

    @property
    def verifications(self) -> int:
        return len(self.verification_ids)

    def draws(self, draws: int, rng) -> np.ndarray:
        which = rng.integers(0, len(self.points), size=draws)
        out = np.empty(draws)
        for index, (point, low, high) in enumerate(self.points):
            chosen = which == index
            # an unbounded point (steps cut as fast as the batch grew) is no evidence against the raw model (1x)
            anchor = None if self.absolute else 1.0
            out[chosen] = _point_draws(point, low, high, int(chosen.sum()), rng, anchor)
        return out

    def describe(self) -> str:
        n = self.verifications
        span = interval_text(*self.interval).replace("×", "")
        if self.absolute:
            return (
                f"B_crit ≈ {_number(self.factor)} (90% interval {span}) implied by {n} verification"
                f"{'' if n == 1 else 's'} on this workload and device"
            )
        return (
            f"B_crit ≈ {self.factor:.2f}× B_simple (90% interval {interval_text(*self.interval)}) implied by {n} "
            f"verification"
            f"{'' if n == 1 else 's'} on this workload and device"
        )

    def as_dict(self) -> dict:
        return {
            "factor": _plain(self.factor),
            "interval": self.interval,
            "absolute": self.absolute,
            "verifications": self.verifications,
            "verification_ids": list(self.verification_ids),
            "points": [list(p) for p in self.points],
            "text": self.describe(),
        }

    @classmethod
    def of(cls, stored: dict | None) -> "Correction | None":
        """A correction as a recommendation document stores it (:meth:`as_dict`)."""
        if not stored or stored.get("factor") is None or not stored.get("points"):
            return None
        return cls(
            float(stored["factor"]),
            list(stored["interval"]),
            bool(stored["absolute"]),
            tuple(stored["verification_ids"]),
            tuple(tuple(p) for p in stored["points"]),
        )


def _point_draws(point: float, low: float | None, high: float | None, n: int, rng,
                 anchor: float | None = None) -> np.ndarray:  # fmt: skip
    """Draws of one verification's value through its point and interval (a two-piece log-normal, as a noise
    estimate's); a bound's closed end a hair from its point. ``anchor``: where an unbounded point is centred
    when its interval's low end lies below it (the raw model's own value); None: at that low end."""
    if n == 0:
        return np.empty(0)
    if math.isinf(point):  # perfect scaling measured: at least the interval's low end
        if low is None or not math.isfinite(low) or low <= 0:
            return np.full(n, np.inf)
        if anchor is not None and anchor > low:
            point, high = anchor, None
        else:
            point, high = low, None
            low = low * (1 - _TIGHT)
    if point <= 0:  # no steps saved: as good as nothing, up to what the interval allows
        if not high or not math.isfinite(high):
            return np.zeros(n)
        point, low = high * 1e-3, None
    high_end = None if high is None or math.isinf(high) else max(high, point * (1 + _TIGHT))
    low_end = None if low is None or low <= 0 else min(low, point * (1 - _TIGHT))
    return noise_draws(point, (low_end, high_end), n, rng)


def correction_from(points: list[dict], model: StepsModel, seed: int = 0) -> Correction | None:
    """The pooled correction of ``model`` from verification points (rows of the verifications table) on its
    workload and device; None when none of them measured the steps factor."""
    used = []
    for p in points:
        if model.perfect_scaling:
            value, low, high = p.get("implied_b_crit"), p.get("b_crit_low"), p.get("b_crit_high")
        else:
            value, low, high = p.get("ratio"), p.get("ratio_low"), p.get("ratio_high")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        used.append((p["id"], (float(value), low, high)))
    if not used:
        return None
    probe = Correction(1.0, [None, None], model.perfect_scaling, tuple(i for i, _ in used), tuple(v for _, v in used))
    draws = probe.draws(CORRECTION_DRAWS, np.random.default_rng(seed))
    with np.errstate(invalid="ignore"):  # an unbounded verification draws infinities: a quantile among them is inf
        median = float(np.quantile(draws, 0.5))
        low, high = np.quantile(draws, [0.05, 0.95])
    interval = [float(low) if low > 0 else None, float(high) if math.isfinite(high) else None]
    return Correction(median, interval, model.perfect_scaling, probe.verification_ids, probe.points)


# -- how stable the choice is, and what to try after a failure ---------------------------------------------------


def indistinguishable(rec: dict) -> list[int]:
    """The eligible batches (the chosen one among them) whose predicted speedup lies within the chosen one's
    prediction interval: the model cannot tell them apart."""
    chosen = _candidate(rec, rec["batch_size"])
    interval = chosen.get("speedup_interval")
    if not interval:
        return [rec["batch_size"]]
    low, high = interval
    return sorted(
        c["batch_size"]
        for c in rec["candidates"]
        if c.get("eligible")
        and c.get("speedup_time_to_target")
        and (c["batch_size"] == rec["batch_size"] or low <= c["speedup_time_to_target"] <= high)
    )


def indistinguishable_text(rec: dict, batches: list[int]) -> str | None:
    """ "512 and 1024 are indistinguishable here: ..."; None when the choice stands alone."""
    if len(batches) < 2:
        return None
    chosen = _candidate(rec, rec["batch_size"])
    names = ", ".join(str(b) for b in batches[:-1]) + f" and {batches[-1]}"
    return (
        f"{names} are indistinguishable here: each one's predicted speedup lies within batch {rec['batch_size']}'s "
        f"90% prediction interval ({interval_text(*chosen['speedup_interval'])}); the choice among them rests on "
        f"the ranking's lower ends, not on a difference the model can show"
    )


def next_attempt(rec: dict, tried: list[tuple[int, str]], last: dict) -> tuple[int, str, str] | None:
    """After a verification that failed, the pair `--until-verified` tries next: (batch, rule, why), or None.

    ``rec``: the recommendation re-ranked on the model corrected by every verification so far; ``tried``: the
    (batch, rule) pairs verified already; ``last``: the failed verification's point. A quality that was worse,
    seeds that failed, or runs that diverged under the linear rule: the square-root rule's smaller rate at the
    same batch first. Otherwise (or once that was tried) the best-ranked smaller batch, on the corrected model's
    lower end, whose interval still lies above the baseline's; None when no such batch is left."""
    batch, rule = last["batch_size"], last.get("rule") or rec.get("rule") or "linear"
    quality_failed = last.get("quality") in ("worse", QUALITY_FAILED) or (
        last.get("measured_bound") == "at most" and last.get("implied_b_crit") is None
    )
    if quality_failed and rule == "linear" and (batch, "sqrt") not in tried:
        return (
            batch,
            "sqrt",
            (
                f"batch {batch} under the linear rule lost quality or diverged: the square-root rule's "
                f"smaller learning rate at the same batch"
            ),
        )
    b0 = rec["baseline"]["batch_size"]
    smallest = min(b for b, _ in tried)
    remaining = [
        c
        for c in rec["candidates"]
        if c.get("eligible")
        and b0 < c["batch_size"] < smallest
        and (c["batch_size"], rule) not in tried
        and c.get("speedup_interval")
    ]
    remaining.sort(key=lambda c: (-c["speedup_interval"][0], c["batch_size"]))
    if not remaining or remaining[0]["speedup_interval"][0] <= 1:
        return None
    best = remaining[0]
    return (
        best["batch_size"],
        rule,
        (
            f"the corrected model ranks batch {best['batch_size']} next among the smaller "
            f"batches (predicted {best['speedup_time_to_target']:.2f}×, 90% prediction "
            f"interval {interval_text(*best['speedup_interval'])})"
        ),
    )
