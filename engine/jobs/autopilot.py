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
from dataclasses import asdict, dataclass, replace
from typing import Callable

import pandas as pd

from .. import curve, jobs
from ..errors import LargestepError, UnusableProfile, UsageError
from . import events
from .runner import JobContext
from .start import MAX_REPEATS
from ..measure.devices_config import MAX_NPROC
from ..measure.profiler_config import MAX_SECONDS, check_threads, parse_threads
from ..measure.train_config import MAX_EPOCHS
from ..plan.compare import check_tolerance, compare_groups
from ..plan.recommend import RULES, RecommendConfig, accepted_load_note, recommend, steps_factor
from ..plan.verdict import (CONFIDENCE, FASTER, SLOWER, headline_tone, interval_text, look_levels,
                            quality_words)
from ..units import check_int, check_number, check_switch

__all__ = ["AutopilotConfig", "autopilot_task", "PHASES", "headline", "keep_baseline_headline", "prediction_factors",
           "decisive", "sequential_text", "wait_for_quiet", "trusted_profile"]

PHASES = ("profile", "noise scale", "recommendation", "training runs", "comparison")
ARMS = ("baseline", "recommended")     # the arms an autopilot can train
SCHEDULE_ARMS = ("baseline", "fixed", "schedule")   # ... and with a batch schedule planned from a noise curve
CURVE_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)       # where the schedule arm's noise curve is estimated
MAX_EPOCH_FACTOR = 3.0  # the recommended runs get at most this many times the baseline's epochs
QUIET_TIMEOUT_S = 600.0   # an untrusted profile: the longest the autopilot waits for a quiet window before it stops
QUIET_WINDOW_S = 5.0      # a quiet window: this long with other processes leaving the cores the steps need


@dataclass(frozen=True)
class AutopilotConfig:
    repeats: int = 3                      # seeds per arm (baseline, recommended)
    epochs: float | None = None           # None: the workload's
    rule: str = "linear"
    noise_batches: int = 32
    min_seconds: float = 1.0              # profiler: timed seconds per batch size
    max_batch: int = 65536
    tolerance: float = 0.01               # compare: target = baseline best val loss + 1%
    quality_tolerance: float = 0.01       # compare: a quality difference within 1% of the baseline's is "none"
    arms: tuple[str, ...] | None = None   # None: the baseline and the recommendation, unless it is the baseline;
                                          # given: train exactly these arms, whatever was recommended
    until_decisive: bool = False          # add seed pairs until the speedup or the quality is decided, each look
    max_repeats: int = 10                 # ... at its share of the error rate (alpha spending), up to this many seeds
    launcher: dict | None = None          # None: child jobs run here; {"kind": "ray", ...}: as Ray tasks
    nproc: int = 1                        # data-parallel ranks of the profile and of every training run
    compile: bool = False                 # torch.compile the model in every step: profile, noise scale, runs
    tf32: bool | None = None              # TF32 for the profile and every run; None: the workload's field
    accept_load: bool = False             # use the profile even if it cannot be trusted (the recommendation says so)
    quiet_timeout_s: float = QUIET_TIMEOUT_S   # an untrusted profile: wait this long at most for a quiet window
    threads: int | None = None            # torch's intra-op threads in the profile and every run (--threads)

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
            raise UsageError(f"--arms takes {','.join(ARMS)} (both arms, trained even when the recommendation is the "
                             f"baseline) or {','.join(SCHEDULE_ARMS)} (a third arm growing its batch on a schedule "
                             f"planned from a noise curve), not {','.join(map(str, self.arms))}")
        if self.scheduled and self.rule == "noise":
            raise UsageError("the schedule arm scales its rate by the linear or sqrt rule: drop --rule noise")
        if self.scheduled and self.nproc != 1:
            raise UsageError("the schedule arm runs in one process: drop --nproc")
        check_int(self.max_repeats, "--max-repeats", high=MAX_REPEATS)
        if self.until_decisive and self.max_repeats < self.repeats:
            raise UsageError(f"--max-repeats {self.max_repeats} is below --repeats {self.repeats}")

    @property
    def scheduled(self) -> bool:
        """Whether a third arm trains the batch schedule planned from a noise curve."""
        return self.arms is not None and tuple(self.arms) == SCHEDULE_ARMS

    @classmethod
    def from_options(cls, repeats=3, epochs=None, rule="linear", arms=None, until_decisive=False, max_repeats=10,
                     quality_tolerance=0.01, compile=False, nproc=1, launcher="local", ray_address=None,
                     accept_load=False, quiet_timeout=None, threads=None, **fields) -> "AutopilotConfig":
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
        config = cls(repeats=parse_positive_int(repeats, "--repeats"), epochs=parse_float(epochs, "--epochs"),
                     rule=rule, launcher=launcher_from_cli(launcher, ray_address),
                     nproc=parse_positive_int(nproc, "--nproc"),
                     arms=None if arms is None else tuple(arms) if isinstance(arms, (list, tuple)) else (arms,),
                     until_decisive=bool(until_decisive), max_repeats=parse_positive_int(max_repeats, "--max-repeats"),
                     quality_tolerance=parse_float(quality_tolerance, "--quality-tolerance"), compile=bool(compile),
                     accept_load=bool(accept_load), threads=parse_threads(threads),
                     quiet_timeout_s=QUIET_TIMEOUT_S if quiet_timeout is None else parse_float(quiet_timeout,
                                                                                               "--quiet-timeout"),
                     **fields)
        config.validate()
        return config


