"""What the Recommend, Planner and Export pages show, prepared without Streamlit.

As in :mod:`engine.views`: each page reads its widgets into a small form, calls one function
here, and renders what comes back (dataclasses, DataFrames ready for a table, plotly figures).
Bad input raises :class:`engine.errors.UsageError` with a message that says how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from engine import jobs, reccharts, store
from engine.errors import UsageError
from engine.export import FILE_SUFFIX, FORMATS, export_config, export_filename
from engine.home import Home
from engine.reccharts import format_count
from engine.planner import Plan, PlanConfig, plan_experiments
from engine.recommend import RULES, RecommendConfig
from engine.units import format_bytes, format_duration
from engine.views import Metric

__all__ = [
    "RECOMMEND_START", "PLANNER_START", "EXPORT_START", "FORMAT_LABELS", "NOISE_MODES",
    "RecommendForm", "recommend_config", "compute_recommendation", "profile_defaults", "latest_recommendation_for",
    "NoiseChoice", "noise_choices", "start_noise_estimate", "NoiseProgress", "noise_progress",
    "RecommendationView", "recommendation_view", "Download", "downloads", "RecommendationChoice",
    "recommendation_choices", "load_recommendation", "PlannerForm", "PlannerDefaults", "planner_defaults",
    "PlannerView", "planner_view", "ExportView", "export_view", "highlight_roles", "parse_optional_float",
    "default_planner_profile", "candidates_table",
]

RECOMMEND_START = ("No profiles yet — profile a workload on the Profiles page (or run `largestep profile "
                   "--workload fraud-gru`), then come back here to turn it into a batch size and learning rate.")
PLANNER_START = ("No profiles yet — the planner needs measured step times. Profile a workload on the Profiles "
                 "page, or run `largestep profile --workload fraud-gru`.")
EXPORT_START = ("No recommendation yet — compute one on the Recommend page (or run `largestep recommend`), "
                "then export it here.")
FORMAT_LABELS = {
    "yaml": "YAML", "json": "JSON", "toml": "TOML", "torch": "PyTorch", "hf": "Hugging Face",
    "lightning": "Lightning", "deepspeed": "DeepSpeed", "cli": "CLI",
}
CODE_LANGUAGE = {"yaml": "yaml", "json": "json", "toml": "toml", "torch": "python", "hf": "python",
                 "lightning": "python", "deepspeed": "json", "cli": "bash"}
MIME = {".yaml": "application/yaml", ".json": "application/json", ".toml": "application/toml",
        ".py": "text/x-python", ".sh": "text/x-shellscript"}
NOISE_MODES = {
    "stored": "a stored estimate",
    "perfect": "none: assume perfect scaling up to saturation",
    "manual": "a value I enter",
}
ROLE_COLOURS = {"baseline": "rgba(255, 127, 14, 0.18)", "recommended": "rgba(214, 39, 40, 0.16)"}


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def parse_optional_float(text: str | None, what: str) -> float | None:
    """A number typed into a text box; empty means "not given"."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UsageError(f"{what} must be a number such as 0.001 or 1e-3, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{what} must be a positive number, not {text!r}")
    return value


# -- Recommend -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecommendForm:
    """The Recommend page's inputs, as typed."""

    profile_id: str
    baseline_batch: int | None = None     # None: the workload's
    baseline_lr: str = ""                 # empty: the workload's
    rule: str = "linear"
    noise_mode: str = "perfect"           # one of NOISE_MODES
    noise_id: str | None = None           # with noise_mode "stored"
    noise_scale: str = ""                 # with noise_mode "manual"
    memory_headroom: float = 0.9
    max_lr: str = ""                      # empty: no cap


def recommend_config(form: RecommendForm) -> tuple[RecommendConfig, str | None]:
    """(config, noise id) for :func:`engine.actions.make_recommendation`; UsageError on bad input."""
    if form.rule not in RULES:
        raise UsageError(f"the rule must be linear or sqrt, not {form.rule!r}")
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
        rule=form.rule, noise_scale=noise_scale, memory_headroom=float(headroom),
        max_lr=parse_optional_float(form.max_lr, "max lr"),
    )
    config.validate()
    return config, noise_id


