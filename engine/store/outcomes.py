"""What the loop's jobs leave in the store, read back once they end, for the command line and the Python API alike.

Both start a job (:mod:`largestep.jobs.start`), follow it each in its own way (a rich bar, tqdm) and then call
one function here: it ingests the job's spool and returns the document the job left, in the shape the CLI's
``--json`` prints and the API's result objects hold, or raises the job's failure as one line. A recommendation
is made here too, from stored inputs, for the same two callers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .. import curve
from ..errors import LargestepError, UsageError
from ..home import Home, check_database_file

__all__ = [
    "reading",
    "ended",
    "profile_summary",
    "profile_outcome",
    "noise_outcome",
    "noise_curve_outcome",
    "recommendation",
    "recommend_and_save",
    "autopilot_outcome",
]

#: A noise curve point's fields a user is shown.
CURVE_SHOWN = (
    "fraction",
    "step",
    "b_simple",
    "ci_low",
    "ci_high",
    "batch_small",
    "batch_big",
    "batches",
    "unreliable",
    "reason",
    "elapsed_s",
)


@contextmanager
def reading(home: Home, ingest: bool = True) -> Iterator[Any]:
    """A short connection for reading: the database file checked to be DuckDB's (nothing else is touched), what
    the jobs spooled since ingested, and nothing created where there is nothing to read."""
    from .connection import connect, connect_empty
    from .ingest import ingest as ingest_spools

    check_database_file(home.database)
    if not home.holds_anything():
        with connect_empty() as con:
            yield con
        return
    if ingest:
        ingest_spools(home)
    with connect(home) as con:
        yield con


def ended(home: Home, job_id: str, state: str, what: str) -> None:
    """Ingest a job that has ended; a job that did not finish is a one-line LargestepError naming ``what`` it was."""
    from .. import jobs
    from ..jobs.follow import last_log_line
    from .connection import connect
    from .ingest import ingest
    from .queries import get_job

    ingest(home)
    if state != jobs.FINISHED:
        with connect(home) as con:
            job = get_job(con, job_id) or {}
        raise LargestepError(f"{what} {job_id} ended {state}: {job.get('error') or last_log_line(home, job_id)}")


# -- profiles --------------------------------------------------------------------------------------


def profile_outcome(home: Home, job_id: str, state: str) -> dict:
    """The profile a job measured (see :func:`profile_summary`), whatever its end, as long as it measured a batch
    size; one that measured none is a one-line LargestepError."""
    from ..jobs.follow import last_log_line
    from .connection import connect
    from .ingest import ingest
    from .queries import get_job, load_profile

    ingest(home)
    with connect(home) as con:
        stored = load_profile(con, job_id)
        job = get_job(con, job_id)
    if stored is None or not stored.get("points"):
        error = (job or {}).get("error") or last_log_line(home, job_id)
        raise LargestepError(f"profile {job_id} ended {state} without measuring any batch size: {error}")
    return profile_summary(stored)


def profile_summary(profile: dict) -> dict:
    """A stored profile (from :func:`largestep.store.load_profile`) in the shape `profile --json` promises."""
    points = []
    for p in profile["points"]:
        points.append(
            {
                "batch_size": p["batch_size"],
                "status": p["status"],
                # the step time is the profile's estimator of the timed steps; the median and quartiles beside it
                "step_time_s": {
                    "estimate": p.get("estimate_s") or p.get("median_s"),
                    "median": p.get("median_s"),
                    "p25": p.get("p25_s"),
                    "p75": p.get("p75_s"),
                    "n": p.get("n") or 0,
                },
                "samples_per_s": p.get("samples_per_s"),
                "peak_memory_bytes": p.get("peak_memory_bytes"),
                "memory_is_estimate": p.get("memory_is_estimate"),
                "flops_per_step": p.get("flops_per_step"),
                "flops_per_s": p.get("flops_per_s"),
                "energy_per_sample_j": p.get("energy_per_sample_j"),
                "noisy": p.get("noisy"),
                "error": p.get("error"),
                # Dataset workloads: the step without its loader, and whether the loader limits throughput
                "compute_time_s": p.get("compute_median_s"),
                "input_bound": bool(p.get("input_bound")),
                # interleaved rounds, the physics check, and other processes' CPU share while it was timed
                "visits": p.get("visits"),
                "remeasured": p.get("remeasured"),
                "inconsistent": bool(p.get("inconsistent")),
                "background_cpu_pct": p.get("background_cpu_pct"),
                # visits set aside because other processes took the cores the steps needed, and whether too
                # few were left uncontended (the steps kept include contended ones)
                "others_busy_cores": p.get("others_busy_cores"),
                "loaded_visits": p.get("loaded_visits") or 0,
                "under_load": bool(p.get("under_load")),
                # untimed steps before the size's first timed ones: fewer than --warmup-steps once steady
                "warmup_steps": int(p["warmup_steps"]) if p.get("warmup_steps") is not None else None,
            }
        )
    fit = None
    if profile.get("memory_fit_slope_bytes") is not None:
        fit = {
            "intercept_bytes": profile["memory_fit_intercept_bytes"],
            "slope_bytes": profile["memory_fit_slope_bytes"],
        }
    return {
        "profile_id": profile["id"],
        "workload": profile["workload"],
        "state": profile.get("state"),
        "device": {
            "id": profile.get("device_id"),
            "name": profile.get("device_name"),
            "kind": profile.get("device_kind"),
        },
        "dtype": profile.get("dtype"),
        "saturation_batch": profile.get("saturation_batch"),
        "stop_reason": profile.get("stop_reason"),
        "memory_fit": fit,
        "memory_budget_bytes": profile.get("memory_budget_bytes"),
        "baseline": {"batch_size": profile.get("baseline_batch_size"), "learning_rate": profile.get("baseline_lr")},
        "telemetry": {"source": profile.get("telemetry_source"), "reason": profile.get("telemetry_reason")},
        "started_at": profile.get("started_at"),
        "ended_at": profile.get("ended_at"),
        "points": points,
        "inconsistency": profile.get("inconsistency"),
        "math_settings": profile.get("math_settings"),  # TF32 and cuDNN as measured (None: recorded before)
        "estimator": profile.get("estimator") or "median",
        "threads": profile.get("threads"),
        "cores": profile.get("cores"),
        "carried_from": profile.get("carried_from"),
        # why the profile cannot be used for recommending (`recommend` refuses it unless --accept-load); and
        # whether torch's threads and other processes' busy cores exceed the machine's (then --threads)
        "refusal": curve.refusal(profile),
        "threads_note": curve.threads_note(profile),
    }


# -- the noise scale -------------------------------------------------------------------------------


def noise_outcome(home: Home, job_id: str) -> dict:
    """A finished noise-scale job's estimate, as `noise --json` prints it."""
    from ..jobs import events
    from .connection import connect
    from .queries import load_noise

    with connect(home) as con:
        estimate = load_noise(con, job_id)
    shown = [f for f in events.NOISE_FIELDS if f not in ("g_small_sq", "g_big_sq")]  # the norms stay in the store
    return {"noise_id": job_id, "workload": estimate["workload"], **{k: estimate.get(k) for k in shown}}


