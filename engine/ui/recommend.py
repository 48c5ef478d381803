"""The Recommend page, prepared without Streamlit: the form, the noise-scale estimate, and one
recommendation's metrics, chart, reasons and candidates.

Bad input raises :class:`largestep.errors.UsageError` with a message that says how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from .. import curve, jobs, store
from ..errors import UsageError
from ..format import format_bytes, format_count, format_duration, format_number, plural
from ..home import Home
from ..plan.recommend import RULES, RecommendConfig, accepted_load_note, model_text, recommend
from ..plan.verdict import interval_text
from ..plan.schedule import with_batch_schedule
from .charts import recommend as reccharts
from .widgets import (
    Metric,
    device_options,
    downloads,
    latest_recommendation_for,
    load_recommendation,
    parse_optional_float,
    profile_choices,
)

__all__ = [
    "RECOMMEND_START",
    "NOISE_MODES",
    "RecommendForm",
    "recommend_config",
    "compute_recommendation",
    "profile_defaults",
    "NoiseChoice",
    "noise_choices",
    "start_noise_estimate",
    "NoiseProgress",
    "noise_progress",
    "RecommendationView",
    "recommendation_view",
    "ScheduleView",
    "schedule_view",
    "candidates_table",
    "highlight_roles",
    "RULES",
    "device_options",
    "downloads",
    "latest_recommendation_for",
    "load_recommendation",
    "profile_choices",
    "start_reprofile",
    "ACCEPT_LOAD_LABEL",
]


RECOMMEND_START = (
    "No profiles yet — profile a workload on the Profiles page (or run `largestep profile "
    "--workload fraud-gru`), then come back here to turn it into a batch size and learning rate."
)
NOISE_MODES = {
    "stored": "a stored estimate",
    "perfect": "none: assume perfect scaling up to saturation",
    "manual": "a value I enter",
}
ROLE_COLOURS = {"baseline": "rgba(255, 127, 14, 0.18)", "recommended": "rgba(214, 39, 40, 0.16)"}


@dataclass(frozen=True)
class RecommendForm:
    """The Recommend page's inputs, as typed."""

    profile_id: str
    baseline_batch: int | None = None  # None: the workload's
    baseline_lr: str = ""  # empty: the workload's
    rule: str = "linear"
    noise_mode: str = "perfect"  # one of NOISE_MODES
    noise_id: str | None = None  # with noise_mode "stored"
    noise_scale: str = ""  # with noise_mode "manual"
    memory_headroom: float = 0.9
    max_lr: str = ""  # empty: no cap
    accept_load: bool = False  # use a profile that cannot be trusted; the recommendation says so


def recommend_config(form: RecommendForm) -> tuple[RecommendConfig, str | None]:
    """(config, noise id) to recommend with; UsageError on bad input."""
    if form.rule not in RULES:
        raise UsageError(f"the rule must be linear, sqrt or noise, not {form.rule!r}")
    if form.noise_mode not in NOISE_MODES:
        raise UsageError(f"unknown noise-scale choice {form.noise_mode!r}")
    noise_scale = None
    noise_id = None
    if form.noise_mode == "manual":
        noise_scale = parse_optional_float(form.noise_scale, "the noise scale")
        if noise_scale is None:
            raise UsageError("enter a noise scale (in samples, e.g. 2000), or choose another noise-scale option")
    elif form.noise_mode == "stored":
        if not form.noise_id:
            raise UsageError("no stored noise estimate is chosen: estimate one below, or assume perfect scaling")
        noise_id = form.noise_id
    headroom = form.memory_headroom
    if headroom is None or not 0 < headroom <= 1:
        raise UsageError(f"memory headroom must lie in (0, 1], not {headroom!r}")
    config = RecommendConfig(
        baseline_batch=int(form.baseline_batch) if form.baseline_batch else None,
        baseline_lr=parse_optional_float(form.baseline_lr, "the baseline learning rate"),
        rule=form.rule,
        noise_scale=noise_scale,
        memory_headroom=float(headroom),
        max_lr=parse_optional_float(form.max_lr, "max lr"),
        accept_load=bool(form.accept_load),
    )
    config.validate()
    return config, noise_id


