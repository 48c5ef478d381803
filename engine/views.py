"""What the dashboard's pages show, prepared without Streamlit.

Each page reads its widgets, calls one function here, and renders what it gets back: plain
dataclasses, DataFrames ready for a table, and plotly figures from :mod:`engine.charts`. The
logic lives here so that it is tested without a browser and the pages stay thin.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from engine import charts, jobs, store
from engine.errors import UsageError
from engine.home import Home
from engine.profiler import ProfileConfig
from engine.units import format_bytes, parse_batch_sizes, parse_size

__all__ = [
    "START_MESSAGE", "STOP_REASONS", "Metric", "DeviceCard", "HardwareView", "hardware_view",
    "device_options", "ProfileForm", "profile_request", "submit_profile", "JobProgress", "LiveJobs",
    "live_jobs", "cancel_job", "ProfileChoice", "profile_choices", "ProfileView", "profile_view", "points_table",
]

START_MESSAGE = "No profiles yet — launch one above, or run `largestep profile --workload fraud-gru`."
TABLE_WORKLOAD = "table"            # the built-in that reads a user's data file (options: path, label)
DEFAULT_MAX_BATCH = ProfileConfig().max_batch
RECENT_FAILURE_S = 15 * 60          # failed profile jobs younger than this are shown with their error

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
class Metric:
    label: str
    value: str
    help: str | None = None


# -- hardware ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCard:
    title: str                        # "NVIDIA A100-SXM4-40GB"
    subtitle: str                     # "CUDA · cuda:0"
    facts: tuple[Metric, ...]         # memory, cores, compute capability
    live: tuple[Metric, ...] = ()     # NVML now: utilisation, power, temperature, memory used


@dataclass(frozen=True)
class HardwareView:
    cards: tuple[DeviceCard, ...]
    nvml_note: str | None             # why there is no GPU telemetry; None when NVML works
    software: str                     # "torch 2.x · CUDA - · Python 3.11 · host"


def hardware_view(report: dict) -> HardwareView:
    """The hardware card from :func:`engine.telemetry.hardware_report`."""
    cards = []
    for device in report.get("devices", []):
        kind = device.get("kind", "?")
        facts = [Metric("RAM" if kind == "cpu" else "Memory", format_bytes(device.get("total_memory_bytes")))]
        if device.get("cores"):
            facts.append(Metric("Logical cores" if kind == "cpu" else "SMs", str(device["cores"])))
        if device.get("compute_capability"):
            facts.append(Metric("Compute capability", str(device["compute_capability"])))
        live = _live_metrics(device.get("live") or {})
        cards.append(DeviceCard(title=str(device.get("name") or kind), subtitle=f"{kind.upper()} · {device.get('torch_device', '')}",
                                facts=tuple(facts), live=live))
    nvml = report.get("nvml") or {}
    note = None
    if not nvml.get("available"):
        note = (f"NVML is absent: {nvml.get('reason') or 'unknown reason'}. GPU utilisation, power and "
                f"temperature cannot be read here; profiles sample CPU utilisation and process memory with "
                f"psutil instead.")
    software = " · ".join(filter(None, [
        f"torch {report.get('torch')}", f"CUDA {report['cuda']}" if report.get("cuda") else "CPU-only torch",
        f"{report.get('torch_threads')} torch threads" if report.get("torch_threads") else None,
        f"Python {report.get('python')}", report.get("host"),
    ]))
    return HardwareView(cards=tuple(cards), nvml_note=note, software=software)


def _live_metrics(sample: dict) -> tuple[Metric, ...]:
    shown = [("gpu_util_pct", "GPU util", "{:.0f} %"), ("power_w", "Power", "{:.0f} W"),
             ("temp_c", "Temperature", "{:.0f} °C"), ("sm_clock_mhz", "SM clock", "{:.0f} MHz")]
    out = [Metric(label, fmt.format(sample[key])) for key, label, fmt in shown if sample.get(key) is not None]
    if sample.get("mem_used_bytes") is not None:
        out.append(Metric("Memory used", format_bytes(sample["mem_used_bytes"])))
    return tuple(out)


def device_options(report: dict) -> dict[str, str]:
    """``--device`` value -> label, for a select box: every device torch can use here."""
    options = {}
    for device in report.get("devices", []):
        value = device.get("torch_device") or device.get("id")
        options[value] = f"{value} — {device.get('name')}"
    return options or {"cpu": "cpu"}


# -- launching a profile -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileForm:
    """What the "Profile a workload" form collects, as typed by the user."""

    workload: str
    device: str = "cpu"
    dtype: str = "fp32"
    min_batch: int | None = None      # None: a quarter of the workload's baseline batch
    max_batch: int | None = None      # None: the profiler's default
    batch_list: str = ""              # "32,128,512": overrides min/max when given
    memory_budget: str = ""           # "12GiB"; empty: no budget
    full: bool = False                # no stop on a throughput plateau
    data_path: str = ""               # table workload only: a CSV or Parquet file (data, never code)
    label: str = ""                   # table workload only: the label column


def profile_request(form: ProfileForm, allowed_workloads: list[str]) -> tuple[str, dict, ProfileConfig]:
    """The form as ``(workload, options, config)`` for :func:`engine.actions.start_profile`.

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
    fields: dict[str, Any] = {"batch_sizes": batch_sizes, "dtype": form.dtype, "memory_budget_bytes": budget,
                              "full": bool(form.full)}
    if batch_sizes is None:
        fields["min_batch"] = int(form.min_batch) if form.min_batch else None
        if form.max_batch:
            fields["max_batch"] = int(form.max_batch)
    config = ProfileConfig(**fields)
    config.validate()
    return form.workload, options, config