def noise_curve_outcome(home: Home, job_id: str) -> dict:
    """A finished noise-curve job's points, as `noise --at ... --json` prints them."""
    from .connection import connect
    from .queries import load_noise_curve

    with connect(home) as con:
        points = load_noise_curve(con, job_id)
    return {
        "curve_id": job_id,
        "workload": points[0]["workload"] if points else None,
        "points": [{k: p.get(k) for k in CURVE_SHOWN} for p in points],
    }


# -- recommendations -------------------------------------------------------------------------------


def recommendation(con, profile_id: str | None, config, noise_id: str | None, curve_id: str = "none") -> dict:
    """A recommendation from stored inputs: the profile, the noise estimate (``noise_id``; None: the workload's
    newest reliable one unless ``config`` gives a noise scale), and a batch schedule from the noise curve
    ``curve_id`` ("latest": the workload's newest, if any; "none": no schedule). Not saved."""
    from ..plan.recommend import recommend as make
    from ..plan.schedule import with_batch_schedule
    from .queries import load_noise_curve, recommendation_inputs, step_time_biases, verification_points

    profile, noise = recommendation_inputs(con, profile_id, noise_id, stored_noise=config.noise_scale is None)
    curve = [] if curve_id == "none" else load_noise_curve(con, curve_id, workload=profile["workload"])
    if not curve and curve_id not in ("none", "latest"):
        raise UsageError(
            f"no noise curve {curve_id!r}: run `largestep noise --at 0,0.25,0.5,1`, or give "
            f"--noise-curve latest or none"
        )
    # the profile-to-run step-time bias earlier verifications measured on this workload and device widens the
    # prediction interval; the steps they measured correct the noise model, which the noise curve (if any) is,
    # as the batch schedule planned from it
    workload, device = profile.get("workload"), profile.get("device_id")
    rec = make(
        profile,
        config,
        noise,
        step_time_biases(con, workload, device),
        curve=curve or None,
        calibration=verification_points(con, workload, device),
    )
    if curve_id == "none":
        return rec
    return with_batch_schedule(rec, curve, chosen=curve_id != "latest")


