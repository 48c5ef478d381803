"""Recommend the batch/learning-rate pair predicted to reach the target fastest, and say why.

From a stored profile (measured step times) and, where available, the gradient noise scale:

- steps to a target: S(B) = S_min (1 + B_noise / B)  (McCandlish et al. 2018)
- time to target:    T(B) = S(B) t(B)
- predicted speedup of B over the baseline B0: [(1 + B_n/B0) / (1 + B_n/B)] t(B0) / t(B)
- learning rate: linear rule lr0 B/B0 (lr/batch fixed; Goyal et al. 2017, Smith et al. 2021),
  square-root rule lr0 sqrt(B/B0) for adaptive optimizers (Malladi et al. 2022), or the noise rule
  lr0 (1 + B_noise/B0)/(1 + B_noise/B): McCandlish et al.'s optimal SGD rate eps_max/(1 + B_noise/B),
  calibrated at the baseline, which grows almost linearly below B_noise and stops growing past it
- prediction interval: the predicted speedup's spread over what it is uncertain of (the noise scale
  within its bootstrap interval, each step time as a mean over the profile's visits, and the step-time
  bias earlier runs measured against their profile), by Monte-Carlo draws; candidates are ranked by the
  interval's lower end, so a noisy candidate does not win on its point estimate alone
- warm-up: gradual and linear over a number of samples that does not shrink as B grows.

Without a noise-scale estimate it assumes perfect scaling (S(B) B constant) up to the saturation
batch and says so. Every candidate is a batch the profile measured, never an extrapolation.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np

from .. import curve as curve_module
from ..about import __version__
from ..errors import UnusableProfile, UsageError
from ..format import format_bytes
from ..units import INT64_MAX, check_int
from .steps import NOISE_CONFIDENCE, StepsModel, noise_draws, scaled_noise, steps_factor_draws  # noqa: F401

__all__ = [
    "RecommendConfig",
    "Candidate",
    "recommend",
    "scale_lr",
    "warmup_steps",
    "memory_safe_batches",
    "SECONDS_PER_DAY",
    "RULES",
    "step_time",
    "accepted_load_note",
    "prediction_draws",
    "PREDICTION_COVERAGE",
    "noise_draws",
    "step_time_draws",
    "step_time_blocks",
    "prediction_interval",
    "PredictionDraws",
    "model_factor",
    "steps_model",
    "choose",
    "model_text",
]

RULES = ("linear", "sqrt", "noise")
SECONDS_PER_DAY = 86_400.0
TIE_SHARE = (
    0.05  # candidates within 5% of the best lower end of the predicted speedup count as tied; the smaller batch wins
)
PREDICTION_COVERAGE = 0.90  # of every predicted speedup's interval; candidates rank by its lower end
PREDICTION_DRAWS = 4000  # Monte-Carlo draws of what the prediction is uncertain of
MIN_BLOCKS = 4  # a point timed in fewer visits is resampled as this many contiguous blocks of its steps


@dataclass(frozen=True)
class RecommendConfig:
    baseline_batch: int | None = None  # default: the workload's, as stored with the profile
    baseline_lr: float | None = None  # default: the workload's
    rule: str = "linear"  # "linear" (lr/batch fixed) | "sqrt"
    noise_scale: float | None = None  # B_noise; None: assume perfect scaling up to saturation
    memory_headroom: float = 0.9  # candidates use at most this share of the device's memory
    max_lr: float | None = None  # never recommend a learning rate above this
    warmup_samples: int | None = None  # default: the workload's warm-up, in samples
    accept_load: bool = False  # use a profile that cannot be trusted (under load, not physics); the
    # recommendation then carries why it could not be (accepted_load)

    @classmethod
    def from_options(
        cls,
        baseline_batch=None,
        baseline_lr=None,
        rule="linear",
        noise_scale=None,
        memory_headroom=0.9,
        max_lr=None,
        warmup_samples=None,
        accept_load=False,
    ) -> "RecommendConfig":
        """The config `largestep recommend`'s options ask for (text, as typed) or ``largestep.recommend``'s
        (numbers), validated: a one-line UsageError naming the option otherwise."""
        from ..units import parse_count, parse_float, parse_positive_int

        config = cls(
            baseline_batch=parse_positive_int(baseline_batch, "--baseline-batch")
            if baseline_batch is not None
            else None,
            baseline_lr=parse_float(baseline_lr, "--baseline-lr"),
            rule=rule,
            noise_scale=parse_float(noise_scale, "--noise-scale"),
            memory_headroom=parse_float(memory_headroom, "--memory-headroom"),
            max_lr=parse_float(max_lr, "--max-lr"),
            warmup_samples=parse_count(warmup_samples, "--warmup-samples") if warmup_samples is not None else None,
            accept_load=bool(accept_load),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.baseline_batch is not None:
            check_int(self.baseline_batch, "--baseline-batch")
        if self.baseline_lr is not None and not (self.baseline_lr > 0 and math.isfinite(self.baseline_lr)):
            raise UsageError(f"--baseline-lr must be a positive number, not {self.baseline_lr!r}")
        if self.rule not in RULES:
            raise UsageError(f"--rule must be linear, sqrt or noise, not {self.rule!r}")
        if self.noise_scale is not None and not (self.noise_scale > 0 and math.isfinite(self.noise_scale)):
            raise UsageError(f"--noise-scale must be a positive number, not {self.noise_scale!r}")
        if not 0 < self.memory_headroom <= 1:
            raise UsageError(f"--memory-headroom must lie in (0, 1], not {self.memory_headroom!r}")
        if self.max_lr is not None and not (self.max_lr > 0 and math.isfinite(self.max_lr)):
            raise UsageError(f"--max-lr must be a positive number, not {self.max_lr!r}")
        if self.warmup_samples is not None:
            check_int(self.warmup_samples, "--warmup-samples", low=0, high=INT64_MAX)


@dataclass(frozen=True)
class Candidate:
    batch_size: int
    learning_rate: float
    step_time_s: float
    samples_per_s: float
    peak_memory_bytes: int | None
    time_ratio: float | None  # predicted T(B) / T(B0); None when not eligible
    speedup_time_to_target: float | None  # 1 / time_ratio
    speedup_throughput: float  # (B / t(B)) / (B0 / t(B0))
    run_time_s: float | None  # predicted wall time of one training run
    eligible: bool
    excluded: str | None = None  # why not eligible, in words
    rank: int | None = None  # by the lower end of speedup_interval
    speedup_interval: list[float] | None = None  # PREDICTION_COVERAGE prediction interval of the speedup
    step_time_blocks: list[float] | None = None  # the visits' median step times its interval resampled
    steps_factor: float | None = None  # predicted S(B0)/S(B) on the model ranked on (corrected, if any)
    steps_interval: list[float] | None = None  # ... its prediction interval
    raw_steps_factor: float | None = None  # ... on the raw noise model
    raw_speedup: float | None = None  # the raw noise model's predicted speedup, beside the ranked one
    raw_interval: list[float] | None = None
    step_time_interval: list[float] | None = None  # t(B)/t(B0) with the measured step-time bias: its interval


def _over_memory(point: dict, memory_limit: float | None) -> bool:
    return memory_limit is not None and (point.get("peak_memory_bytes") or 0) > memory_limit


def memory_safe_batches(profile: dict, memory_headroom: float = 0.9) -> tuple[int, ...]:
    """The batches a profile measured whose peak memory stays within ``memory_headroom`` of the device's:
    the sizes a run may move between without trying an unmeasured one."""
    total = profile.get("device_total_memory_bytes")
    limit = total * memory_headroom if total else None
    return tuple(
        sorted(
            p["batch_size"]
            for p in profile["points"]
            if p["status"] == "ok" and p.get("median_s") and not _over_memory(p, limit)
        )
    )


def scale_lr(
    baseline_lr: float, baseline_batch: int, batch: int, rule: str = "linear", noise_scale: float | None = None
) -> float:
    """The learning rate for ``batch``: linear keeps lr/batch fixed; sqrt scales with sqrt(B/B0); noise is
    McCandlish et al.'s eps_max/(1 + B_noise/B) with eps_max set so the baseline keeps its rate."""
    ratio = batch / baseline_batch
    if rule == "noise":
        if noise_scale is None:
            raise UsageError(
                "--rule noise needs a gradient noise scale: estimate one (`largestep noise`, "
                "--estimate-noise) or give --noise-scale"
            )
        return baseline_lr * (1 + noise_scale / baseline_batch) / (1 + noise_scale / batch)
    return baseline_lr * (ratio if rule == "linear" else math.sqrt(ratio))