def submit_profile(home: Home, form: ProfileForm, allowed_workloads: list[str]) -> str:
    """Check the form, then start a profiling job; returns its id. Bad input starts nothing."""
    from engine import actions  # imports the workloads and torch: only when a profile is launched

    workload, options, config = profile_request(form, allowed_workloads)
    return actions.start_profile(home, workload, options, form.device, config)


# -- running jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobProgress:
    id: str
    workload: str
    device: str
    state: str
    phase: str
    progress: float                   # 0..1
    detail: str                       # "2 of 9 batch sizes"


@dataclass(frozen=True)
class LiveJobs:
    running: tuple[JobProgress, ...]
    failures: tuple[Metric, ...]      # recently failed profile jobs: id -> error
    profile_count: int
    newest_profile: str | None        # the id of the most recently started profile

    @property
    def signature(self) -> tuple:
        """Changes when a job starts or ends or a profile appears: time to redraw the whole page."""
        return tuple(sorted(j.id for j in self.running)), self.profile_count, self.newest_profile


def live_jobs(home: Home) -> LiveJobs:
    """Ingest every spool, then the profile jobs still pending or running, with their progress."""
    store.ingest(home)
    with store.connect(home) as con:
        frame = store.list_jobs(con, kind="profile")
        profiles = store.list_profiles(con)   # newest first
    running, failures = [], []
    now = pd.Timestamp(time.time(), unit="s", tz="UTC")
    for row in frame.to_dict(orient="records"):
        if row["state"] in (jobs.PENDING, jobs.RUNNING):
            status = jobs.read_status(home.job_dir(row["id"])) or {}
            progress = status.get("progress", row.get("progress"))
            progress = 0.0 if progress is None or pd.isna(progress) else float(progress)
            done, planned = status.get("points_done"), status.get("points_planned")
            detail = f"{done or 0} of {planned} batch sizes" if planned else ""
            running.append(JobProgress(
                id=row["id"], workload=str(row.get("workload") or "?"), device=str(row.get("device") or "?"),
                state=row["state"], phase=str(status.get("phase") or row.get("phase") or ""),
                progress=max(0.0, min(1.0, progress)), detail=detail))
        elif row["state"] in (jobs.FAILED, jobs.CRASHED) and _recent(row.get("ended_at"), now):
            failures.append(Metric(row["id"], f"{row['state']}: {row.get('error') or 'no error recorded'}"))
    return LiveJobs(running=tuple(running), failures=tuple(failures), profile_count=len(profiles),
                    newest_profile=str(profiles["id"].iloc[0]) if len(profiles) else None)


