"""Recommend the batch/learning-rate pair predicted to reach the target fastest, and say why.

From a stored profile (measured step times) and, where available, the gradient noise scale:

- steps to a target: S(B) = S_min (1 + B_noise / B)  (McCandlish et al. 2018)
- time to target:    T(B) = S(B) t(B)
- predicted speedup of B over the baseline B0: [(1 + B_n/B0) / (1 + B_n/B)] t(B0) / t(B)
- learning rate: linear rule lr0 B/B0 (lr/batch fixed; Goyal et al. 2017, Smith et al. 2021),
  or square-root rule lr0 sqrt(B/B0) for adaptive optimizers (Malladi et al. 2022)
- warm-up: gradual and linear over a number of samples that does not shrink as B grows.

Without a noise-scale estimate it assumes perfect scaling (S(B) B constant) up to the saturation
batch and says so. Every candidate is a batch the profile measured, never an extrapolation.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from .. import curve
from ..about import __version__
from ..errors import UnusableProfile, UsageError
from ..format import format_bytes
from ..units import INT64_MAX, check_int

__all__ = ["RecommendConfig", "Candidate", "recommend", "scale_lr", "warmup_steps", "memory_safe_batches",
           "SECONDS_PER_DAY", "RULES", "step_time", "accepted_load_note"]

RULES = ("linear", "sqrt")
SECONDS_PER_DAY = 86_400.0
TIE_SHARE = 0.05  # candidates within 5% of the best predicted time count as tied; the smaller batch wins


@dataclass(frozen=True)
class RecommendConfig:
    baseline_batch: int | None = None     # default: the workload's, as stored with the profile
    baseline_lr: float | None = None      # default: the workload's
    rule: str = "linear"                  # "linear" (lr/batch fixed) | "sqrt"
    noise_scale: float | None = None      # B_noise; None: assume perfect scaling up to saturation
    memory_headroom: float = 0.9          # candidates use at most this share of the device's memory
    max_lr: float | None = None           # never recommend a learning rate above this
    warmup_samples: int | None = None     # default: the workload's warm-up, in samples
    accept_load: bool = False             # use a profile that cannot be trusted (under load, not physics); the
                                          # recommendation then carries why it could not be (accepted_load)

    @classmethod
    def from_options(cls, baseline_batch=None, baseline_lr=None, rule="linear", noise_scale=None, memory_headroom=0.9,
                     max_lr=None, warmup_samples=None, accept_load=False) -> "RecommendConfig":
        """The config `largestep recommend`'s options ask for (text, as typed) or ``largestep.recommend``'s
        (numbers), validated: a one-line UsageError naming the option otherwise."""
        from ..units import parse_count, parse_float, parse_positive_int

        config = cls(
            baseline_batch=parse_positive_int(baseline_batch, "--baseline-batch") if baseline_batch is not None else None,
            baseline_lr=parse_float(baseline_lr, "--baseline-lr"), rule=rule,
            noise_scale=parse_float(noise_scale, "--noise-scale"),
            memory_headroom=parse_float(memory_headroom, "--memory-headroom"), max_lr=parse_float(max_lr, "--max-lr"),
            warmup_samples=parse_count(warmup_samples, "--warmup-samples") if warmup_samples is not None else None,
            accept_load=bool(accept_load))
        config.validate()
        return config

    def validate(self) -> None:
        if self.baseline_batch is not None:
            check_int(self.baseline_batch, "--baseline-batch")
        if self.baseline_lr is not None and not (self.baseline_lr > 0 and math.isfinite(self.baseline_lr)):
            raise UsageError(f"--baseline-lr must be a positive number, not {self.baseline_lr!r}")
        if self.rule not in RULES:
            raise UsageError(f"--rule must be linear or sqrt, not {self.rule!r}")
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
    time_ratio: float | None               # predicted T(B) / T(B0); None when not eligible
    speedup_time_to_target: float | None   # 1 / time_ratio
    speedup_throughput: float              # (B / t(B)) / (B0 / t(B0))
    run_time_s: float | None               # predicted wall time of one training run
    eligible: bool
    excluded: str | None = None            # why not eligible, in words
    rank: int | None = None


def _over_memory(point: dict, memory_limit: float | None) -> bool:
    return memory_limit is not None and (point.get("peak_memory_bytes") or 0) > memory_limit


def memory_safe_batches(profile: dict, memory_headroom: float = 0.9) -> tuple[int, ...]:
    """The batches a profile measured whose peak memory stays within ``memory_headroom`` of the device's:
    the sizes a run may move between without trying an unmeasured one."""
    total = profile.get("device_total_memory_bytes")
    limit = total * memory_headroom if total else None
    return tuple(sorted(p["batch_size"] for p in profile["points"]
                        if p["status"] == "ok" and p.get("median_s") and not _over_memory(p, limit)))


def scale_lr(baseline_lr: float, baseline_batch: int, batch: int, rule: str = "linear") -> float:
    """The learning rate for ``batch``: linear keeps lr/batch fixed; sqrt scales with sqrt(B/B0)."""
    ratio = batch / baseline_batch
    return baseline_lr * (ratio if rule == "linear" else math.sqrt(ratio))


def _decay_samples(profile: dict) -> int | None:
    """WSD's final decay in samples: the workload's, else the last fifth of its run (as training does)."""
    if profile.get("decay_samples") is not None or profile.get("schedule") != "wsd":
        return profile.get("decay_samples")
    if profile.get("epochs") and profile.get("n_train"):
        return round(WSD_DEFAULT_DECAY * profile["epochs"] * profile["n_train"])
    return None


WSD_DEFAULT_DECAY = 0.2   # as largestep.measure.train: plan and measure do not import each other


def warmup_steps(warmup_samples: int, batch: int) -> int:
    """Steps that cover ``warmup_samples`` at ``batch``: the warm-up keeps its length in samples."""
    return math.ceil(warmup_samples / batch) if warmup_samples > 0 else 0


def steps_factor(batch: int, noise_scale: float | None) -> float:
    """S(B)/S_min. Perfect scaling (no noise estimate) is the limit B_noise -> infinity, S ~ 1/B."""
    if noise_scale is None:
        return 1.0 / batch
    return 1.0 + noise_scale / batch


def predicted_interval(b0: int, b: int, noise_scale: float | None, noise_interval: tuple | None,
                       base_quartiles: tuple[float, float], quartiles: tuple[float, float]) -> list[float]:
    """The predicted speedup of batch ``b`` over ``b0`` as the noise scale ranges over its interval (an
    open upper end is perfect scaling) and each step time over its quartiles: the speedup is monotonic
    in each, so the corners bound it."""
    if noise_interval is not None:
        scales = [noise_interval[0] if noise_interval[0] is not None else noise_scale, noise_interval[1]]
    else:
        scales = [noise_scale]
    values = [steps_factor(b0, n) / steps_factor(b, n) * t0 / t
              for n in scales for t0 in base_quartiles for t in quartiles]
    return [min(values), max(values)]


def recommend(profile: dict, config: RecommendConfig, noise: dict | None = None) -> dict:
    """The recommendation document for a stored profile (see :func:`largestep.store.load_profile`).

    ``noise`` is a stored noise estimate; its ``b_simple`` is used unless ``config.noise_scale``
    is given. Raises UsageError when the profile cannot support a recommendation.
    """
    config.validate()
    ok = {p["batch_size"]: p for p in profile["points"] if p["status"] == "ok" and p.get("median_s")}
    if not ok:
        raise UsageError(f"profile {profile['id']} has no measured batch sizes; run `largestep profile` again")
    noisy_threshold = (profile.get("config") or {}).get("noisy_iqr_ratio", curve.NOISY_IQR_RATIO) \
        if isinstance(profile.get("config"), dict) else curve.NOISY_IQR_RATIO
    b0 = config.baseline_batch or profile.get("baseline_batch_size")
    lr0 = config.baseline_lr or profile.get("baseline_lr")
    if b0 not in ok:
        measured = ", ".join(str(b) for b in sorted(ok))
        raise UsageError(f"baseline batch {b0} was not measured in profile {profile['id']} (measured: {measured}); "
                         f"profile it with --batch-sizes {b0},...")
    refused = curve.refusal(profile)   # after the user's own input is checked: a typo is told first
    if refused is not None and not config.accept_load:
        raise UnusableProfile(refused, profile["id"])
    noise_scale = config.noise_scale
    noise_id = noise_interval = None
    if noise_scale is None and noise is not None and noise.get("b_simple"):
        noise_scale, noise_id = float(noise["b_simple"]), noise.get("id")
        noise_interval = (noise.get("ci_low"), noise.get("ci_high"))   # ci_high None: unbounded above
    saturation = profile.get("saturation_batch")
    memory_total = profile.get("device_total_memory_bytes")
    memory_limit = memory_total * config.memory_headroom if memory_total else None
    warmup = config.warmup_samples
    if warmup is None:  # the workload's, stored with the profile; else the Workload default, 5% of an epoch
        warmup = profile.get("warmup_samples") or (profile.get("n_train") or 0) // 20
    train_samples = (profile.get("epochs") or 1) * (profile.get("n_train") or 0)

    t0 = step_time(ok[b0])
    base_steps = steps_factor(b0, noise_scale)
    candidates: list[Candidate] = []
    for b in sorted(ok):
        point = ok[b]
        t = step_time(point)
        spread = _spread(point)
        lr = scale_lr(lr0, b0, b, config.rule)
        excluded = None
        if b < b0:
            excluded = "smaller than the baseline"
        elif b == b0:
            pass  # what the user runs today is always a candidate
        elif _over_memory(point, memory_limit):
            excluded = f"peak memory {format_bytes(point['peak_memory_bytes'])} over {config.memory_headroom:.0%} of the device"
        elif config.max_lr is not None and lr > config.max_lr * (1 + 1e-12):
            excluded = f"learning rate {lr:.3g} above --max-lr {config.max_lr:g}"
        elif noise_scale is None and saturation is not None and b > saturation:
            excluded = f"past the saturation batch {saturation} (perfect scaling is only assumed up to it)"
        elif spread is not None and spread > noisy_threshold:
            excluded = (f"noisy: its steps spread {spread:.0%} of their median (IQR), above {noisy_threshold:.0%}; "
                        f"its step time is no figure to rank")
        ratio = (steps_factor(b, noise_scale) / base_steps) * (t / t0) if excluded is None else None
        run_time = None
        if train_samples and excluded is None:
            baseline_run = train_samples / b0 * t0
            run_time = baseline_run * ratio
        candidates.append(Candidate(
            batch_size=b, learning_rate=lr, step_time_s=t, samples_per_s=b / t,
            peak_memory_bytes=point.get("peak_memory_bytes"), time_ratio=ratio,
            speedup_time_to_target=(1 / ratio) if ratio else None, speedup_throughput=(b / t) / (b0 / t0),
            run_time_s=run_time, eligible=excluded is None, excluded=excluded,
        ))

    eligible = sorted((c for c in candidates if c.eligible), key=lambda c: (c.time_ratio, c.batch_size))
    ranks = {c.batch_size: i + 1 for i, c in enumerate(eligible)}
    candidates = [_with_rank(c, ranks.get(c.batch_size)) for c in candidates]
    best = eligible[0]
    tied = [c for c in eligible if c.time_ratio <= best.time_ratio * (1 + TIE_SHARE)]
    chosen = min(tied, key=lambda c: c.batch_size)
    reasons: list[str] = []
    if saturation is not None and b0 >= saturation:
        chosen = next(c for c in candidates if c.batch_size == b0)
        reasons.append(f"the baseline batch {b0} is already at or past the saturation batch {saturation}: larger "
                       f"batches barely raise throughput on this device, so the baseline stays as it is")
    else:
        reasons += _reasons(candidates, chosen, best, tied, b0, saturation, noise_scale, config, memory_total)

    uncertain = _uncertainty(profile)
    if uncertain:
        reasons.insert(0, uncertain)
    accepted = accepted_load_note(refused) if refused is not None else None
    if accepted:
        reasons.insert(0, accepted)

    baseline_run = train_samples / b0 * t0 if train_samples else None
    rec_run = chosen.run_time_s if chosen.batch_size != b0 else baseline_run

    def quartiles(point: dict) -> tuple[float, float]:   # the spread of the steps, the step time inside it
        t = step_time(point)
        return (min(t, point.get("p25_s") or t), max(t, point.get("p75_s") or t))

    interval = predicted_interval(b0, chosen.batch_size, noise_scale, noise_interval, quartiles(ok[b0]),
                                  quartiles(ok[chosen.batch_size]))
    return {
        "recommendation_id": f"rec-{secrets.token_hex(4)}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "tool_version": __version__,
        "workload": profile.get("workload"), "workload_spec": profile.get("workload_spec"),
        "workload_options": profile.get("options") or {},
        "profile_id": profile["id"], "noise_id": noise_id,
        "device": {"id": profile.get("device_id"), "name": profile.get("device_name"), "kind": profile.get("device_kind")},
        "dtype": profile.get("dtype") or "fp32",
        "batch_size": chosen.batch_size, "learning_rate": chosen.learning_rate,
        "warmup_samples": int(warmup), "warmup_steps": warmup_steps(int(warmup), chosen.batch_size),
        # a data-parallel profile measured global batches over its ranks (config.nproc)
        "micro_batch_size": chosen.batch_size // _world_size(profile), "gradient_accumulation_steps": 1,
        "world_size": _world_size(profile),
        "rule": config.rule, "optimizer": profile.get("optimizer") or "adam",
        "weight_decay": profile.get("weight_decay") or 0.0, "epochs": profile.get("epochs"),
        "schedule": profile.get("schedule") or "constant", "decay_samples": _decay_samples(profile),
        "max_grad_norm": profile.get("max_grad_norm"),
        "baseline": {"batch_size": b0, "learning_rate": lr0},
        "noise_scale": noise_scale, "assumed_perfect_scaling": noise_scale is None,
        "saturation_batch": saturation,
        "predicted_speedup": {"throughput": chosen.speedup_throughput,
                              "time_to_target": chosen.speedup_time_to_target or 1.0,
                              # over the noise scale's interval and the step times' quartiles
                              "time_to_target_interval": interval},
        "experiments_per_gpu_day": {
            "baseline": SECONDS_PER_DAY / baseline_run if baseline_run else None,
            "recommended": SECONDS_PER_DAY / rec_run if rec_run else None,
        },
        "run_time_s": {"baseline": baseline_run, "recommended": rec_run},
        "candidates": [asdict(c) for c in candidates],
        "reasons": reasons,
        "uncertain": uncertain,
        # the profile could not be trusted and the user accepted it: why, carried wherever this is shown
        "accepted_load": refused,
        "estimator": profile.get("estimator") or "median",
        # torch's threads the profile measured with (--threads), which the runs trained from it use too
        "threads": _profile_threads(profile),
        "stability": None,
    }


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


def _uncertainty(profile: dict) -> str | None:
    """Why the ranking cannot be trusted as it stands (the profile was flagged inconsistent); None if it can."""
    if not profile.get("inconsistency"):
        return None
    return (f"uncertain: profile {profile['id']} stayed inconsistent after re-measuring ({profile['inconsistency']}), "
            f"so the ranking rests on step times that are not the hardware's; profile again on a quieter machine")


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


def _reasons(candidates, chosen, best, tied, b0, saturation, noise_scale, config, memory_total) -> list[str]:
    """Which constraint decided, in plain words."""
    reasons = []
    largest = max(c.batch_size for c in candidates)
    above = [c for c in candidates if c.batch_size > chosen.batch_size]
    by_memory = [c for c in above if c.excluded and c.excluded.startswith("peak memory")]
    by_lr = [c for c in above if c.excluded and c.excluded.startswith("learning rate")]
    by_saturation = [c for c in above if c.excluded and c.excluded.startswith("past the saturation")]
    by_noise = [c for c in above if c.excluded and c.excluded.startswith("noisy")]
    if noise_scale is None:
        reasons.append("no gradient-noise-scale estimate: perfect scaling (steps fall as 1/B) was assumed up to the "
                       "saturation batch; run `largestep noise` or pass --estimate-noise for a sharper prediction")
    if by_saturation:
        reasons.append(f"saturation: throughput reaches 90% of its best at batch {saturation}; larger batches add "
                       f"little speed on this device")
    if by_memory:
        reasons.append(f"memory: batch {by_memory[0].batch_size} and above need more than "
                       f"{config.memory_headroom:.0%} of the device's {format_bytes(memory_total)}")
    if by_lr:
        reasons.append(f"max lr: batch {by_lr[0].batch_size} would need a learning rate above {config.max_lr:g}")
    if by_noise:
        reasons.append(f"noisy: the steps of batch {', '.join(str(c.batch_size) for c in by_noise)} spread too widely "
                       f"to rank them (a busy machine); profile again when it is quieter")
    if noise_scale is not None:
        verdict = "beyond it each doubling of the batch needs nearly as many steps"
        reasons.append(f"noise scale: B_noise is about {noise_scale:,.0f}; below it larger batches cut the steps "
                       f"needed almost in proportion, {verdict}")
    if chosen is not best:
        reasons.append(f"batch {chosen.batch_size} is predicted within {TIE_SHARE:.0%} of the fastest "
                       f"(batch {best.batch_size}); the smaller batch was preferred")
    if chosen.batch_size == largest and chosen.batch_size != b0:
        reasons.append(f"the largest measured batch ({largest}) limited the search: profile larger batches "
                       f"(--max-batch) to see whether they are faster still")
    if chosen.batch_size == b0:
        reasons.append(f"no measured batch is predicted to reach the target faster than the baseline {b0}")
    return reasons