def compute_recommendation(home: Home, form: RecommendForm) -> dict:
    """Make the recommendation the form describes and save it; returns the saved document."""
    from engine.actions import make_recommendation  # imports torch (via the workloads): only on demand

    config, noise_id = recommend_config(form)
    # "perfect" means exactly that: never pick up a stored estimate behind the user's back
    rec = make_recommendation(home, form.profile_id, config, noise_id=noise_id, use_stored_noise=False)
    with store.connect(home) as con:
        store.save_recommendation(con, rec)
    return rec


def profile_defaults(home: Home, profile_id: str) -> dict | None:
    """What the form starts from: the workload's baseline and the measured batch sizes."""
    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
    if profile is None:
        return None
    measured = [p["batch_size"] for p in profile["points"] if p["status"] == "ok" and p.get("median_s")]
    return {"workload": profile.get("workload"), "workload_spec": profile.get("workload_spec"),
            "baseline_batch": profile.get("baseline_batch_size"), "baseline_lr": profile.get("baseline_lr"),
            "measured": measured, "device_total_memory_bytes": profile.get("device_total_memory_bytes"),
            "device_name": profile.get("device_name"), "state": profile.get("state"), "epochs": profile.get("epochs")}


def latest_recommendation_for(home: Home, profile_id: str) -> dict | None:
    """The newest saved recommendation made from ``profile_id``."""
    with store.connect(home) as con:
        frame = store.list_recommendations(con)
        mine = frame[frame["profile_id"] == profile_id]
        return store.load_recommendation(con, str(mine["id"].iloc[0])) if len(mine) else None


@dataclass(frozen=True)
class NoiseChoice:
    id: str
    label: str                         # "B_simple ≈ 1,234 (90% 800–2,000) · 2025-01-31 14:02 (noise-…)"
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
        out.append(NoiseChoice(row["id"], f"B_simple ≈ {row['b_simple']:,.0f}{_interval(row)} · {created} ({row['id']})",
                               float(row["b_simple"])))
    return out


def _interval(row: dict) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None and high is None:
        return ""
    return f" (90% interval {'?' if low is None else f'{low:,.0f}'}–{'∞' if high is None else f'{high:,.0f}'})"


def start_noise_estimate(home: Home, profile_id: str, device: str) -> str:
    """Start a noise-scale job for the profile's workload, small batch = its baseline; returns the id."""
    from engine.actions import start_noise

    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
    if profile is None:
        raise UsageError(f"no profile {profile_id!r}")
    spec = profile.get("workload_spec") or profile.get("workload")
    return start_noise(home, spec, profile.get("options") or {}, device,
                       batch_small=profile.get("baseline_batch_size"))


@dataclass(frozen=True)
class NoiseProgress:
    id: str
    state: str
    phase: str
    progress: float                    # 0..1 within the phase
    done: bool
    message: str                       # the result, or why it failed, in one line
    b_simple: float | None = None


def noise_progress(home: Home, job_id: str) -> NoiseProgress:
    """Where a noise-scale job is; once it has ended, its ingested result."""
    job_dir = home.job_dir(job_id)
    state = jobs.derive_state(job_dir)
    status = jobs.read_status(job_dir) or {}
    progress = status.get("progress") or 0.0
    phase = str(status.get("phase") or state.lower())
    if state not in jobs.FINAL_STATES:
        return NoiseProgress(job_id, state, phase, max(0.0, min(1.0, float(progress))), False,
                             f"estimating the noise scale: {phase}")
    store.ingest(home)
    with store.connect(home) as con:
        estimate = store.load_noise(con, job_id)
        job = store.get_job(con, job_id) or {}
    if state != jobs.FINISHED or estimate is None:
        return NoiseProgress(job_id, state, phase, 1.0, True,
                             f"noise estimate {job_id} ended {state}: {job.get('error') or 'no estimate recorded'}")
    if estimate.get("b_simple") is None:
        return NoiseProgress(job_id, state, phase, 1.0, True,
                             f"noise estimate {job_id} is unreliable: {estimate.get('reason') or 'no reason given'}")
    return NoiseProgress(job_id, state, phase, 1.0, True,
                         f"noise estimate {job_id}: B_simple ≈ {estimate['b_simple']:,.0f}{_interval(estimate)}",
                         float(estimate["b_simple"]))