def _recent(ended_at: Any, now: pd.Timestamp) -> bool:
    if ended_at is None or pd.isna(ended_at):
        return False
    return (now - pd.Timestamp(ended_at)).total_seconds() < RECENT_FAILURE_S


def cancel_job(home: Home, job_id: str) -> str:
    """Stop a job and record its new state; returns a one-line message for the user."""
    stopped = jobs.cancel(home, job_id)
    store.ingest(home)
    return f"cancelled {job_id}" if stopped else f"{job_id} had already ended"


# -- one profile ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileChoice:
    id: str
    label: str                        # "fraud-gru · AMD EPYC · fp32 · 2025-01-31 14:02 (prof-1a2b3c4d)"
    live: bool                        # its job is still pending or running


def profile_choices(home: Home) -> list[ProfileChoice]:
    """Every stored profile, newest first, for a select box.

    A label never changes over a profile's life (no state in it): a select box keeps showing the
    label it was given, so a label that changed would leave a stale one on screen.
    """
    with store.connect(home) as con:
        frame = store.list_profiles(con)
    choices = []
    for row in frame.to_dict(orient="records"):
        started = pd.Timestamp(row["started_at"]).strftime("%Y-%m-%d %H:%M") if not pd.isna(row["started_at"]) else "?"
        state = row.get("state") or "?"
        label = (f"{row['workload']} · {row.get('device_name') or row.get('device_kind') or '?'} · "
                 f"{row.get('dtype') or '?'} · {started} ({row['id']})")
        choices.append(ProfileChoice(row["id"], label, state in (jobs.PENDING, jobs.RUNNING)))
    return choices


@dataclass
class ProfileView:
    profile: dict
    live: bool                        # still measuring: refresh it
    caption: str
    metrics: list[Metric]
    table: pd.DataFrame
    figures: dict[str, go.Figure] = field(default_factory=dict)   # name -> figure, in display order


def profile_view(home: Home, profile_id: str | None) -> ProfileView | None:
    """Everything the Profiles page shows about one profile (None when there is none)."""
    with store.connect(home) as con:
        profile = store.load_profile(con, profile_id or "latest")
        if profile is None:
            return None
        points = store.profile_points(con, profile["id"])
        telemetry = store.profile_telemetry(con, profile["id"])
    live = profile.get("state") in (jobs.PENDING, jobs.RUNNING)
    figures = {
        "step time": charts.step_time_figure(points),
        "throughput": charts.throughput_figure(points, profile.get("saturation_batch")),
        "memory": charts.memory_figure(points, profile.get("memory_fit_intercept_bytes"),
                                       profile.get("memory_fit_slope_bytes"), profile.get("memory_budget_bytes")),
        "compute": charts.flops_figure(points),
        "telemetry": charts.telemetry_figure(telemetry),
    }
    return ProfileView(profile=profile, live=live, caption=profile_caption(profile),
                       metrics=profile_metrics(profile, points), table=points_table(points), figures=figures)


def profile_caption(profile: dict) -> str:
    parts = [f"**{profile.get('workload')}** on {profile.get('device_name') or profile.get('device_kind')}",
             f"dtype {profile.get('dtype') or '?'}", f"profile `{profile['id']}`",
             f"state {(profile.get('state') or '?').lower()}"]
    if profile.get("baseline_batch_size"):
        parts.append(f"baseline batch {profile['baseline_batch_size']}, lr {profile.get('baseline_lr'):g}")
    source = profile.get("telemetry_source")
    if source:
        reason = profile.get("telemetry_reason")
        parts.append(f"telemetry {source}" + (f" ({reason})" if source != "nvml" and reason else ""))
    return " · ".join(parts)


