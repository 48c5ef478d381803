"""The one-click flow as a job: profile, noise scale, recommend, train both, compare, headline.

The autopilot job orchestrates child jobs (each its own process, queued on the device) and,
like every job, never opens the database: it reads its children's results from their spools
with the same builders the store's ingest mirrors, and spools its own phases, recommendation
and comparison. Cancelling it cancels its children.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Callable, NamedTuple

import pandas as pd

from .. import curve, jobs
from ..errors import LargestepError, UnusableProfile, UsageError
from . import events
from .runner import JobContext
from .start import MAX_REPEATS
from ..measure.devices_config import MAX_NPROC
from ..measure.profiler_config import MAX_SECONDS, check_threads, parse_threads
from ..measure.train_config import MAX_EPOCHS
from ..plan.calibration import measured_factors, model_of, next_attempt, step_time_bias, verification_point
from ..plan.censored import smallest_p
from ..plan.compare import check_tolerance, compare_groups
from ..plan.recommend import RULES, RecommendConfig, accepted_load_note, choose, recommend
from ..plan.verdict import CONFIDENCE, FASTER, SLOWER, headline_tone, interval_text, look_levels, quality_words
from ..units import check_int, check_number, check_switch

__all__ = [
    "AutopilotConfig",
    "autopilot_task",
    "PHASES",
    "headline",
    "keep_baseline_headline",
    "prediction_factors",
    "decisive",
    "sequential_text",
    "wait_for_quiet",
    "trusted_profile",
    "earlier_verifications",
    "until_verified_text",
    "MAX_ATTEMPTS",
]

PHASES = ("profile", "noise scale", "recommendation", "training runs", "comparison")
ARMS = ("baseline", "recommended")  # the arms an autopilot can train
SCHEDULE_ARMS = ("baseline", "fixed", "schedule")  # ... and with a batch schedule planned from a noise curve
CURVE_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the schedule arm's noise curve is estimated
MAX_EPOCH_FACTOR = 3.0  # the recommended runs get at most this many times the baseline's epochs
QUIET_TIMEOUT_S = 600.0  # an untrusted profile: the longest the autopilot waits for a quiet window before it stops
QUIET_WINDOW_S = 5.0  # a quiet window: this long with other processes leaving the cores the steps need
MAX_ATTEMPTS = 2  # --until-verified: pairs verified at most, by default
MAX_ATTEMPTS_LIMIT = 10  # ... and at most, ever


@dataclass(frozen=True)
class AutopilotConfig:
    repeats: int = 3  # seeds per arm (baseline, recommended)
    epochs: float | None = None  # None: the workload's
    rule: str = "linear"
    noise_batches: int = 32
    min_seconds: float = 1.0  # profiler: timed seconds per batch size
    max_batch: int = 65536
    tolerance: float = 0.01  # compare: target = baseline best val loss + 1%
    quality_tolerance: float = 0.01  # compare: a quality difference within 1% of the baseline's is "none"
    arms: tuple[str, ...] | None = None  # None: the baseline and the recommendation, unless it is the baseline;
    # given: train exactly these arms, whatever was recommended
    until_decisive: bool = False  # add seed pairs until the speedup or the quality is decided, each look
    max_repeats: int = 10  # ... at its share of the error rate (alpha spending), up to this many seeds
    launcher: dict | None = None  # None: child jobs run here; {"kind": "ray", ...}: as Ray tasks
    nproc: int = 1  # data-parallel ranks of the profile and of every training run
    compile: bool = False  # torch.compile the model in every step: profile, noise scale, runs
    tf32: bool | None = None  # TF32 for the profile and every run; None: the workload's field
    accept_load: bool = False  # use the profile even if it cannot be trusted (the recommendation says so)
    quiet_timeout_s: float = QUIET_TIMEOUT_S  # an untrusted profile: wait this long at most for a quiet window
    threads: int | None = None  # torch's intra-op threads in the profile and every run (--threads)
    until_verified: bool = False  # a failed verification: learn from it and try the next pair the corrected
    max_attempts: int = MAX_ATTEMPTS  # ... model ranks, at most this many pairs, each at its share of the error rate

    @property
    def attempts(self) -> int:
        """The pairs the autopilot may verify: --max-attempts with --until-verified, else one."""
        return self.max_attempts if self.until_verified else 1

    @property
    def alpha(self) -> float:
        """The error rate of each attempt: 10% spread over the attempts (Bonferroni), so trying again cannot
        manufacture a verified pair."""
        return (1 - CONFIDENCE) / self.attempts

    def validate(self) -> None:
        """The autopilot's own fields; each child job's config is validated again when it is built."""
        check_int(self.repeats, "--repeats", high=MAX_REPEATS)
        if self.epochs is not None:
            check_number(self.epochs, "--epochs", low=0, high=MAX_EPOCHS)
        if self.rule not in RULES:
            raise UsageError(f"--rule must be {', '.join(RULES[:-1])} or {RULES[-1]}, not {self.rule!r}")
        check_int(self.noise_batches, "noise batches", low=2)
        check_number(self.min_seconds, "min seconds", low=0, high=MAX_SECONDS, low_inclusive=True)
        check_int(self.max_batch, "max batch")
        check_tolerance(self.tolerance)
        check_tolerance(self.quality_tolerance, "--quality-tolerance")
        check_int(self.nproc, "--nproc", high=MAX_NPROC)
        check_switch(self.tf32, "--tf32")
        check_number(self.quiet_timeout_s, "--quiet-timeout", low=0, high=MAX_SECONDS, low_inclusive=True)
        check_threads(self.threads)
        if self.arms is not None and tuple(self.arms) not in (ARMS, SCHEDULE_ARMS):
            raise UsageError(
                f"--arms takes {','.join(ARMS)} (both arms, trained even when the recommendation is the "
                f"baseline) or {','.join(SCHEDULE_ARMS)} (a third arm growing its batch on a schedule "
                f"planned from a noise curve), not {','.join(map(str, self.arms))}"
            )
        if self.scheduled and self.rule == "noise":
            raise UsageError("the schedule arm scales its rate by the linear or sqrt rule: drop --rule noise")
        if self.scheduled and self.nproc != 1:
            raise UsageError("the schedule arm runs in one process: drop --nproc")
        check_int(self.max_repeats, "--max-repeats", high=MAX_REPEATS)
        if self.until_decisive and self.max_repeats < self.repeats:
            raise UsageError(f"--max-repeats {self.max_repeats} is below --repeats {self.repeats}")
        check_int(self.max_attempts, "--max-attempts", high=MAX_ATTEMPTS_LIMIT)
        if self.until_verified:
            if self.scheduled:
                raise UsageError(
                    "--until-verified tries fixed batches one after another: drop --arms baseline,fixed,schedule"
                )
            seeds = self.max_repeats if self.until_decisive else self.repeats
            level = (
                look_levels(self.repeats, self.max_repeats, self.alpha)[seeds] if self.until_decisive else self.alpha
            )
            if smallest_p(seeds) > level + 1e-12:
                needed = next(n for n in range(seeds, MAX_REPEATS + 1) if smallest_p(n) <= level + 1e-12)
                flag = "--max-repeats" if self.until_decisive else "--repeats"
                raise UsageError(
                    f"--until-verified tests each of its {self.max_attempts} attempts at level {level:.2g} "
                    f"(10% spread over them, so trying again cannot manufacture a verified pair); with "
                    f"{seeds} seeds an arm the exact test cannot go below p = {smallest_p(seeds):.2g}: "
                    f"use {flag} {needed} or more, or fewer --max-attempts"
                )

    @property
    def scheduled(self) -> bool:
        """Whether a third arm trains the batch schedule planned from a noise curve."""
        return self.arms is not None and tuple(self.arms) == SCHEDULE_ARMS

    @classmethod
    def from_options(
        cls,
        repeats=3,
        epochs=None,
        rule="linear",
        arms=None,
        until_decisive=False,
        max_repeats=10,
        quality_tolerance=0.01,
        compile=False,
        nproc=1,
        launcher="local",
        ray_address=None,
        accept_load=False,
        quiet_timeout=None,
        threads=None,
        until_verified=False,
        max_attempts=MAX_ATTEMPTS,
        **fields,
    ) -> "AutopilotConfig":
        """The config `largestep autopilot`'s options ask for (text, as typed) or ``largestep.autopilot``'s
        (numbers, a list of arms), validated: a one-line UsageError naming the option otherwise. ``fields``: the
        config's other fields (min_seconds, max_batch, noise_batches, tolerance), from Python."""
        from .ray import launcher_from_cli
        from ..units import parse_float, parse_positive_int

        unknown = sorted(set(fields) - set(cls.__dataclass_fields__) - {"launcher", "arms"})
        if unknown:
            raise UsageError(f"unknown autopilot option {unknown[0]!r}")
        if isinstance(arms, str):
            arms = tuple(a.strip() for a in arms.split(","))
        config = cls(
            repeats=parse_positive_int(repeats, "--repeats"),
            epochs=parse_float(epochs, "--epochs"),
            rule=rule,
            launcher=launcher_from_cli(launcher, ray_address),
            nproc=parse_positive_int(nproc, "--nproc"),
            arms=None if arms is None else tuple(arms) if isinstance(arms, (list, tuple)) else (arms,),
            until_decisive=bool(until_decisive),
            max_repeats=parse_positive_int(max_repeats, "--max-repeats"),
            quality_tolerance=parse_float(quality_tolerance, "--quality-tolerance"),
            compile=bool(compile),
            accept_load=bool(accept_load),
            threads=parse_threads(threads),
            until_verified=bool(until_verified),
            max_attempts=parse_positive_int(max_attempts, "--max-attempts"),
            quiet_timeout_s=QUIET_TIMEOUT_S if quiet_timeout is None else parse_float(quiet_timeout, "--quiet-timeout"),
            **fields,
        )
        config.validate()
        return config