@dataclass(frozen=True)
class Download:
    fmt: str
    label: str
    file_name: str
    mime: str
    data: str | Callable[[], str]


def downloads(rec: dict, devices: int | None = None, micro_batch: int | None = None) -> list[Download]:
    """One download per export format (all of :data:`engine.export.FORMATS`)."""
    out = []
    for fmt in FORMATS:
        suffix = FILE_SUFFIX[fmt]
        out.append(Download(fmt=fmt, label=FORMAT_LABELS.get(fmt, fmt), file_name=export_filename(rec, fmt),
                            mime=MIME.get(suffix, "text/plain"),
                            data=export_config(rec, fmt, devices=devices, micro_batch=micro_batch)))
    return out


@dataclass
class RecommendationView:
    rec: dict
    headline: str
    metrics: list[Metric]
    reasons: list[str]
    candidates: pd.DataFrame
    figure: go.Figure
    notes: list[str] = field(default_factory=list)


def recommendation_view(rec: dict) -> RecommendationView:
    """Everything the Recommend page shows about one recommendation."""
    base = rec["baseline"]
    speed = rec["predicted_speedup"]
    per_day = rec.get("experiments_per_gpu_day") or {}
    headline = (f"Batch **{rec['batch_size']}** at learning rate **{rec['learning_rate']:.4g}** "
                f"({rec['rule']} rule), warm-up {_plural(rec['warmup_steps'], 'step')} ({rec['warmup_samples']:,} samples) · "
                f"baseline batch {base['batch_size']} at {base['learning_rate']:.4g} · recommendation "
                f"`{rec['recommendation_id']}`")
    metrics = [
        Metric("Batch size", str(rec["batch_size"]), f"baseline {base['batch_size']}"),
        Metric("Learning rate", f"{rec['learning_rate']:.4g}",
               f"{rec['rule']} rule from the baseline's {base['learning_rate']:.4g}"),
        Metric("Warm-up", _plural(rec["warmup_steps"], "step"), f"linear, over {rec['warmup_samples']:,} samples"),
        Metric("Faster to target", f"{speed['time_to_target']:.2f}×",
               "predicted speedup in time to the target loss, from step times and the noise scale "
               "(or perfect scaling)"),
        Metric("Throughput", f"{speed['throughput']:.2f}×", "samples per second over the baseline's"),
    ]
    if per_day.get("baseline") and per_day.get("recommended"):
        metrics.append(Metric("Runs per GPU-day", format_count(per_day["recommended"]),
                              f"training runs of {rec.get('epochs') or 1} epochs per GPU-day; "
                              f"{format_count(per_day['baseline'])} at the baseline"))
    notes = []
    if rec.get("assumed_perfect_scaling"):
        notes.append("No noise-scale estimate: perfect scaling was assumed up to the saturation batch.")
    else:
        notes.append(f"Noise scale B_noise ≈ {rec['noise_scale']:,.0f}"
                     + (f" (estimate `{rec['noise_id']}`)" if rec.get("noise_id") else " (entered by hand)"))
    return RecommendationView(rec=rec, headline=headline, metrics=metrics, reasons=list(rec.get("reasons") or []),
                              candidates=candidates_table(rec), figure=reccharts.time_to_target_figure(rec),
                              notes=notes)


CANDIDATE_COLUMNS = ["role", "batch", "lr", "step (ms)", "samples/s", "peak memory", "throughput ×",
                     "time to target ×", "run time", "rank", "excluded"]


def candidates_table(rec: dict) -> pd.DataFrame:
    """One row per measured batch size, the baseline and the choice named in the first column."""
    rows = []
    for c in rec["candidates"]:
        b = c["batch_size"]
        role = "recommended" if b == rec["batch_size"] else "baseline" if b == rec["baseline"]["batch_size"] else ""
        if b == rec["batch_size"] == rec["baseline"]["batch_size"]:
            role = "baseline (kept)"
        rows.append({
            "role": role, "batch": b, "lr": float(f"{c['learning_rate']:.4g}"),
            "step (ms)": round(c["step_time_s"] * 1e3, 3), "samples/s": round(c["samples_per_s"]),
            "peak memory": format_bytes(c.get("peak_memory_bytes")) if c.get("peak_memory_bytes") else "—",
            "throughput ×": round(c["speedup_throughput"], 2),
            "time to target ×": round(c["speedup_time_to_target"], 2) if c.get("speedup_time_to_target") else None,
            "run time": format_duration(c.get("run_time_s")),
            "rank": c.get("rank"), "excluded": c.get("excluded") or "",
        })
    frame = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame


def highlight_roles(table: pd.DataFrame, column: str = "role"):
    """A Styler that shades the baseline and the recommended rows (for st.dataframe and HTML)."""

    def shade(row: pd.Series) -> list[str]:
        role = str(row.get(column) or "")
        colour = ROLE_COLOURS["recommended"] if role.startswith("recommended") else (
            ROLE_COLOURS["baseline"] if role.startswith("baseline") else None)
        weight = "font-weight: 600; " if colour else ""
        return [f"{weight}background-color: {colour}" if colour else "" for _ in row]

    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    return table.style.apply(shade, axis=1).format(reccharts.format_number, subset=floats, na_rep="—")


# -- choosing a recommendation -------------------------------------------------------------------


@dataclass(frozen=True)
class RecommendationChoice:
    id: str
    label: str
    profile_id: str


def recommendation_choices(home: Home) -> list[RecommendationChoice]:
    """Every saved recommendation, newest first, for a select box."""
    with store.connect(home) as con:
        frame = store.list_recommendations(con)
    out = []
    for r in store.frame_records(frame):
        created = pd.Timestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M") if r.get("created_at") else "?"
        out.append(RecommendationChoice(
            r["id"], f"{r['workload']} · batch {r['batch_size']} at lr {r['learning_rate']:.3g} "
                     f"(baseline {r['baseline_batch_size']}) · {created} ({r['id']})", r["profile_id"]))
    return out


def load_recommendation(home: Home, rec_id: str | None = "latest") -> dict | None:
    with store.connect(home) as con:
        return store.load_recommendation(con, rec_id)


# -- Planner -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerForm:
    profile_id: str
    gpu_hours_per_day: float = 24.0
    gpus: int = 1
    epochs: float | None = None           # None: the profile's
    noise_scale: str = ""                 # empty: perfect scaling


@dataclass(frozen=True)
class PlannerDefaults:
    epochs: float                         # the profile's epochs per run (1 if it sets none)
    noise_scale: float | None             # from the newest recommendation of this profile
    recommendation_id: str | None
    recommended_batch: int | None
    baseline_batch: int | None


def planner_defaults(home: Home, profile_id: str) -> PlannerDefaults | None:
    """The inputs' starting values for a profile: its epochs, and its newest recommendation's choices."""
    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id)
    if profile is None:
        return None
    rec = latest_recommendation_for(home, profile["id"])
    return PlannerDefaults(
        epochs=float(profile.get("epochs") or 1), noise_scale=(rec or {}).get("noise_scale"),
        recommendation_id=(rec or {}).get("recommendation_id"), recommended_batch=(rec or {}).get("batch_size"),
        baseline_batch=(rec["baseline"]["batch_size"] if rec else profile.get("baseline_batch_size")))


def default_planner_profile(home: Home) -> str | None:
    """The latest recommendation's profile, else the newest profile."""
    with store.connect(home) as con:
        rec = store.load_recommendation(con, "latest")
        if rec is not None and store.resolve_profile_id(con, rec["profile_id"]):
            return rec["profile_id"]
        return store.resolve_profile_id(con, "latest")


@dataclass
class PlannerView:
    plan: Plan
    headline: str                         # "12.3× as many experiments per day ..."
    caption: str
    table: pd.DataFrame
    figure: go.Figure
    metrics: list[Metric]


PLAN_COLUMNS = ["role", "batch", "step (ms)", "steps per run", "run time", "experiments / day", "whole runs / day",
                "× baseline"]