def compute_recommendation(home: Home, form: RecommendForm) -> dict:
    """Make the recommendation the form describes and save it; returns the saved document."""
    config, noise_id = recommend_config(form)
    with store.connect(home) as con:
        # "perfect" means exactly that: never pick up a stored estimate behind the user's back
        profile, noise = store.recommendation_inputs(con, form.profile_id, noise_id, stored_noise=False)
        # the workload's newest noise curve, where there is one, plans a growing batch beside the fixed one
        biases = store.step_time_biases(con, profile.get("workload"), profile.get("device_id"))
        calibration = store.verification_points(con, profile.get("workload"), profile.get("device_id"))
        # the workload's newest noise curve: the steps of every fixed batch are priced over it, and the growing
        # batch planned from it, by one model (a noise scale the user chose stands alone)
        curve = store.load_noise_curve(con, None, workload=profile["workload"])
        rec = with_batch_schedule(
            recommend(
                profile,
                config,
                noise,
                biases,
                curve=curve if form.noise_mode == "stored" else None,
                calibration=calibration,
            ),
            curve,
        )
        store.save_recommendation(home, con, rec)
    return rec


def profile_defaults(home: Home, profile_id: str) -> dict | None:
    """What the form starts from: the workload's baseline and the measured batch sizes."""
    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
    if profile is None:
        return None
    measured = [p["batch_size"] for p in profile["points"] if p["status"] == "ok" and p.get("median_s")]
    return {
        "workload": profile.get("workload"),
        "workload_spec": profile.get("workload_spec"),
        "baseline_batch": profile.get("baseline_batch_size"),
        "baseline_lr": profile.get("baseline_lr"),
        "measured": measured,
        "device_total_memory_bytes": profile.get("device_total_memory_bytes"),
        "device_name": profile.get("device_name"),
        "state": profile.get("state"),
        "epochs": profile.get("epochs"),
        # a profile that cannot be trusted: why (the warning box), and the sizes a re-profile measures again
        "refusal": curve.refusal(profile, accept=f"tick **{ACCEPT_LOAD_LABEL}**"),
        "untrusted": curve.untrusted_sizes(profile),
        "threads_note": curve.threads_note(profile),
    }


ACCEPT_LOAD_LABEL = "Accept the load"


def start_reprofile(home: Home, profile_id: str) -> str:
    """Measure again the sizes that make the profile untrusted (under load, failing the physics check), on the
    device its job was asked for, its other points carried over; returns the new profile's id."""
    from ..jobs.start import start_reprofile as start

    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
        job = store.get_job(con, profile_id) if profile is not None else None
    if profile is None:
        raise UsageError(f"no profile {profile_id!r}")
    spec = job.get("spec") if job else None
    spec = json.loads(spec) if isinstance(spec, str) else (spec or {})
    device = (spec.get("params") or {}).get("device") or profile.get("device_kind") or "auto"
    return start(home, profile, curve.untrusted_sizes(profile), device)


@dataclass(frozen=True)
class NoiseChoice:
    id: str
    label: str  # "B_simple ≈ 1,234 (90% 800–2,000) · 2025-01-31 14:02 (noise-…)"
    b_simple: float


def noise_choices(home: Home, workload: str | None) -> list[NoiseChoice]:
    """The reliable stored noise estimates for ``workload``, newest first."""
    with store.connect(home) as con:
        frame = store.list_noise_estimates(con)
    out = []
    for row in store.frame_records(frame):
        if row.get("b_simple") is None or (workload and row.get("workload") != workload):
            continue
        created = pd.Timestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M") if row.get("created_at") else "?"
        out.append(
            NoiseChoice(
                row["id"],
                f"B_simple ≈ {row['b_simple']:,.0f}{_interval(row)} · {created} ({row['id']})",
                float(row["b_simple"]),
            )
        )
    return out