def prediction_factors(rec: dict, comparison: dict) -> dict:
    """The predicted speedup's two factors beside what the runs measured: the time per step (the
    profile's t(B)/t(B0) against the runs') and the steps to the target (the noise model's
    S(B0)/S(B), corrected where the recommendation was, against the runs'), each with its interval, so a user
    sees which half of a prediction was off.

    Measured on the headline's own censored basis (:func:`largestep.plan.calibration.measured_factors`): the steps
    factor is the ratio of the arms' Kaplan-Meier median steps to the target, the time per step is each arm's
    median time over its median steps, so the measured steps factor over the measured time-per-step factor is the
    headline's speedup exactly. Where a median is only a bound neither factor is measured (the steps' bound is
    kept as a bound)."""
    b0, b = rec["baseline"]["batch_size"], rec["batch_size"]
    speed = rec.get("predicted_speedup") or {}
    step, steps = speed.get("step_time_factor") or {}, speed.get("steps_factor") or {}
    step_times = {c["batch_size"]: c["step_time_s"] for c in rec["candidates"]}
    predicted_step = step.get("predicted") or (
        step_times[b] / step_times[b0] if step_times.get(b) and step_times.get(b0) else None
    )
    raw_steps = steps.get("raw") or model_of(rec).factor(b0, b)
    measured = measured_factors(comparison)
    bound = measured["steps_bound"]
    return {
        "step_time_ratio": {
            "predicted": predicted_step,
            "predicted_interval": step.get("interval"),
            "measured": measured["step_time"],
            "measured_interval": measured["step_time_interval"],
            "meaning": "time per step at the recommended batch over the baseline's",
        },
        "steps_ratio": {
            "predicted": steps.get("predicted") or raw_steps,
            "predicted_interval": steps.get("interval"),
            "raw": raw_steps,
            "measured": None if bound else measured["steps"],
            "measured_interval": measured["steps_interval"],
            "measured_bound": {"kind": bound, "value": measured["steps"]} if bound else None,
            "meaning": "steps the baseline needs to the target over the recommended batch's",
        },
    }


def decisive(comparison: dict) -> str | None:
    """Why the comparison is decisive at its own level, or None: the speedup is called faster or slower (its
    interval and its exact test agree; never on a bound, never below three seeds an arm), or the quality
    difference's interval lies within the tolerance."""
    groups = comparison.get("groups") or []
    if len(groups) < 2:
        return None
    word = (groups[1].get("verdict") or {}).get("word")
    if word == FASTER:
        return "the speedup's interval lies above 1 and the exact test agrees"
    if word == SLOWER:
        return "the speedup's interval lies below 1 and the exact test agrees"
    if (groups[1].get("quality") or {}).get("verdict") == "equivalent":
        return "the quality difference's interval lies within the tolerance"
    return None


