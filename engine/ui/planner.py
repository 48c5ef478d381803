"""The Planner page, prepared without Streamlit: for each measured batch, the time a training run
takes and how many fit into a day's compute, the baseline and the recommendation side by side."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from .. import store
from ..errors import UsageError
from ..format import format_count, format_duration
from ..home import Home
from ..plan.planner import Plan, PlanConfig, plan_experiments
from .charts import recommend as reccharts
from .recommend import highlight_roles
from .widgets import Metric, latest_recommendation_for, parse_optional_float, profile_choices

__all__ = [
    "PLANNER_START",
    "PlannerForm",
    "PlannerDefaults",
    "planner_defaults",
    "default_planner_profile",
    "PlannerView",
    "planner_view",
    "highlight_roles",
    "profile_choices",
]

PLANNER_START = (
    "No profiles yet — the planner needs measured step times. Profile a workload on the Profiles "
    "page, or run `largestep profile --workload fraud-gru`."
)


@dataclass(frozen=True)
class PlannerForm:
    profile_id: str
    gpu_hours_per_day: float = 24.0
    gpus: int = 1
    epochs: float | None = None  # None: the profile's
    noise_scale: str = ""  # empty: perfect scaling


@dataclass(frozen=True)
class PlannerDefaults:
    epochs: float  # the profile's epochs per run (1 if it sets none)
    noise_scale: float | None  # from the newest recommendation of this profile
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
        epochs=float(profile.get("epochs") or 1),
        noise_scale=(rec or {}).get("noise_scale"),
        recommendation_id=(rec or {}).get("recommendation_id"),
        recommended_batch=(rec or {}).get("batch_size"),
        baseline_batch=(rec["baseline"]["batch_size"] if rec else profile.get("baseline_batch_size")),
    )


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
    headline: str  # "12.3× as many experiments per day ..."
    caption: str
    table: pd.DataFrame
    figure: go.Figure
    metrics: list[Metric]
    notes: tuple[str, ...] = ()  # what the profile lacks (the baseline batch) and what was done instead


PLAN_COLUMNS = [
    "role",
    "batch",
    "step (ms)",
    "steps per run",
    "run time",
    "experiments / day",
    "whole runs / day",
    "× baseline",
]


def planner_view(home: Home, form: PlannerForm) -> PlannerView:
    """The plan for the form's profile, with the newest recommendation of that profile highlighted."""
    noise = parse_optional_float(form.noise_scale, "the noise scale")
    config = PlanConfig(
        gpu_hours_per_day=float(form.gpu_hours_per_day) if form.gpu_hours_per_day is not None else 0.0,
        gpus=int(form.gpus) if form.gpus is not None else 0,
        epochs=form.epochs,
        noise_scale=noise,
    )
    config.validate()
    with store.connect(home) as con:
        profile = store.load_profile(con, form.profile_id)
    if profile is None:
        raise UsageError(f"no profile {form.profile_id!r}; profile a workload first")
    defaults = planner_defaults(home, profile["id"])
    # a recommendation names its own baseline; without one, the workload's (or the nearest measured, said so)
    plan = plan_experiments(
        profile,
        config,
        baseline_batch=defaults.baseline_batch if defaults.recommendation_id else None,
        recommended_batch=defaults.recommended_batch,
    )
    base = plan.row(plan.baseline_batch)
    if plan.ratio is not None:
        rec_row = plan.row(plan.recommended_batch)
        headline = (
            f"**{plan.ratio:.1f}× as many experiments per day**: batch {rec_row.batch_size} fits "
            f"{format_count(rec_row.experiments_per_day)} runs a day against {format_count(base.experiments_per_day)} at the "
            f"baseline batch {base.batch_size} ({format_duration(rec_row.run_time_s)} per run "
            f"instead of {format_duration(base.run_time_s)})."
        )
    else:
        headline = (
            f"The baseline batch {base.batch_size} fits {format_count(base.experiments_per_day)} runs a day "
            f"({format_duration(base.run_time_s)} each). No recommendation for this profile yet: "
            f"compute one on the Recommend page to compare."
        )
    basis = (
        "perfect scaling assumed (every batch size sees the same samples; no noise scale given)"
        if noise is None
        else f"steps from S(B) = S_min(1 + {noise:,.0f}/B)"
    )
    caption = (
        f"Profile `{profile['id']}` ({profile.get('workload')} on {profile.get('device_name') or '?'}), "
        f"{plan.epochs:g} epochs of {profile.get('n_train'):,} samples at the baseline; {basis}. "
        f"Budget: {config.gpus} GPU{'s' if config.gpus > 1 else ''} × {config.gpu_hours_per_day:g} h per day. "
        f"Measured batch sizes only."
        + (f" Recommendation `{defaults.recommendation_id}`." if defaults.recommendation_id else "")
    )
    rows = [
        {
            "role": r.role or "",
            "batch": r.batch_size,
            "step (ms)": round(r.step_time_s * 1e3, 3),
            "steps per run": round(r.steps),
            "run time": format_duration(r.run_time_s),
            "experiments / day": round(r.experiments_per_day, 2),
            "whole runs / day": r.runs_per_day,
            "× baseline": round(r.vs_baseline, 2),
        }
        for r in plan.rows
    ]
    metrics = [
        Metric(
            "Experiments per day, baseline",
            format_count(base.experiments_per_day),
            f"batch {base.batch_size}, {format_duration(base.run_time_s)} per run",
        )
    ]
    if plan.ratio is not None:
        rec_row = plan.row(plan.recommended_batch)
        metrics += [
            Metric(
                "Experiments per day, recommended",
                format_count(rec_row.experiments_per_day),
                f"batch {rec_row.batch_size}, {format_duration(rec_row.run_time_s)} per run",
            ),
            Metric("More experiments", f"{plan.ratio:.1f}×", "recommended over baseline, per day"),
        ]
    return PlannerView(
        plan=plan,
        headline=headline,
        caption=caption,
        table=pd.DataFrame(rows, columns=PLAN_COLUMNS),
        figure=reccharts.planner_figure(plan),
        metrics=metrics,
        notes=plan.notes,
    )