def prediction_factors(rec: dict, comparison: dict) -> dict:
    """The predicted speedup's two factors beside what the runs measured: the time per step (the
    profile's t(B)/t(B0) against the runs') and the steps to the target (the noise-scale model's
    S(B0)/S(B) against the runs'), so a user sees which half of a prediction was off.

    Measured on the headline's own censored basis: the steps factor is the ratio of the arms' Kaplan-Meier
    median steps to the target, the time per step is each arm's median time over its median steps, so the
    measured steps factor over the measured time-per-step factor is the headline's speedup exactly. Where a
    median is only a bound (fewer than half the seeds reached the target) neither factor is measured."""
    groups = comparison.get("groups") or []
    b0, b = rec["baseline"]["batch_size"], rec["batch_size"]
    step_times = {c["batch_size"]: c["step_time_s"] for c in rec["candidates"]}
    predicted_step = step_times[b] / step_times[b0] if step_times.get(b) and step_times.get(b0) else None
    predicted_steps = steps_factor(b0, rec.get("noise_scale")) / steps_factor(b, rec.get("noise_scale"))
    measured_step = measured_steps = None
    if len(groups) > 1:
        medians = [((g.get("time_to_target") or {}).get("median_s"), (g.get("steps_to_target_median") or {}).get("median"))
                   for g in groups[:2]]
        if all(time and steps for time, steps in medians):
            (base_time, base_steps), (time, steps) = medians
            measured_steps = base_steps / steps
            measured_step = (time / steps) / (base_time / base_steps)
    return {"step_time_ratio": {"predicted": predicted_step, "measured": measured_step,
                                "meaning": "time per step at the recommended batch over the baseline's"},
            "steps_ratio": {"predicted": predicted_steps, "measured": measured_steps,
                            "meaning": "steps the baseline needs to the target over the recommended batch's"}}


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
    where = (f"look {look} of {len(levels)} at level {level:.3g} ({1 - level:.0%} intervals; alpha spending over "
             f"{min(levels)} to {max(levels)} seeds, {sum(levels.values()):.0%} in all)")
    if decided is not None:
        return f"decisive after {seeds} seed pairs: {decided}, {where}"
    return f"not decisive after {seeds} seed pairs (--max-repeats), {where}"