def sequential_text(seeds: int, decided: str | None, levels: dict[int, float]) -> str:
    """The `--until-decisive` clause of a headline: where it stopped, and at what level that look was tested."""
    look = sorted(levels).index(seeds) + 1 if seeds in levels else len(levels)
    level = levels.get(seeds, 0.0)
    where = (
        f"look {look} of {len(levels)} at level {level:.3g} ({1 - level:.0%} intervals; alpha spending over "
        f"{min(levels)} to {max(levels)} seeds, {sum(levels.values()):.0%} in all)"
    )
    if decided is not None:
        return f"decisive after {seeds} seed pairs: {decided}, {where}"
    return f"not decisive after {seeds} seed pairs (--max-repeats), {where}"


def headline(
    rec: dict,
    comparison: dict,
    decided: str | None = None,
    seeds: int | None = None,
    levels: dict[int, float] | None = None,
) -> dict:
    """One line a person reads first: the pair, the measured speedup in :mod:`largestep.plan.verdict`'s words
    and how many seeds reached the target, the prediction with its interval beside it, and the quality
    difference with its interval. ``seeds`` and ``levels``: an `--until-decisive` autopilot's last look."""
    groups = comparison.get("groups") or []
    recommended = groups[1] if len(groups) > 1 else {}
    predicted = rec["predicted_speedup"]["time_to_target"]
    predicted_interval = rec["predicted_speedup"].get("time_to_target_interval")
    coverage = rec["predicted_speedup"].get("coverage")
    verdict = recommended.get("verdict") or {}
    reached = recommended.get("time_to_target") or {}
    confidence = comparison.get("confidence", CONFIDENCE)
    censored = [(g["name"], run) for g in groups for run in g.get("runs") or [] if run.get("time_to_target_s") is None]
    conditions = comparison.get("conditions") or {}
    quality = recommended.get("quality") or {}
    name = (comparison.get("quality") or {}).get("name")
    text = _headline_text(rec, comparison, censored, decided, seeds, levels)
    return {
        "text": text,
        "kept_baseline": False,
        "decisive": decided,
        "batch_size": rec["batch_size"],
        "learning_rate": rec["learning_rate"],
        "measured_speedup": recommended.get("speedup"),
        "measured_speedup_interval": recommended.get("speedup_interval"),
        "measured_speedup_bound": recommended.get("speedup_bound"),
        "verdict": verdict or None,
        "confidence": confidence,
        "tone": headline_tone(verdict, quality),
        "predicted_speedup": predicted,
        "predicted_speedup_interval": predicted_interval,
        "predicted_coverage": coverage,
        "predicted_throughput_speedup": rec["predicted_speedup"]["throughput"],
        "reached": reached.get("reached"),
        "seeds": reached.get("n"),
        "censored": [{"group": name, "run": run["id"], "seed": run.get("seed")} for name, run in censored],
        "metric": comparison.get("metric"),
        "metric_difference": recommended.get("metric_difference"),
        "p_value": quality.get("p_value"),
        "quality": {"name": name, **quality},
        "factors": prediction_factors(rec, comparison),
        "device": rec["device"].get("name"),
        "conditions_differed": conditions.get("text"),
    }


def _headline_text(
    rec: dict,
    comparison: dict,
    censored: list[tuple[str, dict]],
    decided: str | None,
    seeds: int | None,
    levels: dict[int, float] | None,
) -> str:
    """The headline's words (see :func:`headline`)."""
    groups = comparison.get("groups") or []
    base, recommended = (groups[0], groups[1]) if len(groups) > 1 else ({}, {})
    verdict = recommended.get("verdict") or {}
    reached = recommended.get("time_to_target") or {}
    confidence = comparison.get("confidence", CONFIDENCE)
    text = (
        f"batch {rec['batch_size']} at lr {rec['learning_rate']:.3g} (baseline {rec['baseline']['batch_size']} "
        f"at {rec['baseline']['learning_rate']:.3g}): time to the baseline's validation loss "
        f"{comparison.get('target_val_loss', float('nan')):.4f}: {verdict.get('text', 'not measured')}"
    )
    text += (
        f", reached in {reached.get('reached', 0)} of {reached.get('n', 0)} seeds"
        f" (baseline {base.get('reached', 0)} of {base.get('n', 0)}); " + _predicted_words(rec)
    )
    if censored:
        text += "; never reached, counted as at least their whole training time: " + ", ".join(
            f"{name} seed {run.get('seed')} ({run['censored_at_s']:.0f} s)"
            if run.get("censored_at_s") is not None and math.isfinite(run["censored_at_s"])
            else f"{name} seed {run.get('seed')} ({run.get('state', 'no time').lower()})"
            for name, run in censored
        )
    conditions = comparison.get("conditions") or {}
    if conditions.get("differed"):
        text += f"; conditions differed: {conditions['text']}"
    quality = recommended.get("quality") or {}
    if quality:
        text += "; " + quality_words(quality, (comparison.get("quality") or {}).get("name"), confidence)
    if seeds is not None:
        text += "; " + sequential_text(seeds, decided, levels or {seeds: 1 - confidence})
    return text


def _predicted_words(rec: dict) -> str:
    """The prediction with its interval, and the raw one beside it when earlier verifications corrected it."""
    predicted = rec["predicted_speedup"]
    text = f"predicted {predicted['time_to_target']:.2f}x"
    interval, coverage = predicted.get("time_to_target_interval"), predicted.get("coverage")
    if interval:
        text += (
            f" ({coverage:.0%} prediction interval {interval_text(*interval)})"
            if coverage
            else f" ({interval_text(*interval)})"
        )
    raw = predicted.get("raw") if predicted.get("corrected") else None
    if raw:  # ranked on the noise model earlier verifications corrected: the raw prediction beside it
        text += (
            f" on the corrected noise model, {raw['time_to_target']:.2f}x on the raw one "
            f"({(rec.get('correction') or {}).get('verifications')} verification(s) corrected it)"
        )
    return text