def _interval(row: dict) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None and high is None:
        return ""
    return f" (90% interval {'?' if low is None else f'{low:,.0f}'}–{'∞' if high is None else f'{high:,.0f}'})"


def start_noise_estimate(home: Home, profile_id: str, device: str) -> str:
    """Start a noise-scale job for the profile's workload, small batch = its baseline; returns the id."""
    from ..jobs.start import start_noise

    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
    if profile is None:
        raise UsageError(f"no profile {profile_id!r}")
    spec = profile.get("workload_spec") or profile.get("workload")
    return start_noise(home, spec, profile.get("options") or {}, device, batch_small=profile.get("baseline_batch_size"))


@dataclass(frozen=True)
class NoiseProgress:
    id: str
    state: str
    phase: str
    progress: float  # 0..1 within the phase
    done: bool
    message: str  # the result, or why it failed, in one line
    b_simple: float | None = None


def noise_progress(home: Home, job_id: str) -> NoiseProgress:
    """Where a noise-scale job is; once it has ended, its ingested result."""
    job_dir = home.job_dir(job_id)
    state = jobs.derive_state(job_dir)
    status = jobs.read_status(job_dir) or {}
    progress = status.get("progress") or 0.0
    phase = str(status.get("phase") or state.lower())
    if state not in jobs.FINAL_STATES:
        return NoiseProgress(
            job_id, state, phase, max(0.0, min(1.0, float(progress))), False, f"estimating the noise scale: {phase}"
        )
    store.ingest(home)
    with store.connect(home) as con:
        estimate = store.load_noise(con, job_id)
        job = store.get_job(con, job_id) or {}
    if state != jobs.FINISHED or estimate is None:
        return NoiseProgress(
            job_id,
            state,
            phase,
            1.0,
            True,
            f"noise estimate {job_id} ended {state}: {job.get('error') or 'no estimate recorded'}",
        )
    if estimate.get("b_simple") is None:
        return NoiseProgress(
            job_id,
            state,
            phase,
            1.0,
            True,
            f"noise estimate {job_id} is unreliable: {estimate.get('reason') or 'no reason given'}",
        )
    return NoiseProgress(
        job_id,
        state,
        phase,
        1.0,
        True,
        f"noise estimate {job_id}: B_simple ≈ {estimate['b_simple']:,.0f}{_interval(estimate)}",
        float(estimate["b_simple"]),
    )


@dataclass
class RecommendationView:
    rec: dict
    headline: str
    metrics: list[Metric]
    reasons: list[str]
    candidates: pd.DataFrame
    figure: go.Figure
    notes: list[str] = field(default_factory=list)
    uncertain: str | None = None  # the profile stayed inconsistent: why the ranking is not to be trusted
    accepted_load: str | None = None  # made from an untrusted profile the user accepted: the warning it carries
    schedule: ScheduleView | None = None


@dataclass
class ScheduleView:
    """The batch schedule planned from a noise curve: its headline, chart, phases and reasons."""

    headline: str
    figure: go.Figure
    phases: pd.DataFrame
    reasons: list[str]


def schedule_view(plan: dict) -> ScheduleView:
    speed, fixed = plan["predicted_speedup"], plan["best_fixed"]

    def interval(key: str) -> str:
        span = speed.get(f"{key}_interval")
        return f" ({speed.get('coverage', 0.9):.0%} prediction interval {interval_text(*span)})" if span else ""

    headline = (
        f"`--batch-schedule {plan['spec']}` · predicted **{speed['over_baseline']:.2f}×** the baseline's "
        f"speed{interval('over_baseline')} and **{speed['over_best_fixed']:.2f}×** the best fixed batch's "
        f"({fixed['batch_size']}){interval('over_best_fixed')} on the same noise curve `{plan['curve_id']}` · "
        f"{plan['samples_ratio']:.2f}× the baseline's samples"
    )
    phases = pd.DataFrame(
        [
            {
                "from (share of samples)": f"{p['start_fraction']:.0%}",
                "baseline at": f"{p['baseline_fraction']:.0%}",
                "B_noise": round(p["noise_scale"]),
                "batch": p["batch_size"],
                "lr": float(f"{p['learning_rate']:.4g}"),
                "warm-up samples": p["warmup_samples"],
                "step (ms)": round(p["step_time_s"] * 1e3, 3),
            }
            for p in plan["phases"]
        ]
    )
    return ScheduleView(
        headline=headline, figure=reccharts.batch_schedule_figure(plan), phases=phases, reasons=list(plan["reasons"])
    )