def headline(rec: dict, comparison: dict, decided: str | None = None, seeds: int | None = None,
             levels: dict[int, float] | None = None) -> dict:
    """One line a person reads first: the pair, the measured speedup in :mod:`largestep.plan.verdict`'s words
    and how many seeds reached the target, the prediction with its interval beside it, and the quality
    difference with its interval. ``seeds`` and ``levels``: an `--until-decisive` autopilot's last look."""
    groups = comparison.get("groups") or []
    base, recommended = (groups[0], groups[1]) if len(groups) > 1 else ({}, {})
    predicted = rec["predicted_speedup"]["time_to_target"]
    predicted_interval = rec["predicted_speedup"].get("time_to_target_interval")
    coverage = rec["predicted_speedup"].get("coverage")
    interval = recommended.get("speedup_interval")
    measured = recommended.get("speedup")
    verdict = recommended.get("verdict") or {}
    reached = recommended.get("time_to_target") or {}
    confidence = comparison.get("confidence", CONFIDENCE)
    text = (f"batch {rec['batch_size']} at lr {rec['learning_rate']:.3g} (baseline {rec['baseline']['batch_size']} "
            f"at {rec['baseline']['learning_rate']:.3g}): time to the baseline's validation loss "
            f"{comparison.get('target_val_loss', float('nan')):.4f}: {verdict.get('text', 'not measured')}")
    text += (f", reached in {reached.get('reached', 0)} of {reached.get('n', 0)} seeds"
             f" (baseline {base.get('reached', 0)} of {base.get('n', 0)}); predicted {predicted:.2f}x")
    if predicted_interval:
        text += (f" ({coverage:.0%} prediction interval {interval_text(*predicted_interval)})" if coverage
                 else f" ({interval_text(*predicted_interval)})")
    censored = [(group["name"], run) for group in groups for run in group.get("runs") or []
                if run.get("time_to_target_s") is None]
    if censored:
        text += "; never reached, counted as at least their whole training time: " + ", ".join(
            f"{name} seed {run.get('seed')} ({run['censored_at_s']:.0f} s)" if run.get("censored_at_s") is not None
            and math.isfinite(run["censored_at_s"])
            else f"{name} seed {run.get('seed')} ({run.get('state', 'no time').lower()})" for name, run in censored)
    conditions = comparison.get("conditions") or {}
    if conditions.get("differed"):
        text += f"; conditions differed: {conditions['text']}"
    quality = recommended.get("quality") or {}
    name = (comparison.get("quality") or {}).get("name")
    if quality:
        text += "; " + quality_words(quality, name, confidence)
    if seeds is not None:
        text += "; " + sequential_text(seeds, decided, levels or {seeds: 1 - confidence})
    return {"text": text, "kept_baseline": False, "decisive": decided, "batch_size": rec["batch_size"], "learning_rate": rec["learning_rate"],
            "measured_speedup": measured, "measured_speedup_interval": interval,
            "measured_speedup_bound": recommended.get("speedup_bound"), "verdict": verdict or None,
            "confidence": confidence, "tone": headline_tone(verdict, quality),
            "predicted_speedup": predicted, "predicted_speedup_interval": predicted_interval,
            "predicted_coverage": coverage,
            "predicted_throughput_speedup": rec["predicted_speedup"]["throughput"],
            "reached": reached.get("reached"), "seeds": reached.get("n"),
            "censored": [{"group": name, "run": run["id"], "seed": run.get("seed")} for name, run in censored],
            "metric": comparison.get("metric"), "metric_difference": recommended.get("metric_difference"),
            "p_value": quality.get("p_value"), "quality": {"name": name, **quality},
            "factors": prediction_factors(rec, comparison), "device": rec["device"].get("name"),
            "conditions_differed": conditions.get("text")}


def keep_baseline_headline(rec: dict) -> dict:
    """The recommendation is the baseline itself: say so plainly, train nothing, claim no speedup."""
    why = "; ".join(rec.get("reasons") or []) or "no measured batch is predicted faster"
    text = (f"keep your baseline: batch {rec['baseline']['batch_size']} at lr {rec['baseline']['learning_rate']:.3g}, "
            f"because {why}")
    return {"text": text, "kept_baseline": True, "batch_size": rec["batch_size"], "learning_rate": rec["learning_rate"],
            "measured_speedup": None, "measured_speedup_interval": None, "predicted_speedup": 1.0, "verdict": None,
            "tone": "neutral",
            "predicted_throughput_speedup": rec["predicted_speedup"]["throughput"], "reached": None, "seeds": None,
            "censored": [], "metric": None, "metric_difference": None, "p_value": None, "quality": None,
            "factors": None, "device": rec["device"].get("name")}