def keep_baseline_headline(rec: dict) -> dict:
    """The recommendation is the baseline itself: say so plainly, train nothing, claim no speedup."""
    why = "; ".join(rec.get("reasons") or []) or "no measured batch is predicted faster"
    text = (
        f"keep your baseline: batch {rec['baseline']['batch_size']} at lr {rec['baseline']['learning_rate']:.3g}, "
        f"because {why}"
    )
    return {
        "text": text,
        "kept_baseline": True,
        "batch_size": rec["batch_size"],
        "learning_rate": rec["learning_rate"],
        "measured_speedup": None,
        "measured_speedup_interval": None,
        "predicted_speedup": 1.0,
        "verdict": None,
        "tone": "neutral",
        "predicted_throughput_speedup": rec["predicted_speedup"]["throughput"],
        "reached": None,
        "seeds": None,
        "censored": [],
        "metric": None,
        "metric_difference": None,
        "p_value": None,
        "quality": None,
        "factors": None,
        "device": rec["device"].get("name"),
    }


def schedule_config(rec: dict, base, rule: str):
    """The schedule arm's runs: the planned phases from the first phase's batch and rate, for the samples
    the plan predicts the growing batch needs (at most MAX_EPOCH_FACTOR times the baseline's)."""
    plan = rec["batch_schedule"]
    first = plan["phases"][0]
    return replace(
        base,
        batch_size=first["batch_size"],
        lr=first["learning_rate"],
        batch_schedule=tuple((p["batch_size"], p["start_fraction"]) for p in plan["phases"]),
        batch_schedule_rule=rule,
        epochs=base.epochs * min(MAX_EPOCH_FACTOR, max(1.0, plan["samples_ratio"])),
    )


def schedule_headline(rec: dict, comparison: dict) -> dict:
    """The schedule arm's line, beside the fixed arm's: its measured speedup over the baseline with its
    interval, and the plan's predicted speedups over the baseline and over the best fixed batch."""
    plan = rec["batch_schedule"]
    group = next(g for g in comparison["groups"] if g["name"] == "schedule")
    fixed = next(g for g in comparison["groups"] if g["name"] == "recommended")
    predicted = plan["predicted_speedup"]
    text = f"schedule {plan['spec']}: time to the baseline's validation loss: "
    text += (group.get("verdict") or {}).get("text", "not measured")
    reached = group.get("time_to_target") or {}
    text += (
        f", reached in {reached.get('reached', 0)} of {reached.get('n', 0)} seeds; predicted "
        f"{predicted['over_baseline']:.2f}x over the baseline and {predicted['over_best_fixed']:.2f}x over the "
        f"best fixed batch {plan['best_fixed']['batch_size']}"
    )
    if group.get("speedup") and fixed.get("speedup"):  # a ratio of two ratios: its interval is not measured
        text += (
            f"; {group['speedup'] / fixed['speedup']:.2f}x the fixed arm's speedup (batch {fixed['batch_size']}; "
            f"a ratio of two medians with no interval of its own: compare the two arms' intervals)"
        )
    return {
        "schedule": {
            "text": text,
            "spec": plan["spec"],
            "measured_speedup": group.get("speedup"),
            "measured_speedup_interval": group.get("speedup_interval"),
            "verdict": group.get("verdict"),
            "tone": headline_tone(group.get("verdict"), group.get("quality")),
            "predicted_speedup": predicted["over_baseline"],
            "predicted_speedup_over_best_fixed": predicted["over_best_fixed"],
            "quality": group.get("quality"),
        }
    }


def flagged(result: dict, rec: dict) -> dict:
    """A headline made from a profile the user accepted though it could not be trusted carries the warning."""
    if not rec.get("accepted_load"):
        return result
    return {**result, "accepted_load": accepted_load_note(rec["accepted_load"])}


def wait_for_quiet(
    others_busy: Callable[[float], float | None],
    spare_cores: float,
    timeout_s: float,
    on_wait: Callable[[float, float | None], None] = lambda _waited, _busy: None,
    clock: Callable[[], float] = time.monotonic,
    window_s: float = QUIET_WINDOW_S,
) -> bool:
    """Wait for a quiet window: ``others_busy(window_s)`` (the cores other processes kept busy over a window of
    that many seconds) at most ``spare_cores`` (and the slack a profile allows); True as soon as one is, False
    once ``timeout_s`` seconds have passed without one. ``on_wait(seconds waited, busy cores)`` after each window."""
    started = clock()
    while True:
        busy = others_busy(window_s)
        if busy is not None and busy <= spare_cores + curve.CONTENTION_SLACK_CORES:
            return True
        waited = clock() - started
        on_wait(waited, busy)
        if waited >= timeout_s:
            return False


def trusted_profile(
    profile: dict,
    accept_load: bool,
    timeout_s: float,
    wait: Callable[[float], bool],
    reprofile: Callable[[dict, list[int]], dict],
) -> dict:
    """The profile to recommend from: ``profile`` itself when it can be trusted (or the user accepts it);
    else, once ``wait(timeout_s)`` finds a quiet window, ``reprofile(profile, sizes)`` of the sizes that made it
    untrusted (under load, failing the physics check), the others carried over. Raises UnusableProfile with the
    refusal's line when the machine never quietens within the timeout, or the re-profile cannot be trusted
    either: the autopilot never trains on such a profile."""
    refused = curve.refusal(profile)
    if refused is None or accept_load:
        return profile
    if not wait(timeout_s):
        raise UnusableProfile(
            f"the machine did not quieten within {timeout_s:.0f} s (the autopilot's --quiet-timeout): {refused}",
            profile.get("id"),
        )
    again = reprofile(profile, curve.untrusted_sizes(profile))
    refused = curve.refusal(again)
    if refused is not None:
        raise UnusableProfile(f"measured again in a quiet window, still: {refused}", again.get("id"))
    return again


def _spare_cores(profile: dict) -> float:
    """The cores a profile's steps leave free: the machine's, less torch's threads (on a GPU, one host thread)."""
    import os

    cores = profile.get("cores") or os.cpu_count() or 1
    ours = (profile.get("threads") or cores) if profile.get("device_kind") in (None, "cpu") else 1
    return max(0.0, float(cores) - ours)


_quiet_clock = time.monotonic  # the clock the wait for a quiet window reads (a test scripts it)


def _others_busy_over(seconds: float) -> float | None:
    """The cores other processes keep busy over the next ``seconds`` (this job's own process tree aside)."""
    from ..measure.telemetry import WindowLoad

    window = WindowLoad()
    window.open()
    time.sleep(seconds)
    window.close()
    return window.others_busy_cores()