def profile_metrics(profile: dict, points: pd.DataFrame) -> list[Metric]:
    live = profile.get("state") in (jobs.PENDING, jobs.RUNNING)
    ok = charts.ok_points(points, "median_s")
    saturation = profile.get("saturation_batch")
    reason = profile.get("stop_reason")
    pending = "measuring…" if live else "—"
    short, meaning = STOP_REASONS.get(reason, (reason, None)) if reason else (pending, None)
    metrics = [
        Metric("Saturation batch", str(saturation) if saturation is not None else pending,
               "the smallest batch size reaching 90% of the best throughput"),
        Metric("Stop reason", short, meaning or "why the sweep over batch sizes ended"),
    ]
    with_throughput = charts.ok_points(points, "samples_per_s")
    if len(with_throughput):
        best = with_throughput.loc[with_throughput["samples_per_s"].idxmax()]
        metrics.append(Metric("Best samples/s", f"{best['samples_per_s']:,.0f}",
                              f"the highest throughput measured, at batch size {int(best['batch_size'])}"))
    if len(ok) >= 2:
        b_ratio = ok["batch_size"].iloc[-1] / ok["batch_size"].iloc[0]
        t_ratio = ok["median_s"].iloc[-1] / ok["median_s"].iloc[0]
        metrics.append(Metric(f"Step time at {b_ratio:.0f}× the batch", f"{t_ratio:.2g}×",
                              f"median step time at batch {int(ok['batch_size'].iloc[-1])} over that at batch "
                              f"{int(ok['batch_size'].iloc[0])}; {b_ratio:.0f}× would mean no gain from parallelism"))
    return metrics


POINT_COLUMNS = ["batch", "status", "median (ms)", "IQR (ms)", "samples/s", "peak memory", "GFLOP/s", "steps",
                 "noisy", "note"]


def points_table(points: pd.DataFrame | None) -> pd.DataFrame:
    """One row per batch size tried, in the units people read: ms, samples/s, MiB, GFLOP/s."""
    if points is None or len(points) == 0:
        return pd.DataFrame(columns=POINT_COLUMNS)
    frame = points.sort_values("batch_size")
    num = {c: pd.to_numeric(frame[c], errors="coerce").astype(float) if c in frame else pd.Series(float("nan"), index=frame.index)
           for c in ("median_s", "p25_s", "p75_s", "samples_per_s", "peak_memory_bytes", "flops_per_s",
                     "predicted_memory_bytes", "n")}
    divisor, unit = charts.byte_unit(num["peak_memory_bytes"].max() if num["peak_memory_bytes"].notna().any() else None)
    estimate = "memory_is_estimate" in frame and bool(frame["memory_is_estimate"].fillna(False).astype(bool).any())
    memory_column = f"peak memory ({unit}{', estimate' if estimate else ''})"
    notes = []
    for i in frame.index:
        note = frame["error"][i] if "error" in frame and isinstance(frame["error"][i], str) else ""
        if not note and not pd.isna(num["predicted_memory_bytes"][i]) and frame["status"][i] != "ok":
            note = f"predicted {format_bytes(num['predicted_memory_bytes'][i])}"
        notes.append(note)
    table = pd.DataFrame({
        "batch": frame["batch_size"].astype(int).to_numpy(),
        "status": frame["status"].astype(str).to_numpy(),
        "median (ms)": _significant(num["median_s"] * 1e3),
        "IQR (ms)": _significant((num["p75_s"] - num["p25_s"]) * 1e3),
        "samples/s": num["samples_per_s"].round(0).to_numpy(),
        memory_column: _significant(num["peak_memory_bytes"] / divisor),
        "GFLOP/s": _significant(num["flops_per_s"] / 1e9),
        "steps": num["n"].fillna(0).astype(int).to_numpy(),
        "noisy": (frame["noisy"].fillna(False).astype(bool) if "noisy" in frame else pd.Series(False, index=frame.index)).to_numpy(),
        "note": notes,
    })
    return table


def _significant(values: pd.Series, digits: int = 4) -> list[float | None]:
    """Rounded to ``digits`` significant figures: 183.9 ms and 0.01234 ms both stay readable."""
    out = []
    for v in values:
        if pd.isna(v):
            out.append(None)
        elif v == 0:
            out.append(0.0)
        else:
            out.append(round(float(v), digits - 1 - int(math.floor(math.log10(abs(v))))))
    return out