def recommend_and_save(
    home: Home,
    profile_id: str | None,
    config,
    noise_id: str | None = None,
    curve_id: str = "latest",
    estimate_noise: bool = False,
    check_stability: bool = False,
    device: str = "auto",
    *,
    follow: Callable[[str, str], None],
) -> dict:
    """`largestep recommend`: a recommendation from a stored profile, saved, and returned as its document.

    ``estimate_noise``: estimate the noise scale first (a job); ``check_stability``: train briefly at the chosen
    batch with the rate ramped past it and back off if it diverges below it (a job). ``follow(job_id, what)``
    follows such a job to its end and raises its failure (see :func:`ended`). Everything that can be refused is
    refused before a job starts.
    """
    from ..jobs.start import start_noise, start_stability
    from ..measure.stability import apply_stability
    from .connection import connect
    from .ingest import save_recommendation
    from .queries import load_stability

    chosen = [
        flag
        for flag, given in (
            ("--noise-scale", config.noise_scale is not None),
            ("--estimate-noise", estimate_noise),
            ("--noise", noise_id is not None),
        )
        if given
    ]
    if len(chosen) > 1:
        raise UsageError(f"give only one of {', '.join(chosen)}")
    config.validate()
    if curve_id is None:
        curve_id = "none"
    with reading(home) as con:
        rec = recommendation(con, profile_id, config, noise_id, curve_id)  # validates before any job starts
    if estimate_noise:
        job_id = start_noise(
            home, rec["workload_spec"], rec["workload_options"], device, batch_small=rec["baseline"]["batch_size"]
        )
        follow(job_id, "noise estimate")
        with connect(home) as con:
            rec = recommendation(con, rec["profile_id"], config, job_id, curve_id)
    if check_stability:
        job_id = start_stability(home, rec, device)
        follow(job_id, "stability check")
        with connect(home) as con:
            result = load_stability(con, job_id)
        rec = apply_stability(rec, result)
    with connect(home) as con:
        save_recommendation(home, con, rec)
    return rec


# -- the autopilot ---------------------------------------------------------------------------------


def autopilot_outcome(home: Home, job_id: str) -> dict:
    """A finished autopilot as `autopilot --json` prints it: the headline, the recommendation, the comparison
    and the ids of every job it started."""
    from .connection import connect
    from .queries import load_autopilot, load_recommendation

    with connect(home) as con:
        result = load_autopilot(con, job_id)
        rec = load_recommendation(con, result["recommendation_id"])
    return {
        "autopilot_id": job_id,
        "headline": result["headline"],
        "recommendation": rec,
        "comparison": result["comparison"],
        "profile_id": result["profile_id"],
        "noise_id": result["noise_id"],
        "baseline_runs": result["baseline_runs"],
        "recommended_runs": result["recommended_runs"],
    }