def data_factor(rec: dict) -> float:
    """The training the recommended arm gets over the baseline's: S(B)·B / S(B0)·B0, the samples the larger batch
    needs on the model the recommendation ranked on (B/B0 over its steps factor), at most MAX_EPOCH_FACTOR."""
    b0, b = rec["baseline"]["batch_size"], rec["batch_size"]
    steps = ((rec.get("predicted_speedup") or {}).get("steps_factor") or {}).get("predicted")
    if steps is None:
        steps = model_of(rec).factor(b0, b)
    if not math.isfinite(steps) or steps <= 0:
        return 1.0
    return min(MAX_EPOCH_FACTOR, max(1.0, (b / b0) / steps))


def _biases(points: list[dict]) -> list[float]:
    """The profile-to-run step-time bias each verification measured (as :func:`largestep.store.step_time_biases`)."""
    return [bias for p in points if (bias := step_time_bias(p)) is not None]


def earlier_verifications(home, workload: str | None, device_id: str | None, exclude: str | None = None) -> list[dict]:
    """The calibration points recorded on ``workload`` and ``device_id`` before, oldest first: the verification
    events of other autopilots' spools (an autopilot from before verifications were spooled: derived from its
    recommendation and comparison) and the verifications `compare` saved as files. The job never opens the
    database; these are what its verifications table is built from."""
    import json

    points: dict[str, dict] = {}
    for job_dir in sorted(home.jobs.iterdir()) if home.jobs.is_dir() else []:
        spec = jobs.read_spec(job_dir) if job_dir.name != exclude else None
        if not isinstance(spec, dict) or spec.get("kind") != "autopilot":
            continue
        spooled = events.read_all(job_dir)
        rows = events.verifications(spooled) or _legacy_verification(spooled, job_dir.name)
        points.update((row["id"], row) for row in rows)
    for path in sorted(home.verifications.glob("*.json")) if home.verifications.is_dir() else []:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and row.get("id"):
            points.setdefault(row["id"], row)
    return sorted(
        (p for p in points.values() if p.get("workload") == workload and p.get("device_id") == device_id),
        key=lambda p: (p.get("created_at") or 0, p["id"]),
    )


def _legacy_verification(spooled: list[dict], autopilot_id: str) -> list[dict]:
    result = next((e for e in reversed(spooled) if e["type"] == events.AUTOPILOT_RESULT), None)
    recs = {e["document"]["recommendation_id"]: e["document"] for e in spooled if e["type"] == events.RECOMMENDATION}
    rec = recs.get((result or {}).get("recommendation_id"))
    if not result or not rec or len((result.get("comparison") or {}).get("groups") or []) < 2:
        return []
    try:
        return [
            verification_point(
                rec, result["comparison"], source="autopilot", created_at=result["t"], autopilot_id=autopilot_id
            )
        ]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a document too old to read: no point
        return []


def until_verified_text(attempts: list[dict], config: AutopilotConfig, stopped: str | None) -> str:
    """Where `--until-verified` ended: the verified pair, or "none verified", every attempt, and the budget."""
    runs = config.max_attempts * 2 * (config.max_repeats if config.until_decisive else config.repeats)
    budget = (
        f"at most {config.max_attempts} attempts ({runs} training runs at most), each tested at level "
        f"{config.alpha:.2g} so that trying again cannot manufacture a verified pair"
    )

    def pair(a: dict) -> str:
        rec = a["rec"]
        verdict = a["point"].get("verdict") or "not measured"
        return (
            f"batch {rec['batch_size']} at lr {rec['learning_rate']:.3g} ({rec['rule']} rule): {verdict}, quality "
            f"{a['point'].get('quality') or 'not compared'}"
        )

    verified = next((a for a in attempts if a["point"]["verified"]), None)
    earlier = [a for a in attempts if a is not verified]
    if verified is not None:
        text = f"verified on attempt {verified['attempt']} ({budget}): {pair(verified)}"
        if earlier:
            text += "; tried before: " + "; ".join(pair(a) for a in earlier)
        return text
    text = f"none verified in {len(attempts)} attempt{'' if len(attempts) == 1 else 's'} ({budget}): "
    text += "; ".join(pair(a) for a in attempts)
    return text + (f"; stopped: {stopped}" if stopped else "")


def until_verified(
    result: dict, attempts: list[dict], final: dict, config: AutopilotConfig, stopped: str | None
) -> dict:
    """The headline of an `--until-verified` autopilot: its summary first, then the final attempt's sentence."""
    summary = until_verified_text(attempts, config, stopped)
    return {
        **result,
        "text": f"{summary}. {result['text']}",
        "until_verified": {
            "text": summary,
            "verified": final["point"]["verified"],
            "attempt": final["attempt"] if final["point"]["verified"] else None,
            "max_attempts": config.max_attempts,
            "level": config.alpha,
            "stopped": stopped,
        },
        "attempts": [_attempt_summary(a) for a in attempts],
    }


def _attempt_summary(attempt: dict) -> dict:
    rec, point = attempt["rec"], attempt["point"]
    return {
        "attempt": attempt["attempt"],
        "recommendation_id": rec["recommendation_id"],
        "batch_size": rec["batch_size"],
        "learning_rate": rec["learning_rate"],
        "rule": rec["rule"],
        "verification_id": point["id"],
        "verified": point["verified"],
        "verdict": point.get("verdict"),
        "quality": point.get("quality"),
        "failed_why": point.get("failed_why"),
        "baseline_runs": attempt["runs"]["baseline"],
        "recommended_runs": attempt["runs"]["recommended"],
        "text": attempt["headline"]["text"],
    }