def _decay_samples(profile: dict) -> int | None:
    """WSD's final decay in samples: the workload's, else the last fifth of its run (as training does)."""
    if profile.get("decay_samples") is not None or profile.get("schedule") != "wsd":
        return profile.get("decay_samples")
    if profile.get("epochs") and profile.get("n_train"):
        return round(WSD_DEFAULT_DECAY * profile["epochs"] * profile["n_train"])
    return None


WSD_DEFAULT_DECAY = 0.2  # as largestep.measure.train: plan and measure do not import each other


def warmup_steps(warmup_samples: int, batch: int) -> int:
    """Steps that cover ``warmup_samples`` at ``batch``: the warm-up keeps its length in samples."""
    return math.ceil(warmup_samples / batch) if warmup_samples > 0 else 0


def steps_factor(batch: int, noise_scale: float | None) -> float:
    """S(B)/S_min. Perfect scaling (no noise estimate) is the limit B_noise -> infinity, S ~ 1/B."""
    if noise_scale is None:
        return 1.0 / batch
    return 1.0 + noise_scale / batch


def step_time_blocks(point: dict) -> list[float] | None:
    """The medians of a profile point's visits (or, for a point timed in fewer than MIN_BLOCKS visits, of
    that many contiguous blocks of its steps); None without raw step times."""
    times = np.asarray(point.get("step_times_s") or [], dtype=float)
    times = times[np.isfinite(times)]
    blocks = max(int(point.get("visits") or 1), MIN_BLOCKS)
    if len(times) < blocks:
        return None
    return [float(np.median(chunk)) for chunk in np.array_split(times, blocks)]