def recommendation_view(rec: dict) -> RecommendationView:
    """Everything the Recommend page shows about one recommendation."""
    base = rec["baseline"]
    speed = rec["predicted_speedup"]
    per_day = rec.get("experiments_per_gpu_day") or {}
    headline = (
        f"Batch **{rec['batch_size']}** at learning rate **{rec['learning_rate']:.4g}** "
        f"({rec['rule']} rule), warm-up {plural(rec['warmup_steps'], 'step')} ({rec['warmup_samples']:,} samples) · "
        f"baseline batch {base['batch_size']} at {base['learning_rate']:.4g} · recommendation "
        f"`{rec['recommendation_id']}`"
    )
    metrics = [
        Metric("Batch size", str(rec["batch_size"]), f"baseline {base['batch_size']}"),
        Metric(
            "Learning rate",
            f"{rec['learning_rate']:.4g}",
            f"{rec['rule']} rule from the baseline's {base['learning_rate']:.4g}",
        ),
        Metric("Warm-up", plural(rec["warmup_steps"], "step"), f"linear, over {rec['warmup_samples']:,} samples"),
        Metric(
            "Faster to target",
            f"{speed['time_to_target']:.2f}×",
            "predicted speedup in time to the target loss, from step times and the noise scale "
            "(or perfect scaling)"
            + (
                f"; {speed.get('coverage', 0.9):.0%} prediction interval "
                f"{interval_text(*speed['time_to_target_interval'])}, resampling "
                f"{speed.get('interval_basis') or 'the noise scale and the step times'}"
                if speed.get("time_to_target_interval")
                else ""
            ),
        ),
        Metric(
            "Prediction interval",
            interval_text(*speed["time_to_target_interval"]) if speed.get("time_to_target_interval") else "—",
            f"{speed.get('coverage', 0.9):.0%} of predictions should fall in it; candidates are ranked by its "
            f"lower end",
        ),
        Metric("Throughput", f"{speed['throughput']:.2f}×", "samples per second over the baseline's"),
    ]
    if per_day.get("baseline") and per_day.get("recommended"):
        metrics.append(
            Metric(
                "Runs per GPU-day",
                format_count(per_day["recommended"]),
                f"training runs of {rec.get('epochs') or 1} epochs per GPU-day; "
                f"{format_count(per_day['baseline'])} at the baseline",
            )
        )
    estimator = rec.get("estimator") or "median"
    notes = [f"Each batch size's step time is {curve.ESTIMATORS.get(estimator, estimator)} (`{estimator}`)."]
    if rec.get("threads"):
        notes.append(f"Measured on {plural(rec['threads'], 'torch thread')} (--threads): train with as many.")
    if rec.get("assumed_perfect_scaling"):
        notes.append("No noise-scale estimate: perfect scaling was assumed up to the saturation batch.")
    elif (rec.get("steps_model") or {}).get("kind") == "curve":
        notes.append(
            f"Steps priced over {model_text(rec)}, as the batch schedule is planned: the two agree on the "
            f"best fixed batch."
        )
    elif rec.get("noise_scale") is not None:
        notes.append(
            f"Noise scale B_noise ≈ {rec['noise_scale']:,.0f}"
            + (f" (estimate `{rec['noise_id']}`)" if rec.get("noise_id") else " (entered by hand)")
        )
    if speed.get("corrected"):
        raw = speed["raw"]
        notes.append(
            f"Ranked on the corrected noise model ({rec['correction']['text']}); on the raw model batch "
            f"{rec['batch_size']} is predicted {raw['time_to_target']:.2f}× "
            f"({interval_text(*raw['time_to_target_interval'])}). See the Calibration page."
        )
        metrics.insert(
            5,
            Metric(
                "Raw model",
                f"{raw['time_to_target']:.2f}×",
                f"the prediction on the measured noise scale alone, before the correction earlier "
                f"verifications on this workload and device measured; "
                f"{interval_text(*raw['time_to_target_interval'])}",
            ),
        )
    return RecommendationView(
        rec=rec,
        headline=headline,
        metrics=metrics,
        reasons=list(rec.get("reasons") or []),
        candidates=candidates_table(rec),
        figure=reccharts.time_to_target_figure(rec),
        notes=notes,
        uncertain=rec.get("uncertain"),
        accepted_load=accepted_load_note(rec["accepted_load"]) if rec.get("accepted_load") else None,
        schedule=schedule_view(rec["batch_schedule"]) if rec.get("batch_schedule") else None,
    )