def autopilot_task(ctx: JobContext) -> None:
    """The body of an ``autopilot`` job: each phase a named step below, its child jobs cancelled with it."""
    from ..workloads import load_workload
    from ..workloads.cache import cache_of

    pilot = _Pilot.of(ctx)
    try:
        workload = load_workload(pilot.spec, pilot.options, cache_of(ctx.home))
        epochs = pilot.config.epochs or workload.epochs

        # -- profile: measured, then trusted (a quiet window, the untrusted sizes measured again) or refused -------
        profile = _trusted_profile(pilot, _measured_profile(pilot))

        # -- noise scale at the baseline batch (and its curve along a baseline run, for a schedule arm) -----------
        noise_id, noise = _noise_scale(pilot, workload)
        noise_curve = _noise_curve(pilot, workload) if pilot.config.scheduled else []

        # -- recommendation, on the noise model corrected by the verifications recorded on this workload/device --
        pilot.phase("recommendation", 0.0)
        recommender = _Recommender(pilot, profile, epochs, noise, noise_curve)
        rec = recommender.first()
        if rec["batch_size"] == rec["baseline"]["batch_size"] and pilot.config.arms is None:
            _keep_baseline(pilot, rec, profile["id"], noise_id, epochs)  # nothing to verify: no second, same arm
            return

        # -- training runs and comparison: the arms seed by seed, the looks of --until-decisive, and the attempts
        #    of --until-verified (after a failed verification, the next pair the corrected model ranks) ----------
        attempts, stopped = _attempts(pilot, recommender, _Training(pilot, epochs), rec, profile)

        # -- the result: the verified (or the last) attempt's headline, and what it rests on ---------------------
        _result(pilot, attempts, stopped, profile["id"], noise_id)
    except BaseException:
        pilot.cancel_children()  # cancelled or failed: take the children down too
        raise


@dataclass
class _Pilot:
    """What every phase of one autopilot shares: its job, its config, the workload and device its children run on,
    and the children (each its own process, queued on the device), cancelled with it."""

    ctx: JobContext
    config: AutopilotConfig
    spec: str
    options: dict
    device: str
    children: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ctx: JobContext) -> "_Pilot":
        params = ctx.params
        return cls(
            ctx,
            AutopilotConfig(**params.get("autopilot", {})),
            params["workload"],
            params.get("options") or {},
            params["device"],
        )

    def phase(self, name: str, fraction: float, **extra) -> None:
        """Spool the phase the autopilot is in, and report it as the job's progress."""
        index = PHASES.index(name)
        self.ctx.spool.emit(events.AUTOPILOT_PHASE, phase=name, index=index, **extra)
        self.ctx.progress(name, (index + fraction) / len(PHASES), children=self.children, **extra)

    def wait_for(self, job_ids: list[str], name: str) -> list[str]:
        """Wait for each job in turn, reporting its progress as phase ``name``'s; their final states."""
        states = []
        for k, job_id in enumerate(job_ids):
            while True:
                state = jobs.derive_state(self.ctx.home.job_dir(job_id))
                if state in jobs.FINAL_STATES:
                    break
                status = jobs.read_status(self.ctx.home.job_dir(job_id)) or {}
                self.phase(
                    name, (k + (status.get("progress") or 0.0)) / len(job_ids), job=job_id, detail=status.get("phase")
                )
                jobs.pause(self.ctx.home.job_dir(job_id), 0.5)
            states.append(state)
        return states

    def child(self, job_id: str, name: str, fraction: float = 0.0, **extra) -> str:
        """A child job started for phase ``name``: kept (to cancel), shown, waited for; its final state."""
        self.children.append(job_id)
        self.phase(name, fraction, job=job_id, **extra)
        [state] = self.wait_for([job_id], name)
        return state

    def spooled(self, job_id: str) -> list[dict]:
        return events.read_all(self.ctx.home.job_dir(job_id))

    def cancel_children(self) -> None:
        for job_id in self.children:
            try:
                jobs.cancel(self.ctx.home, job_id, grace_s=2.0)
            except LargestepError:
                pass


def _profile_of(pilot: _Pilot, job_id: str, fraction: float = 0.0, **extra) -> dict:
    """A profile job's record, once it finished (else a LargestepError: nothing is recommended from it)."""
    if pilot.child(job_id, "profile", fraction, **extra) != jobs.FINISHED:
        raise LargestepError(f"the profile {job_id} did not finish")
    return events.profile_record(pilot.spooled(job_id))


def _measured_profile(pilot: _Pilot) -> dict:
    """The profile of the workload's batch sizes, with the autopilot's settings."""
    from .start import start_profile
    from ..measure.profiler_config import ProfileConfig

    config = pilot.config
    return _profile_of(
        pilot,
        start_profile(
            pilot.ctx.home,
            pilot.spec,
            pilot.options,
            pilot.device,
            ProfileConfig(
                min_seconds=config.min_seconds,
                max_batch=config.max_batch,
                nproc=config.nproc,
                compile=config.compile,
                tf32=config.tf32,
                threads=config.threads,
            ),
            launcher=config.launcher,
        ),
    )


def _trusted_profile(pilot: _Pilot, profile: dict) -> dict:
    """:func:`trusted_profile` for this autopilot; a profile it refuses is spooled with why (where the Overview
    shows it) and the autopilot stops: it never trains on it."""
    try:
        return trusted_profile(
            profile,
            pilot.config.accept_load,
            pilot.config.quiet_timeout_s,
            partial(_quiet_window, pilot, profile),
            partial(_reprofile, pilot),
        )
    except UnusableProfile as refused:
        pilot.ctx.spool.emit(
            events.AUTOPILOT_PHASE, phase="profile", index=0, untrusted=str(refused), profile_id=refused.profile_id
        )
        raise


def _quiet_window(pilot: _Pilot, profile: dict, timeout_s: float) -> bool:
    """Wait (at most ``timeout_s``) for a window quiet enough to profile ``profile``'s workload again."""

    def waiting(waited: float, busy: float | None) -> None:
        load = f"other processes keep {busy:.2f} cores busy" if busy is not None else "the load is unknown"
        pilot.phase(
            "profile",
            0.5,
            detail=f"profile {profile['id']} cannot be trusted: waiting up to "
            f"{timeout_s:.0f} s for a quiet window ({waited:.0f} s so far; {load})",
        )

    return wait_for_quiet(_others_busy_over, _spare_cores(profile), timeout_s, on_wait=waiting, clock=_quiet_clock)


def _reprofile(pilot: _Pilot, untrusted: dict, sizes: list[int]) -> dict:
    """``untrusted`` with ``sizes`` measured again (the others carried over)."""
    from .start import start_reprofile

    again = start_reprofile(pilot.ctx.home, untrusted, sizes, pilot.device, launcher=pilot.config.launcher)
    return _profile_of(pilot, again, 0.5, detail=f"measuring batch sizes {', '.join(map(str, sizes))} again")