def step_time_draws(point: dict, draws: int, rng) -> np.ndarray:
    """Draws of a batch's step time as a mean over the profile's visits: the visit medians
    (:func:`step_time_blocks`, or a candidate's stored ``step_time_blocks``) resampled, averaged and scaled to
    the point's step time (its estimate: :func:`step_time`). The spread between visits, not between single
    steps, is what one statistic of the steps does not know. Without raw step times: a normal approximation
    of the median's error from the quartiles, around the step time."""
    median = point.get("step_time_s") or step_time(point)
    blocks = point.get("step_time_blocks") or step_time_blocks(point)
    if blocks:
        means = np.asarray(blocks, dtype=float)
        picks = rng.integers(0, len(means), size=(draws, len(means)))
        return median * means[picks].mean(axis=1) / means.mean()
    spread = ((point.get("p75_s") or median) - (point.get("p25_s") or median)) / 1.349
    error = 1.2533 * spread / math.sqrt(max(int(point.get("n") or 1), 1))
    return np.maximum(median + error * rng.standard_normal(draws), median * 1e-3)


@dataclass(frozen=True)
class PredictionDraws:
    """Monte-Carlo draws of each measured batch's two factors over the baseline: the steps factor S(B0)/S(B) under
    the raw noise model and (with a correction) the corrected one, and the time per step t(B)/t(B0) with the
    measured step-time bias. One draw shares its noise scales, step times, bias and correction over all batches,
    so candidates are compared on the same draws."""

    raw_steps: dict[int, np.ndarray]
    steps: dict[int, np.ndarray]  # the model ranked on: corrected where there is a correction, else raw
    step_time: dict[int, np.ndarray]

    def speedup(self, batch: int, raw: bool = False) -> np.ndarray:
        return (self.raw_steps if raw else self.steps)[batch] / self.step_time[batch]


def prediction_draws(
    ok: dict,
    b0: int,
    model: StepsModel,
    biases: list[float] | None = None,
    correction=None,
    draws: int = PREDICTION_DRAWS,
    seed: int = 0,
) -> PredictionDraws:
    """Monte-Carlo draws of every measured batch's predicted factors over ``b0`` (``ok``: batch -> point).

    One draw takes the model's noise scales (one, or a curve's points), one step time for each batch, one
    step-time bias (a ratio earlier runs measured of their time-per-step factor over the profile's, drawn from
    those seen) and, with a ``correction`` (:class:`largestep.plan.calibration.Correction`), one correction."""
    rng = np.random.default_rng(seed)
    noise = model.noise_draws(draws, rng)
    times = {batch: step_time_draws(point, draws, rng) for batch, point in sorted(ok.items())}
    bias = rng.choice(np.asarray(biases, dtype=float), size=draws) if biases else np.ones(draws)
    raw = {batch: steps_factor_draws(noise, b0, batch) for batch in times}
    steps = raw
    if correction is not None:
        factor = correction.draws(draws, rng)
        corrected = factor[None, :] if correction.absolute else scaled_noise(noise, factor)
        steps = {batch: steps_factor_draws(corrected, b0, batch) for batch in times}
    # the bias is of a step-time ratio between two batches: the baseline's over itself stays 1
    step_time = {batch: times[batch] / times[b0] * (bias if batch != b0 else 1.0) for batch in times}
    return PredictionDraws(raw_steps=raw, steps=steps, step_time=step_time)


def model_factor(model: StepsModel, correction, b0: int, b: int) -> float:
    """The point steps factor S(B0)/S(B) of ``model``, corrected by ``correction`` where one is given."""
    if correction is None:
        return model.factor(b0, b)
    if correction.absolute:
        return StepsModel.from_estimate(correction.factor).factor(b0, b)
    return model.factor(b0, b, correction.factor)