def schedule_config(rec: dict, base, rule: str):
    """The schedule arm's runs: the planned phases from the first phase's batch and rate, for the samples
    the plan predicts the growing batch needs (at most MAX_EPOCH_FACTOR times the baseline's)."""
    plan = rec["batch_schedule"]
    first = plan["phases"][0]
    return replace(base, batch_size=first["batch_size"], lr=first["learning_rate"],
                   batch_schedule=tuple((p["batch_size"], p["start_fraction"]) for p in plan["phases"]),
                   batch_schedule_rule=rule, epochs=base.epochs * min(MAX_EPOCH_FACTOR, max(1.0, plan["samples_ratio"])))


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
    text += (f", reached in {reached.get('reached', 0)} of {reached.get('n', 0)} seeds; predicted "
             f"{predicted['over_baseline']:.2f}x over the baseline and {predicted['over_best_fixed']:.2f}x over the "
             f"best fixed batch {plan['best_fixed']['batch_size']}")
    if group.get("speedup") and fixed.get("speedup"):   # a ratio of two ratios: its interval is not measured
        text += (f"; {group['speedup'] / fixed['speedup']:.2f}x the fixed arm's speedup (batch {fixed['batch_size']}; "
                 f"a ratio of two medians with no interval of its own: compare the two arms' intervals)")
    return {"schedule": {"text": text, "spec": plan["spec"], "measured_speedup": group.get("speedup"),
                         "measured_speedup_interval": group.get("speedup_interval"), "verdict": group.get("verdict"),
                         "tone": headline_tone(group.get("verdict"), group.get("quality")),
                         "predicted_speedup": predicted["over_baseline"],
                         "predicted_speedup_over_best_fixed": predicted["over_best_fixed"],
                         "quality": group.get("quality")}}


def flagged(result: dict, rec: dict) -> dict:
    """A headline made from a profile the user accepted though it could not be trusted carries the warning."""
    if not rec.get("accepted_load"):
        return result
    return {**result, "accepted_load": accepted_load_note(rec["accepted_load"])}


def wait_for_quiet(others_busy: Callable[[float], float | None], spare_cores: float, timeout_s: float,
                   on_wait: Callable[[float, float | None], None] = lambda _waited, _busy: None,
                   clock: Callable[[], float] = time.monotonic, window_s: float = QUIET_WINDOW_S) -> bool:
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


def trusted_profile(profile: dict, accept_load: bool, timeout_s: float,
                    wait: Callable[[float], bool], reprofile: Callable[[dict, list[int]], dict]) -> dict:
    """The profile to recommend from: ``profile`` itself when it can be trusted (or the user accepts it);
    else, once ``wait(timeout_s)`` finds a quiet window, ``reprofile(profile, sizes)`` of the sizes that made it
    untrusted (under load, failing the physics check), the others carried over. Raises UnusableProfile with the
    refusal's line when the machine never quietens within the timeout, or the re-profile cannot be trusted
    either: the autopilot never trains on such a profile."""
    refused = curve.refusal(profile)
    if refused is None or accept_load:
        return profile
    if not wait(timeout_s):
        raise UnusableProfile(f"the machine did not quieten within {timeout_s:.0f} s (the autopilot's "
                              f"--quiet-timeout): {refused}", profile.get("id"))
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


_quiet_clock = time.monotonic   # the clock the wait for a quiet window reads (a test scripts it)


def _others_busy_over(seconds: float) -> float | None:
    """The cores other processes keep busy over the next ``seconds`` (this job's own process tree aside)."""
    from ..measure.telemetry import WindowLoad

    window = WindowLoad()
    window.open()
    time.sleep(seconds)
    window.close()
    return window.others_busy_cores()