def _noise_scale(pilot: _Pilot, workload) -> tuple[str, dict | None]:
    """The noise-scale job's id and its estimate (None if it made none)."""
    from .start import start_noise
    from ..measure.noise_config import default_warm_steps

    config = pilot.config
    noise_id = start_noise(
        pilot.ctx.home,
        pilot.spec,
        pilot.options,
        pilot.device,
        batch_small=workload.baseline_batch_size,
        batches=config.noise_batches,
        warm_steps=default_warm_steps(workload),
        launcher=config.launcher,
        compile=config.compile,
    )
    pilot.child(noise_id, "noise scale")
    noise = next((e for e in pilot.spooled(noise_id) if e["type"] == events.NOISE_ESTIMATE), None)
    return noise_id, None if noise is None else {**events.noise_row(noise), "id": noise_id}


def _noise_curve(pilot: _Pilot, workload) -> list[dict]:
    """The noise scale along one baseline run (at CURVE_FRACTIONS of it), for the schedule arm."""
    from .start import start_noise_curve

    config = pilot.config
    curve_id = start_noise_curve(
        pilot.ctx.home,
        pilot.spec,
        pilot.options,
        pilot.device,
        CURVE_FRACTIONS,
        batch_small=workload.baseline_batch_size,
        batches=config.noise_batches,
        compile=config.compile,
    )
    pilot.child(curve_id, "noise scale", 0.5)
    return [
        events.noise_curve_row(e, curve_id) for e in pilot.spooled(curve_id) if e["type"] == events.NOISE_CURVE_POINT
    ]


class _Recommender:
    """The autopilot's recommendations: from its trusted profile and noise scale, on the noise model corrected by
    the verifications recorded on this workload and device, and by its own failed ones as it learns them."""

    def __init__(self, pilot: _Pilot, profile: dict, epochs: float, noise: dict | None, noise_curve: list[dict]):
        self.pilot, self.profile, self.epochs, self.noise, self.curve = pilot, profile, epochs, noise, noise_curve
        self.history = earlier_verifications(
            pilot.ctx.home, profile.get("workload"), profile.get("device_id"), pilot.ctx.job_id
        )

    def ranked(self, rule: str) -> dict:
        return recommend(
            dict(self.profile, epochs=self.epochs),
            RecommendConfig(rule=rule, accept_load=self.pilot.config.accept_load),
            self.noise,
            _biases(self.history),
            curve=self.curve or None,
            calibration=self.history,
        )

    def first(self) -> dict:
        """The recommendation on the config's rule (with the batch schedule planned, for a schedule arm)."""
        from ..plan.schedule import with_batch_schedule

        rec = self.ranked(self.pilot.config.rule)
        if self.pilot.config.scheduled:
            rec = with_batch_schedule(rec, self.curve, chosen=True)
        self.pilot.ctx.spool.emit(events.RECOMMENDATION, document=rec)
        return rec

    def after(self, failed: dict, tried: list[tuple[int, str]], attempt: int) -> dict | None:
        """--until-verified: ``failed`` is a calibration point; the next pair the model corrected by it ranks (the
        square-root rule at the same batch after a loss of quality, else a smaller batch), or None if none."""
        config = self.pilot.config
        self.history.append(failed)
        self.pilot.phase("recommendation", 0.0, detail=f"attempt {attempt} failed: re-ranking on the corrected model")
        corrected = self.ranked(failed.get("rule") or config.rule)
        following = next_attempt(corrected, tried, failed)
        if following is None:
            return None
        batch, rule, why = following
        ranked = corrected if rule == corrected["rule"] else self.ranked(rule)
        rec = choose(
            ranked, batch, rule, f"--until-verified, attempt {attempt + 1} of at most {config.max_attempts}: {why}"
        )
        self.pilot.ctx.spool.emit(events.RECOMMENDATION, document=rec)
        return rec


def _keep_baseline(pilot: _Pilot, rec: dict, profile_id: str, noise_id: str, epochs: float) -> None:
    """The recommendation is the baseline: its headline is the result, and nothing is trained."""
    result = flagged(keep_baseline_headline(rec), rec)
    pilot.ctx.spool.emit(
        events.AUTOPILOT_RESULT,
        headline=result,
        comparison=None,
        recommendation_id=rec["recommendation_id"],
        profile_id=profile_id,
        noise_id=noise_id,
        baseline_runs=[],
        recommended_runs=[],
        epochs={"baseline": epochs},
        config=asdict(pilot.config),
    )
    pilot.ctx.progress("done", 1.0, headline=result["text"])


class _Verified(NamedTuple):
    comparison: dict
    runs: dict[str, list[str]]  # each arm's run ids
    seeds: int  # seeds an arm
    levels: dict[int, float] | None  # --until-decisive: each look's level
    epochs: dict[str, float]  # each arm's


def _arms(rec: dict, epochs: float, config: AutopilotConfig) -> dict[str, tuple]:
    """One verification's arms, each (its training config, its group, its runs so far): the baseline's pair, the
    recommended pair with the training its batch needs (:func:`data_factor`), and the schedule's."""
    from ..measure.train_config import TrainConfig

    base = TrainConfig(
        batch_size=rec["baseline"]["batch_size"],
        lr=rec["baseline"]["learning_rate"],
        epochs=epochs,
        warmup_samples=rec["warmup_samples"],
        nproc=config.nproc,
        compile=config.compile,
        tf32=config.tf32,
        threads=rec.get("threads"),
    )
    chosen = TrainConfig(
        batch_size=rec["batch_size"],
        lr=rec["learning_rate"],
        epochs=epochs * data_factor(rec),
        warmup_samples=rec["warmup_samples"],
        nproc=config.nproc,
        compile=config.compile,
        tf32=config.tf32,
        threads=rec.get("threads"),
    )
    arms = {
        "baseline": (base, f"grp-{secrets.token_hex(4)}", []),
        "recommended": (chosen, f"grp-{secrets.token_hex(4)}", []),
    }
    if config.scheduled:  # the third arm, in the same rotation
        arms["schedule"] = (schedule_config(rec, base, config.rule), f"grp-{secrets.token_hex(4)}", [])
    return arms