def prediction_interval(draws: np.ndarray) -> list[float]:
    """The PREDICTION_COVERAGE interval (equal tails) of Monte-Carlo draws."""
    tail = (1 - PREDICTION_COVERAGE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return [float(low), float(high)]


def steps_model(
    noise_scale: float | None, noise_interval: tuple | None, noise_id: str | None, curve: list[dict] | None
) -> StepsModel:
    """The raw model of steps a recommendation ranks with: the noise curve where one with two reliable points is
    given (the schedule planner's), else the single estimate, else perfect scaling."""
    from_curve = StepsModel.from_curve(curve) if curve else None
    if from_curve is not None:
        return from_curve
    if noise_scale is not None:
        return StepsModel.from_estimate(noise_scale, noise_interval, noise_id)
    return StepsModel.perfect()


def recommend(
    profile: dict,
    config: RecommendConfig,
    noise: dict | None = None,
    biases: list[float] | None = None,
    curve: list[dict] | None = None,
    calibration: list[dict] | None = None,
) -> dict:
    """The recommendation document for a stored profile (see :func:`largestep.store.load_profile`).

    ``noise`` is a stored noise estimate; its ``b_simple`` is used unless ``config.noise_scale``
    is given. ``biases``: earlier runs' measured time-per-step factor over the profile's
    (:func:`largestep.store.step_time_biases`): their median scales every predicted time per step, and the
    prediction interval draws from them all.
    ``curve``: a noise curve (points of :func:`largestep.store.load_noise_curve`); where it has two reliable
    points the steps are priced over it, as the schedule planner prices them (unless ``config.noise_scale`` is
    given). ``calibration``: earlier verifications on this workload and device (rows of
    :func:`largestep.store.verification_points`); their measured steps correct the noise model, candidates are
    ranked on the corrected model and the raw prediction is kept beside.
    Raises UsageError when the profile cannot support a recommendation.
    """
    from .calibration import indistinguishable, indistinguishable_text

    # -- the input: the measured batches, the baseline pair, and whether the profile can be trusted ----------------
    config.validate()
    ok, b0, lr0 = _measured(profile, config)
    refused = curve_module.refusal(profile)  # after the user's own input is checked: a typo is told first
    if refused is not None and not config.accept_load:
        raise UnusableProfile(refused, profile["id"])

    # -- the model of steps (noise scale or curve, corrected by earlier verifications) and the prediction's draws -
    basis = _basis(profile, config, ok, b0, lr0, noise, biases, curve, calibration)

    # -- candidates: each measured batch's rate, why it is excluded, its predictions and intervals (raw beside) ----
    candidates = [_candidate(basis, config, b) for b in sorted(ok)]

    # -- ranked on the prediction interval's lower end; the baseline stays at or past the saturation batch --------
    candidates, best, tied, chosen = _ranked(candidates)
    if basis.saturation is not None and b0 >= basis.saturation:
        chosen = next(c for c in candidates if c.batch_size == b0)

    # -- why, in plain words: what decided (memory, max lr, saturation, noise, a tie), the model, the profile ------
    reasons = _why(profile, config, basis, candidates, best, tied, chosen, refused)

    # -- the document, and the batches the model cannot tell apart from the chosen one ----------------------------
    rec = _with_chosen(_document(profile, config, basis, candidates, chosen, reasons, refused, biases), asdict(chosen))
    rec["indistinguishable"] = indistinguishable(rec)
    stable = indistinguishable_text(rec, rec["indistinguishable"])
    if stable:
        rec["reasons"].append(stable)
    return rec


@dataclass(frozen=True)
class _Basis:
    """What every candidate is priced on: the baseline pair, the model of steps (corrected by earlier verifications
    where there are any), the Monte-Carlo draws of the prediction, and the limits a candidate must keep."""

    ok: dict  # batch -> the profile's measured point
    b0: int
    lr0: float
    t0: float  # the baseline's step time
    noise_scale: float | None
    noise_id: str | None
    noise_interval: tuple | None
    model: StepsModel  # the raw model of steps
    correction: object  # a largestep.plan.calibration.Correction, or None
    perfect: bool  # nothing but the assumption of perfect scaling
    draws: PredictionDraws
    bias: float  # the runs' time per step over the profile's, as measured (their median)
    saturation: int | None
    memory_total: int | None
    memory_limit: float | None
    noisy_threshold: float
    train_samples: float  # the samples of one training run (0: unknown)


def _measured(profile: dict, config: RecommendConfig) -> tuple[dict, int, float]:
    """The profile's measured batches (batch -> point) and the baseline pair; a UsageError when it measured no
    batch, or not the baseline's."""
    ok = {p["batch_size"]: p for p in profile["points"] if p["status"] == "ok" and p.get("median_s")}
    if not ok:
        raise UsageError(f"profile {profile['id']} has no measured batch sizes; run `largestep profile` again")
    b0 = config.baseline_batch or profile.get("baseline_batch_size")
    lr0 = config.baseline_lr or profile.get("baseline_lr")
    if b0 not in ok:
        measured = ", ".join(str(b) for b in sorted(ok))
        raise UsageError(
            f"baseline batch {b0} was not measured in profile {profile['id']} (measured: {measured}); "
            f"profile it with --batch-sizes {b0},..."
        )
    return ok, b0, lr0


def _noise_scale(config: RecommendConfig, noise: dict | None) -> tuple[float | None, str | None, tuple | None]:
    """B_noise as given (--noise-scale), else the stored estimate's, with its id and bootstrap interval."""
    if config.noise_scale is None and noise is not None and noise.get("b_simple"):
        # ci_high None: unbounded above
        return float(noise["b_simple"]), noise.get("id"), (noise.get("ci_low"), noise.get("ci_high"))
    return config.noise_scale, None, None


def _basis(
    profile: dict,
    config: RecommendConfig,
    ok: dict,
    b0: int,
    lr0: float,
    noise: dict | None,
    biases: list[float] | None,
    curve: list[dict] | None,
    calibration: list[dict] | None,
) -> _Basis:
    """The model of steps a recommendation ranks on, corrected by ``calibration``, its draws, and the limits."""
    from .calibration import correction_from

    noise_scale, noise_id, noise_interval = _noise_scale(config, noise)
    if config.rule == "noise" and noise_scale is None:
        scale_lr(1.0, 1, 1, "noise")  # says how to get one
    model = steps_model(noise_scale, noise_interval, noise_id, curve if config.noise_scale is None else None)
    correction = correction_from(calibration, model) if calibration else None
    settings, memory_total = profile.get("config"), profile.get("device_total_memory_bytes")
    return _Basis(
        ok=ok,
        b0=b0,
        lr0=lr0,
        t0=step_time(ok[b0]),
        noise_scale=noise_scale,
        noise_id=noise_id,
        noise_interval=noise_interval,
        model=model,
        correction=correction,
        perfect=model.perfect_scaling and correction is None,
        draws=prediction_draws(ok, b0, model, biases, correction),
        bias=float(np.median(biases)) if biases else 1.0,
        saturation=profile.get("saturation_batch"),
        memory_total=memory_total,
        memory_limit=memory_total * config.memory_headroom if memory_total else None,
        noisy_threshold=(
            settings.get("noisy_iqr_ratio", curve_module.NOISY_IQR_RATIO)
            if isinstance(settings, dict)
            else curve_module.NOISY_IQR_RATIO
        ),
        train_samples=(profile.get("epochs") or 1) * (profile.get("n_train") or 0),
    )


def _excluded(basis: _Basis, config: RecommendConfig, b: int, point: dict, lr: float) -> str | None:
    """Why batch ``b`` cannot be recommended, in words (memory, --max-lr, saturation, noisy steps), or None."""
    if b < basis.b0:
        return "smaller than the baseline"
    if b == basis.b0:
        return None  # what the user runs today is always a candidate
    if _over_memory(point, basis.memory_limit):
        return f"peak memory {format_bytes(point['peak_memory_bytes'])} over {config.memory_headroom:.0%} of the device"
    if config.max_lr is not None and lr > config.max_lr * (1 + 1e-12):
        return f"learning rate {lr:.3g} above --max-lr {config.max_lr:g}"
    if basis.perfect and basis.saturation is not None and b > basis.saturation:
        return f"past the saturation batch {basis.saturation} (perfect scaling is only assumed up to it)"
    spread = _spread(point)
    if spread is not None and spread > basis.noisy_threshold:
        return (
            f"noisy: its steps spread {spread:.0%} of their median (IQR), above {basis.noisy_threshold:.0%}; "
            f"its step time is no figure to rank"
        )
    return None


def _candidate(basis: _Basis, config: RecommendConfig, b: int) -> Candidate:
    """Batch ``b`` as a candidate: its rate and step time, why it is excluded and, if it is not, its predicted
    speedup over the baseline with the intervals of it and of its two factors, the raw model's beside."""
    point, b0, t0, draws = basis.ok[b], basis.b0, basis.t0, basis.draws
    t = step_time(point)
    lr = scale_lr(basis.lr0, b0, b, config.rule, basis.noise_scale)
    excluded = _excluded(basis, config, b, point, lr)
    eligible = excluded is None
    factor, raw_factor = model_factor(basis.model, basis.correction, b0, b), basis.model.factor(b0, b)
    bias = basis.bias if b != b0 else 1.0  # a bias of the step-time ratio: none for the baseline over itself
    ratio = (t / t0) * bias / factor if eligible else None
    return Candidate(
        batch_size=b,
        learning_rate=lr,
        step_time_s=t,
        samples_per_s=b / t,
        peak_memory_bytes=point.get("peak_memory_bytes"),
        time_ratio=ratio,
        speedup_time_to_target=(1 / ratio) if ratio else None,
        speedup_throughput=(b / t) / (b0 / t0),
        run_time_s=basis.train_samples / b0 * t0 * ratio if basis.train_samples and eligible else None,
        eligible=eligible,
        excluded=excluded,
        speedup_interval=prediction_interval(draws.speedup(b)) if eligible else None,
        step_time_blocks=step_time_blocks(point),
        steps_factor=factor,
        steps_interval=prediction_interval(draws.steps[b]) if eligible else None,
        raw_steps_factor=raw_factor,
        raw_speedup=raw_factor * t0 / t / bias if eligible else None,
        raw_interval=prediction_interval(draws.speedup(b, raw=True)) if eligible else None,
        step_time_interval=prediction_interval(draws.step_time[b]) if eligible else None,
    )


def _ranked(candidates: list[Candidate]) -> tuple[list[Candidate], Candidate, list[Candidate], Candidate]:
    """The candidates with their ranks by the prediction interval's lower end (a candidate wins on what it is nearly
    sure to give), the best, those within TIE_SHARE of its lower end, and the chosen: the smallest of those."""
    eligible = sorted((c for c in candidates if c.eligible), key=lambda c: (-c.speedup_interval[0], c.batch_size))
    ranks = {c.batch_size: i + 1 for i, c in enumerate(eligible)}
    best = eligible[0]
    tied = [c for c in eligible if c.speedup_interval[0] >= best.speedup_interval[0] * (1 - TIE_SHARE)]
    chosen = min(tied, key=lambda c: c.batch_size)
    return [_with_rank(c, ranks.get(c.batch_size)) for c in candidates], best, tied, chosen


def _why(
    profile: dict,
    config: RecommendConfig,
    basis: _Basis,
    candidates: list[Candidate],
    best: Candidate,
    tied: list[Candidate],
    chosen: Candidate,
    refused: str | None,
) -> list[str]:
    """The recommendation's reasons, in order: an accepted load, an inconsistent profile, the corrected model, what
    decided, and the linear rule past the noise scale."""
    b0, saturation, noise_scale = basis.b0, basis.saturation, basis.noise_scale
    reasons: list[str] = []
    if saturation is not None and b0 >= saturation:
        reasons.append(
            f"the baseline batch {b0} is already at or past the saturation batch {saturation}: larger "
            f"batches barely raise throughput on this device, so the baseline stays as it is"
        )
    else:
        reasons += _reasons(candidates, chosen, best, tied, b0, saturation, basis.model, config, basis.memory_total)
    if basis.correction is not None:
        reasons.insert(0, _correction_reason(basis.model, basis.correction, chosen))
    uncertain = _uncertainty(profile)
    if uncertain:
        reasons.insert(0, uncertain)
    if refused is not None:
        reasons.insert(0, accepted_load_note(refused))
    if config.rule == "linear" and noise_scale is not None and chosen.batch_size > noise_scale:
        reasons.append(
            f"the linear rule scales the learning rate past the noise scale (batch {chosen.batch_size} "
            f"above B_noise ≈ {noise_scale:,.0f}), where McCandlish et al.'s optimal rate "
            f"eps_max/(1 + B_noise/B) has stopped growing: try --rule noise "
            f"({scale_lr(basis.lr0, b0, chosen.batch_size, 'noise', noise_scale):.3g} here) if the runs "
            f"diverge or lose quality"
        )
    return reasons


def _warmup_samples(profile: dict, config: RecommendConfig) -> int:
    """The warm-up in samples: --warmup-samples, else the workload's, stored with the profile; else the Workload
    default, 5% of an epoch."""
    if config.warmup_samples is not None:
        return config.warmup_samples
    return profile.get("warmup_samples") or (profile.get("n_train") or 0) // 20


def _steps_model_document(model) -> dict:
    """The model of steps a recommendation rests on, as its document keeps it."""
    intervals = [list(i) if i else None for i in model.intervals]
    return {
        "kind": model.kind,
        "fractions": list(model.fractions),
        "scales": list(model.scales),
        "intervals": intervals,
        "source_id": model.source_id,
        "text": model.describe(),
    }


def _document(profile: dict, config: RecommendConfig, basis: _Basis, candidates: list[Candidate], chosen: Candidate,
              reasons: list[str], refused: str | None, biases: list[float] | None) -> dict:  # fmt: skip
    """The recommendation document's fields, before those that follow from the chosen candidate."""
    b0, model, correction = basis.b0, basis.model, basis.correction
    baseline_run = basis.train_samples / b0 * basis.t0 if basis.train_samples else None
    run_times = {
        "baseline": baseline_run,
        "recommended": chosen.run_time_s if chosen.batch_size != b0 else baseline_run,
    }
    return {
        "recommendation_id": f"rec-{secrets.token_hex(4)}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "tool_version": __version__,
        "workload": profile.get("workload"),
        "workload_spec": profile.get("workload_spec"),
        "workload_options": profile.get("options") or {},
        "profile_id": profile["id"],
        "noise_id": basis.noise_id,
        "device": {
            "id": profile.get("device_id"),
            "name": profile.get("device_name"),
            "kind": profile.get("device_kind"),
        },
        "dtype": profile.get("dtype") or "fp32",
        "warmup_samples": int(_warmup_samples(profile, config)),
        # a data-parallel profile measured global batches over its ranks (config.nproc)
        "gradient_accumulation_steps": 1,
        "world_size": _world_size(profile),
        "rule": config.rule,
        "optimizer": profile.get("optimizer") or "adam",
        "weight_decay": profile.get("weight_decay") or 0.0,
        "epochs": profile.get("epochs"),
        "schedule": profile.get("schedule") or "constant",
        "decay_samples": _decay_samples(profile),
        "max_grad_norm": profile.get("max_grad_norm"),
        "baseline": {"batch_size": b0, "learning_rate": basis.lr0},
        "noise_scale": basis.noise_scale,
        "noise_interval": list(basis.noise_interval) if basis.noise_interval else None,
        "assumed_perfect_scaling": basis.perfect,
        "steps_model": _steps_model_document(model),
        "correction": correction.as_dict() if correction is not None else None,
        "saturation_batch": basis.saturation,
        "experiments_per_gpu_day": {name: SECONDS_PER_DAY / t if t else None for name, t in run_times.items()},
        "run_time_s": run_times,
        "candidates": [asdict(c) for c in candidates],
        "reasons": reasons,
        "uncertain": _uncertainty(profile),
        # the profile could not be trusted and the user accepted it: why, carried wherever this is shown
        "accepted_load": refused,
        "estimator": profile.get("estimator") or "median",
        # torch's threads the profile measured with (--threads), which the runs trained from it use too
        "threads": _profile_threads(profile),
        "stability": None,
        "interval_basis": _interval_basis(model, biases, correction),
        "step_time_bias": basis.bias,
    }


def _with_chosen(rec: dict, chosen: dict) -> dict:
    """The document's fields that follow from the chosen candidate: the pair, its warm-up and its prediction."""
    b0 = rec["baseline"]["batch_size"]
    coverage = PREDICTION_COVERAGE
    corrected = rec.get("correction") is not None
    baseline = chosen["batch_size"] == b0
    ranked = {
        "time_to_target": chosen.get("speedup_time_to_target") or 1.0,
        "time_to_target_interval": chosen.get("speedup_interval") or [1.0, 1.0],
    }
    raw = {
        "time_to_target": chosen.get("raw_speedup") or 1.0,
        "time_to_target_interval": chosen.get("raw_interval") or [1.0, 1.0],
    }
    run_time = rec.get("run_time_s") or {}
    return {
        **rec,
        "batch_size": chosen["batch_size"],
        "learning_rate": chosen["learning_rate"],
        "warmup_steps": warmup_steps(rec["warmup_samples"], chosen["batch_size"]),
        "micro_batch_size": chosen["batch_size"] // rec["world_size"],
        "predicted_speedup": {
            "throughput": chosen["speedup_throughput"],
            **ranked,
            # Monte-Carlo over the noise model, its correction, the profile's visits and measured bias
            "coverage": coverage,
            "interval_basis": rec["interval_basis"],
            "model": "corrected" if corrected else "raw",
            "raw": raw,
            "corrected": ranked if corrected else None,
            "steps_factor": {
                "predicted": chosen.get("steps_factor"),
                "interval": chosen.get("steps_interval"),
                "raw": chosen.get("raw_steps_factor"),
            },
            "step_time_factor": {
                "predicted": chosen["step_time_s"]
                / next(c["step_time_s"] for c in rec["candidates"] if c["batch_size"] == b0)
                * (rec.get("step_time_bias", 1.0) if chosen["batch_size"] != b0 else 1.0),
                "interval": chosen.get("step_time_interval"),
                "bias": rec.get("step_time_bias", 1.0),
            },
        },
        "run_time_s": {**run_time, "recommended": run_time.get("baseline") if baseline else chosen.get("run_time_s")},
    }


def choose(rec: dict, batch: int, rule: str, why: str) -> dict:
    """The recommendation with another of its measured, eligible candidates chosen (``rec`` made with ``rule``),
    as a document of its own: `--until-verified` trying the next pair. ``why``: the reason, first."""
    chosen = next((c for c in rec["candidates"] if c["batch_size"] == batch and c.get("eligible")), None)
    if chosen is None:
        raise UsageError(f"batch {batch} is not an eligible candidate of recommendation {rec['recommendation_id']}")
    out = _with_chosen(
        {
            **rec,
            "recommendation_id": f"rec-{secrets.token_hex(4)}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "rule": rule,
            "reasons": [why, *[r for r in rec["reasons"] if "indistinguishable" not in r]],
        },
        chosen,
    )
    from .calibration import indistinguishable

    per_day = out["run_time_s"]
    out["experiments_per_gpu_day"] = {key: SECONDS_PER_DAY / value if value else None for key, value in per_day.items()}
    out["indistinguishable"] = indistinguishable(out)
    return out


def model_text(rec: dict) -> str:
    """The noise model a recommendation ranked on, in words: "B_noise ≈ 1,234" or the curve, and the correction."""
    stored = rec.get("steps_model") or {}
    if not stored:
        return (
            "perfect scaling assumed (no noise-scale estimate)"
            if rec.get("assumed_perfect_scaling") or rec.get("noise_scale") is None
            else f"B_noise ≈ {rec['noise_scale']:,.0f}"
        )
    text = stored.get("text") or stored.get("kind")
    correction = rec.get("correction")
    if correction:
        text += f"; corrected: {correction['text']}"
    return text


def _correction_reason(model: StepsModel, correction, chosen: Candidate) -> str:
    if correction.absolute:
        corrected = f"B_noise ≈ {correction.factor:,.0f} where perfect scaling was assumed"
    elif model.single is not None:
        corrected = f"B_noise ≈ {model.single * correction.factor:,.0f} instead of the measured {model.single:,.0f}"
    else:
        corrected = f"the noise curve scaled ×{correction.factor:.2f}"
    raw = f"{chosen.raw_speedup:.2f}×" if chosen.raw_speedup else "-"
    return (
        f"corrected noise model: {correction.describe()}, so {corrected}; candidates are ranked on it (batch "
        f"{chosen.batch_size}: {chosen.speedup_time_to_target or 1:.2f}× corrected, {raw} on the raw model)"
    )


def step_time(point: dict) -> float:
    """A stored point's step time: its estimate (the profile's estimator), or its median in a profile
    stored before estimates."""
    return point.get("estimate_s") or point["median_s"]


def _spread(point: dict) -> float | None:
    p25, p75, median = point.get("p25_s"), point.get("p75_s"), point.get("median_s")
    return (p75 - p25) / median if p25 is not None and p75 is not None and median else None


def accepted_load_note(refused: str) -> str:
    """The line a recommendation made from an untrusted profile carries first, wherever it is shown."""
    why = refused.split(": ", 1)[1] if ": " in refused else refused
    why = why.split("; rerun on a quiet machine")[0]
    return f"accepted under load (--accept-load): {why}; its step times may not be the hardware's"


def _profile_threads(profile: dict) -> int | None:
    config = profile.get("config") or {}
    return config.get("threads") if isinstance(config, dict) else None


def _interval_basis(model: StepsModel, biases: list[float] | None, correction=None) -> str:
    """What the prediction interval resampled, in words."""
    parts = ["each step time as a mean over the profile's visits"]
    if model.perfect_scaling:
        parts.insert(0, "perfect scaling, as assumed")
    elif model.kind == "curve":
        parts.insert(0, "each point of the noise curve within its bootstrap interval")
    elif model.intervals[0]:
        parts.insert(0, "the noise scale within its bootstrap interval")
    else:
        parts.insert(0, "the noise scale as given (no interval: not resampled)")
    if correction is not None:
        parts.append(
            f"the noise model's correction within what {correction.verifications} verification(s) on this "
            f"workload and device measured"
        )
    parts.append(
        f"the step-time bias of {len(biases)} earlier verification(s) on this workload and device"
        if biases
        else "no measured step-time bias yet (no earlier runs on this workload and device)"
    )
    return "; ".join(parts)


def _uncertainty(profile: dict) -> str | None:
    """Why the ranking cannot be trusted as it stands (the profile was flagged inconsistent); None if it can."""
    if not profile.get("inconsistency"):
        return None
    return (
        f"uncertain: profile {profile['id']} stayed inconsistent after re-measuring ({profile['inconsistency']}), "
        f"so the ranking rests on step times that are not the hardware's; profile again on a quieter machine"
    )


def _world_size(profile: dict) -> int:
    """The ranks a profile's batches were split over (1 for a single-process profile)."""
    config = profile.get("config") or {}
    if isinstance(config, str):
        import json

        config = json.loads(config)
    return int(config.get("nproc") or 1)


def _with_rank(c: Candidate, rank: int | None) -> Candidate:
    from dataclasses import replace

    return replace(c, rank=rank)


def _reasons(candidates, chosen, best, tied, b0, saturation, model: StepsModel, config, memory_total) -> list[str]:
    """Which constraint decided, in plain words."""
    reasons = []
    largest = max(c.batch_size for c in candidates)
    above = [c for c in candidates if c.batch_size > chosen.batch_size]
    by_memory = [c for c in above if c.excluded and c.excluded.startswith("peak memory")]
    by_lr = [c for c in above if c.excluded and c.excluded.startswith("learning rate")]
    by_saturation = [c for c in above if c.excluded and c.excluded.startswith("past the saturation")]
    by_noise = [c for c in above if c.excluded and c.excluded.startswith("noisy")]
    if model.perfect_scaling:
        reasons.append(
            "no gradient-noise-scale estimate: perfect scaling (steps fall as 1/B) was assumed up to the "
            "saturation batch; run `largestep noise` or pass --estimate-noise for a sharper prediction"
        )
    if by_saturation:
        reasons.append(
            f"saturation: throughput reaches 90% of its best at batch {saturation}; larger batches add "
            f"little speed on this device"
        )
    if by_memory:
        reasons.append(
            f"memory: batch {by_memory[0].batch_size} and above need more than "
            f"{config.memory_headroom:.0%} of the device's {format_bytes(memory_total)}"
        )
    if by_lr:
        reasons.append(f"max lr: batch {by_lr[0].batch_size} would need a learning rate above {config.max_lr:g}")
    if by_noise:
        reasons.append(
            f"noisy: the steps of batch {', '.join(str(c.batch_size) for c in by_noise)} spread too widely "
            f"to rank them (a busy machine); profile again when it is quieter"
        )
    if model.single is not None:
        verdict = "beyond it each doubling of the batch needs nearly as many steps"
        reasons.append(
            f"noise scale: B_noise is about {model.single:,.0f}; below it larger batches cut the steps "
            f"needed almost in proportion, {verdict}"
        )
    elif model.kind == "curve":
        reasons.append(
            f"noise scale: steps priced over {model.describe()}, stretch by stretch of the baseline's "
            f"training, as the batch schedule is planned: the two agree on the best fixed batch"
        )
    if chosen is not best:
        reasons.append(
            f"batch {chosen.batch_size}'s predicted speedup has a lower end within {TIE_SHARE:.0%} of the "
            f"best (batch {best.batch_size}); the smaller batch was preferred"
        )
    if chosen.batch_size == largest and chosen.batch_size != b0:
        reasons.append(
            f"the largest measured batch ({largest}) limited the search: profile larger batches "
            f"(--max-batch) to see whether they are faster still"
        )
    if chosen.batch_size == b0:
        reasons.append(_kept_baseline_reason(candidates, b0))
    return reasons


def _kept_baseline_reason(candidates, b0: int) -> str:
    """Why the baseline stayed: no candidate predicted faster, or none whose prediction interval lies above 1."""
    hopeful = [c for c in candidates if c.eligible and c.batch_size != b0 and (c.speedup_time_to_target or 0) > 1]
    if not hopeful:
        return f"no measured batch is predicted to reach the target faster than the baseline {b0}"
    best = max(hopeful, key=lambda c: c.speedup_time_to_target)
    low, high = best.speedup_interval
    return (
        f"no measured batch's prediction interval lies above 1: the best, batch {best.batch_size}, is predicted "
        f"{best.speedup_time_to_target:.2f}x ({PREDICTION_COVERAGE:.0%} prediction interval {low:.2f}x to "
        f"{high:.2f}x), too uncertain to rank above the baseline {b0}; a profile whose visits agree (a quieter "
        f"machine, more --min-seconds) narrows it"
    )