def planner_view(home: Home, form: PlannerForm) -> PlannerView:
    """The plan for the form's profile, with the newest recommendation of that profile highlighted."""
    noise = parse_optional_float(form.noise_scale, "the noise scale")
    config = PlanConfig(gpu_hours_per_day=float(form.gpu_hours_per_day) if form.gpu_hours_per_day is not None else 0.0,
                        gpus=int(form.gpus) if form.gpus is not None else 0, epochs=form.epochs, noise_scale=noise)
    config.validate()
    with store.connect(home) as con:
        profile = store.load_profile(con, form.profile_id)
    if profile is None:
        raise UsageError(f"no profile {form.profile_id!r}; profile a workload first")
    defaults = planner_defaults(home, profile["id"])
    plan = plan_experiments(profile, config, baseline_batch=defaults.baseline_batch,
                            recommended_batch=defaults.recommended_batch)
    base = plan.row(plan.baseline_batch)
    if plan.ratio is not None:
        rec_row = plan.row(plan.recommended_batch)
        headline = (f"**{plan.ratio:.1f}× as many experiments per day**: batch {rec_row.batch_size} fits "
                    f"{format_count(rec_row.experiments_per_day)} runs a day against {format_count(base.experiments_per_day)} at the "
                    f"baseline batch {base.batch_size} ({format_duration(rec_row.run_time_s)} per run "
                    f"instead of {format_duration(base.run_time_s)}).")
    else:
        headline = (f"The baseline batch {base.batch_size} fits {format_count(base.experiments_per_day)} runs a day "
                    f"({format_duration(base.run_time_s)} each). No recommendation for this profile yet: "
                    f"compute one on the Recommend page to compare.")
    basis = ("perfect scaling assumed (every batch size sees the same samples; no noise scale given)"
             if noise is None else f"steps from S(B) = S_min(1 + {noise:,.0f}/B)")
    caption = (f"Profile `{profile['id']}` ({profile.get('workload')} on {profile.get('device_name') or '?'}), "
               f"{plan.epochs:g} epochs of {profile.get('n_train'):,} samples at the baseline; {basis}. "
               f"Budget: {config.gpus} GPU{'s' if config.gpus > 1 else ''} × {config.gpu_hours_per_day:g} h per day. "
               f"Measured batch sizes only." + (f" Recommendation `{defaults.recommendation_id}`."
                                                if defaults.recommendation_id else ""))
    rows = [{
        "role": r.role or "", "batch": r.batch_size, "step (ms)": round(r.step_time_s * 1e3, 3),
        "steps per run": round(r.steps), "run time": format_duration(r.run_time_s),
        "experiments / day": round(r.experiments_per_day, 2), "whole runs / day": r.runs_per_day,
        "× baseline": round(r.vs_baseline, 2),
    } for r in plan.rows]
    metrics = [Metric("Experiments per day, baseline", format_count(base.experiments_per_day),
                      f"batch {base.batch_size}, {format_duration(base.run_time_s)} per run")]
    if plan.ratio is not None:
        rec_row = plan.row(plan.recommended_batch)
        metrics += [Metric("Experiments per day, recommended", format_count(rec_row.experiments_per_day),
                           f"batch {rec_row.batch_size}, {format_duration(rec_row.run_time_s)} per run"),
                    Metric("More experiments", f"{plan.ratio:.1f}×", "recommended over baseline, per day")]
    return PlannerView(plan=plan, headline=headline, caption=caption, table=pd.DataFrame(rows, columns=PLAN_COLUMNS),
                       figure=reccharts.planner_figure(plan), metrics=metrics)


# -- Export --------------------------------------------------------------------------------------


@dataclass
class ExportView:
    preview: str
    language: str
    split: str                            # "global 512 = micro-batch 128 × accumulation 2 × 2 devices"
    downloads: list[Download]


def export_view(rec: dict, fmt: str, devices: int | None = None, micro_batch: int | None = None) -> ExportView:
    """The preview of ``fmt`` and every format's download, with the batch re-split if asked."""
    from engine.export import config_document

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    doc = config_document(rec, devices, micro_batch)  # raises UsageError on a split that does not divide
    t = doc["training"]
    split = (f"global batch {t['batch_size']} = micro-batch {t['micro_batch_size']} × accumulation "
             f"{t['gradient_accumulation_steps']} × {t['devices']} device{'s' if t['devices'] > 1 else ''}")
    return ExportView(preview=export_config(rec, fmt, devices, micro_batch), language=CODE_LANGUAGE[fmt], split=split,
                      downloads=downloads(rec, devices, micro_batch))