class _Training:
    """The autopilot's training runs over all its attempts: the arms interleaved seed by seed (baseline 0,
    recommended 0, baseline 1, ...) on the device's first-in-first-out queue, so drift in the machine's load falls
    on both arms alike; then compared."""

    def __init__(self, pilot: _Pilot, epochs: float):
        self.pilot, self.epochs = pilot, epochs
        self.order: list[str] = []  # every run queued, in order
        self.state_of: dict[str, str] = {}  # run id -> its final state

    def verify(self, rec: dict) -> _Verified:
        """Train the baseline and ``rec``'s arm (and the schedule's) and compare them; with --until-decisive, a
        pair of seeds more until decisive, each look at its own share of the attempt's error rate (alpha spending)."""
        config = self.pilot.config
        arms = _arms(rec, self.epochs, config)
        levels = look_levels(config.repeats, config.max_repeats, config.alpha) if config.until_decisive else None
        self.train_seeds(rec, arms, range(config.repeats))
        self.pilot.phase("comparison", 0.0)
        seeds = config.repeats
        comparison = self.compared(arms, 1 - levels[seeds] if levels else 1 - config.alpha)
        while levels and decisive(comparison) is None and seeds + 1 in levels:
            self.train_seeds(rec, arms, range(seeds, seeds + 1))  # one more pair of seeds
            seeds += 1
            self.pilot.phase("comparison", 0.0)
            comparison = self.compared(arms, 1 - levels[seeds])
        ran = {"baseline": self.epochs, **{name: arm[0].epochs for name, arm in arms.items() if name != "baseline"}}
        return _Verified(comparison, {name: ids for name, (_c, _g, ids) in arms.items()}, seeds, levels, ran)

    def train_seeds(self, rec: dict, arms: dict[str, tuple], seeds: range) -> None:
        """Queue one run of each arm per seed, in turn, and wait for them all."""
        from .start import start_train

        pilot, queued = self.pilot, []
        for k in seeds:
            for role, (train_config, group, ids) in arms.items():
                [run_id] = start_train(
                    pilot.ctx.home,
                    pilot.spec,
                    pilot.options,
                    pilot.device,
                    replace(train_config, seed=train_config.seed + k, group=group),
                    1,
                    role=role,
                    recommendation_id=rec["recommendation_id"],
                    launcher=pilot.config.launcher,
                )
                ids.append(run_id)
                queued.append(run_id)
                pilot.children.append(run_id)
        self.order.extend(queued)
        pilot.phase("training runs", 0.0, run_ids=self.order)
        self.state_of.update(zip(queued, pilot.wait_for(queued, "training runs")))

    def compared(self, arms: dict[str, tuple], confidence: float) -> dict:
        """The arms' runs compared at ``confidence``, from their spools."""
        groups, evals = [], []
        for name, (_config, _group, ids) in arms.items():
            runs = []
            for job_id in ids:
                spool = self.pilot.spooled(job_id)
                runs.append({**events.run_record(spool, job_id), "state": self.state_of[job_id]})
                evals += events.evaluations(spool, job_id)
            groups.append((name, runs))
        frame = pd.DataFrame(
            evals, columns=["run_id", "step", "epoch", "samples", "wall_time_s", "train_time_s", "val_loss"]
        )
        config = self.pilot.config
        return compare_groups(
            groups, frame, tolerance=config.tolerance, quality_tolerance=config.quality_tolerance, confidence=confidence
        )


def _attempts(
    pilot: _Pilot, recommender: _Recommender, training: _Training, rec: dict, profile: dict
) -> tuple[list[dict], str | None]:
    """Verify ``rec``; with --until-verified, after a failed verification, the next pair the corrected model ranks,
    until one is verified or the attempts are spent. The attempts, and why they stopped short (or None)."""
    config = pilot.config
    attempts: list[dict] = []
    tried: list[tuple[int, str]] = []
    while True:
        attempts.append(_attempt(pilot, rec, training.verify(rec), len(attempts) + 1, profile))
        tried.append((rec["batch_size"], rec["rule"]))
        point = attempts[-1]["point"]
        if not config.until_verified or point["verified"]:
            return attempts, None
        if len(attempts) >= config.max_attempts:
            return attempts, f"the budget of {config.max_attempts} attempts is spent"
        rec = recommender.after(point, tried, len(attempts))
        if rec is None:
            return attempts, (
                "the corrected model predicts no other pair faster than the baseline beyond doubt "
                "(no smaller batch's prediction interval lies above 1)"
            )


def _attempt(pilot: _Pilot, rec: dict, verified: _Verified, number: int, profile: dict) -> dict:
    """One attempt: its headline (the schedule arm's beside) and its verification, spooled as a calibration point."""
    comparison = verified.comparison
    decided = decisive(comparison)
    result = (
        headline(rec, comparison, decided, verified.seeds, verified.levels)
        if verified.levels
        else headline(rec, comparison)
    )
    if pilot.config.scheduled:
        result = {**result, **schedule_headline(rec, comparison)}
    result = flagged(result, rec)
    point = verification_point(
        rec,
        comparison,
        source="autopilot",
        created_at=time.time(),
        autopilot_id=pilot.ctx.job_id,
        attempt=number,
        device_name=profile.get("device_name"),
    )
    pilot.ctx.spool.emit(events.VERIFICATION, verification=point)
    return {
        "attempt": number,
        "rec": rec,
        "comparison": comparison,
        "runs": verified.runs,
        "headline": result,
        "point": point,
        "epochs": verified.epochs,
    }


def _result(pilot: _Pilot, attempts: list[dict], stopped: str | None, profile_id: str, noise_id: str) -> None:
    """The autopilot's result: the verified attempt's (else the last one's) headline, with --until-verified's
    summary of every attempt first."""
    config = pilot.config
    final = next((a for a in attempts if a["point"]["verified"]), attempts[-1])
    result = final["headline"]
    if config.until_verified:
        result = until_verified(result, attempts, final, config, stopped)
    pilot.ctx.spool.emit(
        events.AUTOPILOT_RESULT,
        headline=result,
        comparison=final["comparison"],
        recommendation_id=final["rec"]["recommendation_id"],
        profile_id=profile_id,
        noise_id=noise_id,
        baseline_runs=final["runs"]["baseline"],
        recommended_runs=final["runs"]["recommended"],
        epochs=final["epochs"],
        config=asdict(config),
        attempts=[_attempt_summary(a) for a in attempts] if config.until_verified else None,
    )
    pilot.ctx.progress("done", 1.0, headline=result["text"])