def autopilot_task(ctx: JobContext) -> None:
    """The body of an ``autopilot`` job."""
    from .start import start_noise, start_noise_curve, start_profile, start_reprofile, start_train
    from ..measure.noise_config import default_warm_steps
    from ..measure.profiler_config import ProfileConfig
    from ..measure.train_config import TrainConfig
    from ..plan.schedule import with_batch_schedule
    from ..workloads import load_workload
    from ..workloads.cache import cache_of

    params = ctx.params
    config = AutopilotConfig(**params.get("autopilot", {}))
    spec, options, device = params["workload"], params.get("options") or {}, params["device"]
    children: list[str] = []

    def phase(name: str, fraction: float, **extra) -> None:
        index = PHASES.index(name)
        ctx.spool.emit(events.AUTOPILOT_PHASE, phase=name, index=index, **extra)
        ctx.progress(name, (index + fraction) / len(PHASES), children=children, **extra)

    def wait_for(job_ids: list[str], name: str) -> list[str]:
        states = []
        for k, job_id in enumerate(job_ids):
            while True:
                state = jobs.derive_state(ctx.home.job_dir(job_id))
                if state in jobs.FINAL_STATES:
                    break
                status = jobs.read_status(ctx.home.job_dir(job_id)) or {}
                phase(name, (k + (status.get("progress") or 0.0)) / len(job_ids), job=job_id,
                      detail=status.get("phase"))
                jobs.pause(ctx.home.job_dir(job_id), 0.5)
            states.append(state)
        return states

    try:
        workload = load_workload(spec, options, cache_of(ctx.home))
        epochs = config.epochs or workload.epochs

        # profile
        profile_id = start_profile(ctx.home, spec, options, device,
                                   ProfileConfig(min_seconds=config.min_seconds, max_batch=config.max_batch,
                                                 nproc=config.nproc, compile=config.compile, tf32=config.tf32,
                                                 threads=config.threads),
                                   launcher=config.launcher)
        children.append(profile_id)
        phase("profile", 0.0, job=profile_id)
        if wait_for([profile_id], "profile") != [jobs.FINISHED]:
            raise LargestepError(f"the profile {profile_id} did not finish")
        profile = events.profile_record(events.read_all(ctx.home.job_dir(profile_id)))

        def quiet_window(timeout_s: float) -> bool:
            def waiting(waited: float, busy: float | None) -> None:
                load = f"other processes keep {busy:.2f} cores busy" if busy is not None else "the load is unknown"
                phase("profile", 0.5, detail=f"profile {profile['id']} cannot be trusted: waiting up to "
                                             f"{timeout_s:.0f} s for a quiet window ({waited:.0f} s so far; {load})")

            return wait_for_quiet(_others_busy_over, _spare_cores(profile), timeout_s, on_wait=waiting,
                                  clock=_quiet_clock)

        def reprofile(untrusted: dict, sizes: list[int]) -> dict:
            again = start_reprofile(ctx.home, untrusted, sizes, device, launcher=config.launcher)
            children.append(again)
            phase("profile", 0.5, job=again, detail=f"measuring batch sizes {', '.join(map(str, sizes))} again")
            if wait_for([again], "profile") != [jobs.FINISHED]:
                raise LargestepError(f"the profile {again} did not finish")
            return events.profile_record(events.read_all(ctx.home.job_dir(again)))

        try:
            profile = trusted_profile(profile, config.accept_load, config.quiet_timeout_s, quiet_window, reprofile)
        except UnusableProfile as refused:   # never train on it: say why where the Overview shows it, and stop
            ctx.spool.emit(events.AUTOPILOT_PHASE, phase="profile", index=0, untrusted=str(refused),
                           profile_id=refused.profile_id)
            raise
        profile_id = profile["id"]

        # noise scale
        noise_id = start_noise(ctx.home, spec, options, device, batch_small=workload.baseline_batch_size,
                               batches=config.noise_batches, warm_steps=default_warm_steps(workload),
                               launcher=config.launcher, compile=config.compile)
        children.append(noise_id)
        phase("noise scale", 0.0, job=noise_id)
        wait_for([noise_id], "noise scale")
        noise = next((e for e in events.read_all(ctx.home.job_dir(noise_id)) if e["type"] == events.NOISE_ESTIMATE),
                     None)
        if noise is not None:
            noise = {**events.noise_row(noise), "id": noise_id}
        curve = []
        if config.scheduled:  # the noise scale along one baseline run, for the schedule arm
            curve_id = start_noise_curve(ctx.home, spec, options, device, CURVE_FRACTIONS,
                                         batch_small=workload.baseline_batch_size, batches=config.noise_batches,
                                         compile=config.compile)
            children.append(curve_id)
            phase("noise scale", 0.5, job=curve_id)
            wait_for([curve_id], "noise scale")
            curve = [events.noise_curve_row(e, curve_id) for e in events.read_all(ctx.home.job_dir(curve_id))
                     if e["type"] == events.NOISE_CURVE_POINT]

        # recommendation
        phase("recommendation", 0.0)
        rec = recommend(dict(profile, epochs=epochs), RecommendConfig(rule=config.rule, accept_load=config.accept_load),
                        noise)
        if config.scheduled:
            rec = with_batch_schedule(rec, curve, chosen=True)
        ctx.spool.emit(events.RECOMMENDATION, document=rec)

        if rec["batch_size"] == rec["baseline"]["batch_size"] and config.arms is None:
            result = flagged(keep_baseline_headline(rec), rec)   # nothing to verify: no second, identical arm
            ctx.spool.emit(events.AUTOPILOT_RESULT, headline=result, comparison=None,
                           recommendation_id=rec["recommendation_id"], profile_id=profile_id, noise_id=noise_id,
                           baseline_runs=[], recommended_runs=[], epochs={"baseline": epochs}, config=asdict(config))
            ctx.progress("done", 1.0, headline=result["text"])
            return

        # training runs: the arms interleaved seed by seed (baseline 0, recommended 0, baseline 1, ...) on
        # the device's first-in-first-out queue, so drift in the machine's load falls on both arms alike
        base = TrainConfig(batch_size=rec["baseline"]["batch_size"], lr=rec["baseline"]["learning_rate"],
                           epochs=epochs, warmup_samples=rec["warmup_samples"], nproc=config.nproc,
                           compile=config.compile, tf32=config.tf32, threads=rec.get("threads"))
        factor = 1.0
        if rec.get("noise_scale"):
            b0, b, bn = rec["baseline"]["batch_size"], rec["batch_size"], rec["noise_scale"]
            factor = min(MAX_EPOCH_FACTOR, (b + bn) / (b0 + bn))  # S(B) B / S(B0) B0: the data the larger batch needs
        chosen = TrainConfig(batch_size=rec["batch_size"], lr=rec["learning_rate"], epochs=epochs * factor,
                             warmup_samples=rec["warmup_samples"], nproc=config.nproc, compile=config.compile,
                             tf32=config.tf32, threads=rec.get("threads"))
        arms = {"baseline": (base, f"grp-{secrets.token_hex(4)}", []),
                "recommended": (chosen, f"grp-{secrets.token_hex(4)}", [])}
        if config.scheduled:   # the third arm, in the same rotation
            arms["schedule"] = (schedule_config(rec, base, config.rule), f"grp-{secrets.token_hex(4)}", [])
        order: list[str] = []
        state_of: dict[str, str] = {}

        def train_seeds(seeds: range) -> None:
            """Queue one run of each arm per seed, in turn, and wait for them all."""
            queued = []
            for k in seeds:
                for role, (train_config, group, ids) in arms.items():
                    [run_id] = start_train(ctx.home, spec, options, device,
                                           replace(train_config, seed=train_config.seed + k, group=group), 1,
                                           role=role, recommendation_id=rec["recommendation_id"],
                                           launcher=config.launcher)
                    ids.append(run_id)
                    queued.append(run_id)
                    children.append(run_id)
            order.extend(queued)
            phase("training runs", 0.0, run_ids=order)
            state_of.update(zip(queued, wait_for(queued, "training runs")))

        def compared(confidence: float = CONFIDENCE) -> dict:
            groups, evals = [], []
            for name, (_config, _group, ids) in arms.items():
                runs = []
                for job_id in ids:
                    spool = events.read_all(ctx.home.job_dir(job_id))
                    runs.append({**events.run_record(spool, job_id), "state": state_of[job_id]})
                    evals += events.evaluations(spool, job_id)
                groups.append((name, runs))
            frame = pd.DataFrame(evals, columns=["run_id", "step", "epoch", "samples", "wall_time_s", "train_time_s",
                                                 "val_loss"])
            return compare_groups(groups, frame, tolerance=config.tolerance,
                                  quality_tolerance=config.quality_tolerance, confidence=confidence)

        # each look of --until-decisive is tested at its own share of the error rate (alpha spending)
        levels = look_levels(config.repeats, config.max_repeats) if config.until_decisive else None
        train_seeds(range(config.repeats))
        phase("comparison", 0.0)
        seeds = config.repeats
        comparison = compared(1 - levels[seeds]) if levels else compared()
        while levels and decisive(comparison) is None and seeds + 1 in levels:
            train_seeds(range(seeds, seeds + 1))   # one more pair of seeds
            seeds += 1
            phase("comparison", 0.0)
            comparison = compared(1 - levels[seeds])
        baseline_ids, recommended_ids = arms["baseline"][2], arms["recommended"][2]
        result = (headline(rec, comparison, decisive(comparison), seeds, levels) if levels
                  else headline(rec, comparison))
        if config.scheduled:
            result = {**result, **schedule_headline(rec, comparison)}
        result = flagged(result, rec)
        ctx.spool.emit(events.AUTOPILOT_RESULT, headline=result, comparison=comparison,
                       recommendation_id=rec["recommendation_id"], profile_id=profile_id, noise_id=noise_id,
                       baseline_runs=baseline_ids, recommended_runs=recommended_ids,
                       epochs={"baseline": epochs, "recommended": epochs * factor,
                               **({"schedule": arms["schedule"][0].epochs} if config.scheduled else {})},
                       config=asdict(config))
        ctx.progress("done", 1.0, headline=result["text"])
    except BaseException:
        for job_id in children:  # cancelled or failed: take the children down too
            try:
                jobs.cancel(ctx.home, job_id, grace_s=2.0)
            except LargestepError:
                pass
        raise