CANDIDATE_COLUMNS = [
    "role",
    "batch",
    "lr",
    "step (ms)",
    "samples/s",
    "peak memory",
    "throughput ×",
    "time to target ×",
    "90% interval",
    "raw model",
    "run time",
    "rank",
    "excluded",
]


def candidates_table(rec: dict) -> pd.DataFrame:
    """One row per measured batch size, the baseline and the choice named in the first column."""
    rows = []
    for c in rec["candidates"]:
        b = c["batch_size"]
        role = "recommended" if b == rec["batch_size"] else "baseline" if b == rec["baseline"]["batch_size"] else ""
        if b == rec["batch_size"] == rec["baseline"]["batch_size"]:
            role = "baseline (kept)"
        rows.append(
            {
                "role": role,
                "batch": b,
                "lr": float(f"{c['learning_rate']:.4g}"),
                "step (ms)": round(c["step_time_s"] * 1e3, 3),
                "samples/s": round(c["samples_per_s"]),
                "peak memory": format_bytes(c.get("peak_memory_bytes")) if c.get("peak_memory_bytes") else "—",
                "throughput ×": round(c["speedup_throughput"], 2),
                "time to target ×": round(c["speedup_time_to_target"], 2) if c.get("speedup_time_to_target") else None,
                "90% interval": interval_text(*c["speedup_interval"]) if c.get("speedup_interval") else "—",
                "raw model": (
                    f"{c['raw_speedup']:.2f}× ({interval_text(*c['raw_interval'])})" if c.get("raw_interval") else "—"
                ),
                "run time": format_duration(c.get("run_time_s")),
                "rank": c.get("rank"),
                "excluded": c.get("excluded") or "",
            }
        )
    frame = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    frame["rank"] = frame["rank"].astype("Int64")
    if not (rec.get("predicted_speedup") or {}).get("corrected"):  # the raw model is the one ranked on
        frame = frame.drop(columns=["raw model"])
    return frame


def highlight_roles(table: pd.DataFrame, column: str = "role"):
    """A Styler that shades the baseline and the recommended rows (for st.dataframe and HTML)."""

    def shade(row: pd.Series) -> list[str]:
        role = str(row.get(column) or "")
        colour = (
            ROLE_COLOURS["recommended"]
            if role.startswith("recommended")
            else (ROLE_COLOURS["baseline"] if role.startswith("baseline") else None)
        )
        weight = "font-weight: 600; " if colour else ""
        return [f"{weight}background-color: {colour}" if colour else "" for _ in row]

    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    # every missing cell (an excluded batch has no rank nor time to target) reads as a dash, never "None"
    return table.style.apply(shade, axis=1).format(na_rep="—").format(format_number, subset=floats, na_rep="—")
