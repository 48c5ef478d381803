"""The Profiles page, prepared without Streamlit: the launch form, the jobs in flight, and one profile's
metrics, charts and table of points.

The page reads its widgets, calls one function here, and renders what it gets back: plain
dataclasses, DataFrames ready for a table, and plotly figures from :mod:`largestep.ui.charts`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .. import curve, jobs, store
from ..errors import UsageError
from ..format import byte_unit, format_bytes, format_math, format_pct, significant
from ..home import Home
from ..measure.profiler_config import DTYPES, ProfileConfig
from .charts import profile as charts
from .charts.base import ok_points
from .widgets import TABLE_WORKLOAD, Metric, cancel, device_options, profile_choices
from ..units import parse_batch_sizes, parse_size
from ..workloads import list_workloads

__all__ = [
    "START_MESSAGE",
    "STOP_REASONS",
    "ProfileForm",
    "profile_request",
    "submit_profile",
    "JobProgress",
    "LiveJobs",
    "live_jobs",
    "ProfileView",
    "profile_view",
    "overlay_label",
    "profile_caption",
    "points_table",
    "DTYPES",
    "list_workloads",
    "TABLE_WORKLOAD",
    "cancel",
    "device_options",
    "profile_choices",
]


START_MESSAGE = "No profiles yet — launch one above, or run `largestep profile --workload fraud-gru`."
DEFAULT_MAX_BATCH = ProfileConfig().max_batch
RECENT_FAILURE_S = 15 * 60  # failed profile jobs younger than this are shown with their error

# stop_reason -> (short value for a metric, what it means)
STOP_REASONS = {
    "max": ("max batch", "the sweep reached the largest batch size asked for"),
    "list": ("list done", "every batch size in the given list was measured"),
    "dataset": ("dataset size", "the next batch would be larger than the training set"),
    "oom": ("out of memory", "the next batch size ran out of device memory"),
    "over_budget": ("memory budget", "the next batch size was predicted or measured above the memory budget"),
    "plateau": ("plateau", "throughput stopped growing over successive doublings (use a full sweep to go on)"),
    "error": ("error", "a batch size failed with an error; see the points table"),
}


@dataclass(frozen=True)
class ProfileForm:
    """What the "Profile a workload" form collects, as typed by the user."""

    workload: str
    device: str = "cpu"
    dtype: str = "fp32"
    min_batch: int | None = None  # None: a quarter of the workload's baseline batch
    max_batch: int | None = None  # None: the profiler's default
    batch_list: str = ""  # "32,128,512": overrides min/max when given
    memory_budget: str = ""  # "12GiB"; empty: no budget
    full: bool = False  # no stop on a throughput plateau
    data_path: str = ""  # table workload only: a CSV or Parquet file (data, never code)
    label: str = ""  # table workload only: the label column


def profile_request(form: ProfileForm, allowed_workloads: list[str]) -> tuple[str, dict, ProfileConfig]:
    """The form as ``(workload, options, config)`` for :func:`largestep.jobs.start.start_profile`.

    Only listed workloads (built-ins, entry points) are accepted: the browser never names code.
    """
    if form.workload not in allowed_workloads:
        raise UsageError(f"unknown workload {form.workload!r}; choose one of {', '.join(allowed_workloads)}")
    options: dict[str, Any] = {}
    if form.workload == TABLE_WORKLOAD:
        if not form.data_path.strip():
            raise UsageError("the table workload needs a data file: give the path of a CSV or Parquet file")
        if not form.label.strip():
            raise UsageError("the table workload needs the name of the label column")
        options = {"path": form.data_path.strip(), "label": form.label.strip()}
    budget = None
    if form.memory_budget.strip():
        try:
            budget = parse_size(form.memory_budget)
        except UsageError as exc:
            raise UsageError(f"memory budget: {exc}") from None
    batch_sizes = parse_batch_sizes(form.batch_list) if form.batch_list.strip() else None
    fields: dict[str, Any] = {
        "batch_sizes": batch_sizes,
        "dtype": form.dtype,
        "memory_budget_bytes": budget,
        "full": bool(form.full),
    }
    if batch_sizes is None:
        fields["min_batch"] = int(form.min_batch) if form.min_batch else None
        if form.max_batch:
            fields["max_batch"] = int(form.max_batch)
    config = ProfileConfig(**fields)
    config.validate()
    return form.workload, options, config


def submit_profile(home: Home, form: ProfileForm, allowed_workloads: list[str]) -> str:
    """Check the form, then start a profiling job; returns its id. Bad input starts nothing."""
    from ..jobs import start as actions  # imports the workloads and torch: only when a profile is launched

    workload, options, config = profile_request(form, allowed_workloads)
    return actions.start_profile(home, workload, options, form.device, config)


@dataclass(frozen=True)
class JobProgress:
    id: str
    workload: str
    device: str
    state: str
    phase: str
    progress: float  # 0..1
    detail: str  # "2 of 9 batch sizes"


@dataclass(frozen=True)
class LiveJobs:
    running: tuple[JobProgress, ...]
    failures: tuple[Metric, ...]  # recently failed profile jobs: id -> error
    profile_count: int
    newest_profile: str | None  # the id of the most recently started profile

    @property
    def signature(self) -> tuple:
        """Changes when a job starts or ends or a profile appears: time to redraw the whole page."""
        return tuple(sorted(j.id for j in self.running)), self.profile_count, self.newest_profile


def live_jobs(home: Home) -> LiveJobs:
    """Ingest every spool, then the profile jobs still pending or running, with their progress."""
    store.ingest(home)
    with store.connect(home) as con:
        frame = store.list_jobs(con, kind="profile")
        profiles = store.list_profiles(con)  # newest first
    running, failures = [], []
    now = pd.Timestamp(time.time(), unit="s", tz="UTC")
    for row in frame.to_dict(orient="records"):
        if row["state"] in (jobs.PENDING, jobs.RUNNING):
            status = jobs.read_status(home.job_dir(row["id"])) or {}
            progress = status.get("progress", row.get("progress"))
            progress = 0.0 if progress is None or pd.isna(progress) else float(progress)
            done, planned = status.get("visits_done"), status.get("visits_planned")
            detail = f"{done or 0} of about {planned} visits to batch sizes" if planned else ""
            running.append(
                JobProgress(
                    id=row["id"],
                    workload=str(row.get("workload") or "?"),
                    device=str(row.get("device") or "?"),
                    state=row["state"],
                    phase=str(status.get("phase") or row.get("phase") or ""),
                    progress=max(0.0, min(1.0, progress)),
                    detail=detail,
                )
            )
        elif row["state"] in (jobs.FAILED, jobs.CRASHED) and _recent(row.get("ended_at"), now):
            failures.append(Metric(row["id"], f"{row['state']}: {row.get('error') or 'no error recorded'}"))
    return LiveJobs(
        running=tuple(running),
        failures=tuple(failures),
        profile_count=len(profiles),
        newest_profile=str(profiles["id"].iloc[0]) if len(profiles) else None,
    )


def _recent(ended_at: Any, now: pd.Timestamp) -> bool:
    if ended_at is None or pd.isna(ended_at):
        return False
    return (now - pd.Timestamp(ended_at)).total_seconds() < RECENT_FAILURE_S


@dataclass
class ProfileView:
    profile: dict
    live: bool  # still measuring: refresh it
    caption: str
    metrics: list[Metric]
    table: pd.DataFrame
    figures: dict[str, go.Figure] = field(default_factory=dict)  # name -> figure, in display order
    inconsistency: str | None = None  # the step times stayed inconsistent with physics: why
    untrusted: str | None = None  # why it cannot be used for recommending (under load, not physics), what to do
    threads_note: str | None = None  # torch's threads and others' busy cores exceed the machine's: --threads


def profile_view(home: Home, profile_id: str | None, overlay_ids: tuple[str, ...] = ()) -> ProfileView | None:
    """Everything the Profiles page shows about one profile (None when there is none), with the
    step time and throughput of the profiles in ``overlay_ids`` drawn over its own."""
    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id or "latest")
        if profile is None:
            return None
        points = store.profile_points(con, profile["id"])
        telemetry = store.profile_telemetry(con, profile["id"])
        others = {}
        for other_id in overlay_ids:
            other = store.load_profile(con, other_id) if other_id != profile["id"] else None
            if other is not None:
                others[overlay_label(other)] = store.profile_points(con, other_id)
    live = profile.get("state") in (jobs.PENDING, jobs.RUNNING)
    figures = {
        "step time": charts.overlay_profiles(charts.step_time_figure(points), "step time", others),
        "throughput": charts.overlay_profiles(
            charts.throughput_figure(points, profile.get("saturation_batch")), "throughput", others
        ),
        "memory": charts.memory_figure(
            points,
            profile.get("memory_fit_intercept_bytes"),
            profile.get("memory_fit_slope_bytes"),
            profile.get("memory_budget_bytes"),
        ),
        "compute": charts.flops_figure(points),
    }
    if charts.has_energy(points):  # only where NVML read the power while steps were timed
        figures["energy"] = charts.energy_figure(points)
    figures["telemetry"] = charts.telemetry_figure(telemetry)
    return ProfileView(
        profile=profile,
        live=live,
        caption=profile_caption(profile),
        metrics=profile_metrics(profile, points),
        table=points_table(points),
        figures=figures,
        inconsistency=inconsistency_text(profile),
        untrusted=curve.refusal(
            profile,
            accept="pass --accept-load to `largestep recommend`, or tick **Accept the load** on the Recommend page",
        ),
        threads_note=curve.threads_note(profile),
    )


def inconsistency_text(profile: dict) -> str | None:
    """The flag an inconsistent profile carries, as the page and the CLI say it; None for a consistent one."""
    if not isinstance(profile.get("inconsistency"), str):
        return None
    return (
        f"Inconsistent profile: {profile['inconsistency']}. Recommending from it is refused unless the load "
        f"is accepted; profile again when the machine is quieter."
    )


def overlay_label(profile: dict) -> str:
    """A profile as its overlaid curve is named in a legend: what, where, at which precision."""
    device = profile.get("device_name") or profile.get("device_kind") or "?"
    return f"{profile.get('workload')} on {device}, {profile.get('dtype') or '?'} ({profile['id']})"


def profile_caption(profile: dict) -> str:
    parts = [
        f"**{profile.get('workload')}** on {profile.get('device_name') or profile.get('device_kind')}",
        f"dtype {profile.get('dtype') or '?'}",
        f"profile `{profile['id']}`",
        f"state {(profile.get('state') or '?').lower()}",
    ]
    if profile.get("baseline_batch_size"):
        parts.append(f"baseline batch {profile['baseline_batch_size']}, lr {profile.get('baseline_lr'):g}")
    source = profile.get("telemetry_source")
    if source:
        reason = profile.get("telemetry_reason")
        parts.append(f"telemetry {source}" + (f" ({reason})" if source != "nvml" and reason else ""))
    if profile.get("math_settings"):
        parts.append(format_math(profile["math_settings"]))
    return " · ".join(parts)


def profile_metrics(profile: dict, points: pd.DataFrame) -> list[Metric]:
    live = profile.get("state") in (jobs.PENDING, jobs.RUNNING)
    ok = ok_points(points, "median_s")
    saturation = profile.get("saturation_batch")
    reason = profile.get("stop_reason")
    pending = "measuring…" if live else "—"
    short, meaning = STOP_REASONS.get(reason, (reason, None)) if reason else (pending, None)
    metrics = [
        Metric(
            "Saturation batch",
            str(saturation) if saturation is not None else pending,
            "the smallest batch size reaching 90% of the best throughput",
        ),
        Metric("Stop reason", short, meaning or "why the sweep over batch sizes ended"),
    ]
    with_throughput = ok_points(points, "samples_per_s")
    if len(with_throughput):
        best = with_throughput.loc[with_throughput["samples_per_s"].idxmax()]
        metrics.append(
            Metric(
                "Best samples/s",
                f"{best['samples_per_s']:,.0f}",
                f"the highest throughput measured, at batch size {int(best['batch_size'])}",
            )
        )
    if len(ok) >= 2:
        b_ratio = ok["batch_size"].iloc[-1] / ok["batch_size"].iloc[0]
        t_ratio = ok["median_s"].iloc[-1] / ok["median_s"].iloc[0]
        metrics.append(
            Metric(
                f"Step time at {b_ratio:.0f}× the batch",
                f"{t_ratio:.2g}×",
                f"median step time at batch {int(ok['batch_size'].iloc[-1])} over that at batch "
                f"{int(ok['batch_size'].iloc[0])}; {b_ratio:.0f}× would mean no gain from parallelism",
            )
        )
    return metrics


POINT_COLUMNS = [
    "batch",
    "status",
    "step (ms)",
    "median (ms)",
    "IQR (ms)",
    "samples/s",
    "peak memory",
    "GFLOP/s",
    "steps",
    "noisy",
    "background CPU",
    "note",
]


def points_table(points: pd.DataFrame | None) -> pd.DataFrame:
    """One row per batch size tried, in the units people read: ms, samples/s, MiB, GFLOP/s."""
    if points is None or len(points) == 0:
        return pd.DataFrame(columns=POINT_COLUMNS)
    frame = points.sort_values("batch_size")
    num = {
        c: pd.to_numeric(frame[c], errors="coerce").astype(float)
        if c in frame
        else pd.Series(float("nan"), index=frame.index)
        for c in (
            "median_s",
            "estimate_s",
            "p25_s",
            "p75_s",
            "samples_per_s",
            "peak_memory_bytes",
            "flops_per_s",
            "predicted_memory_bytes",
            "n",
        )
    }
    divisor, unit = byte_unit(num["peak_memory_bytes"].max() if num["peak_memory_bytes"].notna().any() else None)
    estimate = "memory_is_estimate" in frame and bool(frame["memory_is_estimate"].fillna(False).astype(bool).any())
    memory_column = f"peak memory ({unit}{', estimate' if estimate else ''})"
    notes = []
    for i in frame.index:
        note = frame["error"][i] if "error" in frame and isinstance(frame["error"][i], str) else ""
        if not note and not pd.isna(num["predicted_memory_bytes"][i]) and frame["status"][i] != "ok":
            note = f"predicted {format_bytes(num['predicted_memory_bytes'][i])}"
        if not note and "compute_median_s" in frame and not pd.isna(frame["compute_median_s"][i]):
            compute_ms = f"compute alone {float(frame['compute_median_s'][i]) * 1e3:.3g} ms"
            bound = "input_bound" in frame and bool(frame["input_bound"].fillna(False).astype(bool)[i])
            note = (
                f"input-bound: the loader limits throughput ({compute_ms})"
                if bound
                else f"loader included; {compute_ms}"
            )
        if "under_load" in frame and frame["under_load"].fillna(False).astype(bool)[i]:
            note = "measured under load: other processes took the cores it needs" + (f"; {note}" if note else "")
        if "inconsistent" in frame and frame["inconsistent"].fillna(False).astype(bool)[i]:
            note = "not physics, even re-measured" + (f"; {note}" if note else "")
        notes.append(note)
    table = pd.DataFrame(
        {
            "batch": frame["batch_size"].astype(int).to_numpy(),
            "status": frame["status"].astype(str).to_numpy(),
            # the step time: the profile's estimator of the timed steps (a profile stored before estimates: the median)
            "step (ms)": significant(num["estimate_s"].fillna(num["median_s"]) * 1e3),
            "median (ms)": significant(num["median_s"] * 1e3),
            "IQR (ms)": significant((num["p75_s"] - num["p25_s"]) * 1e3),
            "samples/s": num["samples_per_s"].round(0).to_numpy(),
            memory_column: significant(num["peak_memory_bytes"] / divisor),
            "GFLOP/s": significant(num["flops_per_s"] / 1e9),
            "steps": num["n"].fillna(0).astype(int).to_numpy(),
            "noisy": (
                frame["noisy"].fillna(False).astype(bool) if "noisy" in frame else pd.Series(False, index=frame.index)
            ).to_numpy(),
            # other processes' share of the machine's CPU while this batch size was timed
            "background CPU": [
                format_pct(v)
                for v in (
                    pd.to_numeric(frame["background_cpu_pct"], errors="coerce")
                    if "background_cpu_pct" in frame
                    else [None] * len(frame)
                )
            ],
            "note": notes,
        }
    )
    return table
