"""What the Runs page shows, prepared without Streamlit.

The page reads its widgets, calls these functions, and renders what it gets back: the runs
table, the curves of the selected runs (downsampled in DuckDB by :func:`largestep.store.run_curves`,
drawn by :mod:`largestep.ui.charts.runs`) and the comparison of groups of repeats (computed by
:func:`largestep.plan.compare.compare_groups`). Nothing reads metrics until runs are selected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from .. import jobs, store
from ..errors import UsageError
from ..format import DASH, format_background_load, format_duration, unreadable_runs
from ..home import Home
from ..plan.compare import compare_groups, comparison_table, speedup_text, time_text
from ..plan.verdict import quality_words
from .charts import runs as runcharts
from .widgets import Metric, cancel

__all__ = [
    "START_MESSAGE",
    "X_AXES",
    "DEFAULT_X",
    "DEFAULT_METRIC",
    "LIVE_STATES",
    "load_runs",
    "filter_runs",
    "runs_table",
    "unreadable_note",
    "run_labels",
    "active_runs",
    "RunProgress",
    "default_selection",
    "run_progress",
    "metric_choices",
    "CurvesView",
    "curves_view",
    "selection_view",
    "comparison_units",
    "ComparisonView",
    "comparison_view",
    "cancel",
]

START_MESSAGE = (
    "No training runs yet. Start one with `largestep train --workload fraud-gru --repeats 3`, or let "
    "`largestep autopilot --workload fraud-gru` profile, recommend and train the baseline and the "
    "recommendation for you; they show here as they run."
)
X_AXES = runcharts.AXIS_TITLES  # metrics column -> axis title
DEFAULT_X = "step"
DEFAULT_METRIC = "train_loss"
LIVE_STATES = (jobs.PENDING, jobs.RUNNING)
NO_GROUP = "(no group)"
NO_ROLE = "(no role)"

TABLE_COLUMNS = [
    "id",
    "state",
    "workload",
    "batch",
    "LR",
    "seed",
    "group",
    "role",
    "tags",
    "duration",
    "final val loss",
    "metric",
    "background load",
]


def load_runs(home: Home) -> pd.DataFrame:
    """Ingest every spool, then every training run with its job state, newest first."""
    store.ingest(home)
    with store.connect(home) as con:
        return store.list_runs(con)


def _group(row) -> str:
    value = row.get("group_id")
    return value if isinstance(value, str) and value else NO_GROUP


def _role(row) -> str:
    value = row.get("role")
    return value if isinstance(value, str) and value else NO_ROLE


DEFAULT_GROUPS = 2  # charted when nothing is picked: an autopilot's baseline and recommended arms


def default_selection(runs: pd.DataFrame, groups: int = DEFAULT_GROUPS) -> list[str]:
    """The runs of the newest ``groups`` groups (a run without a group is a group of one), so the page
    charts the latest comparison, e.g. right after an autopilot, before anything is picked."""
    chosen: list[str] = []
    picked: list[str] = []
    for row in runs.to_dict("records"):  # newest first
        group = row["group_id"] if isinstance(row.get("group_id"), str) and row["group_id"] else row["id"]
        if group not in chosen:
            if len(chosen) == groups:
                continue
            chosen.append(group)
        picked.append(row["id"])
    return picked


def filter_runs(
    runs: pd.DataFrame,
    states: list[str] | None = None,
    workloads: list[str] | None = None,
    groups: list[str] | None = None,
    roles: list[str] | None = None,
) -> pd.DataFrame:
    """The runs matching every filter given; an empty or None filter matches everything."""
    if runs.empty:
        return runs
    keep = pd.Series(True, index=runs.index)
    if states:
        keep &= runs["state"].isin(states)
    if workloads:
        keep &= runs["workload"].isin(workloads)
    if groups:
        keep &= runs.apply(_group, axis=1).isin(groups)
    if roles:
        keep &= runs.apply(_role, axis=1).isin(roles)
    return runs[keep]


def filter_options(runs: pd.DataFrame) -> dict[str, list[str]]:
    """The values each filter can take, from the runs there are (states: all of them, in order)."""
    if runs.empty:
        return {"states": list(jobs.STATES), "workloads": [], "groups": [], "roles": []}
    return {
        "states": list(jobs.STATES),
        "workloads": sorted({str(w) for w in runs["workload"].dropna()}),
        "groups": sorted({_group(r) for r in runs.to_dict(orient="records")}),
        "roles": sorted({_role(r) for r in runs.to_dict(orient="records")}),
    }


def _duration_s(row: dict, now: float) -> float | None:
    if row.get("wall_time_s") is not None and not pd.isna(row["wall_time_s"]):
        return float(row["wall_time_s"])
    started = row.get("started_at")
    if started is None or pd.isna(started):
        return None
    ended = row.get("ended_at")
    end = pd.Timestamp(ended).timestamp() if ended is not None and not pd.isna(ended) else now
    return max(0.0, end - pd.Timestamp(started).timestamp())


def _number(value):
    return None if value is None or pd.isna(value) else value


def runs_table(runs: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
    """One row per run in the units people read; the duration of a running run grows to now."""
    now = time.time() if now is None else now
    rows = []
    for row in runs.to_dict(orient="records"):
        tags = row.get("tags")
        metric_name, metric = row.get("primary_metric"), _number(row.get("final_primary_metric"))
        rows.append(
            {
                "id": row["id"],
                "state": row["state"],
                "workload": row.get("workload"),
                "batch": _number(row.get("batch_size")),
                "LR": _number(row.get("lr")),
                "seed": _number(row.get("seed")),
                "group": row.get("group_id") if isinstance(row.get("group_id"), str) else "",
                "role": row.get("role") if isinstance(row.get("role"), str) else "",
                "tags": ", ".join(tags) if tags is not None and len(tags) else "",
                "duration": format_duration(_duration_s(row, now)),
                "final val loss": _number(row.get("final_val_loss")),
                "metric": f"{metric_name} {metric:.4g}" if metric_name and metric is not None else "",
                "background load": format_background_load(
                    _number(row.get("background_cpu_pct")), _number(row.get("background_gpu_processes"))
                ),
            }
        )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("batch", "seed"):
        table[column] = table[column].astype("Int64")
    return table


def unreadable_note(runs: pd.DataFrame) -> str | None:
    """The warning under the table when some runs' spools could not be read (set aside at ingest)."""
    if runs.empty or "set_aside" not in runs:
        return None
    return unreadable_runs(runs.loc[runs["set_aside"].fillna(False).astype(bool), "id"])


def run_labels(runs: pd.DataFrame, run_ids: list[str] | None = None) -> dict[str, str]:
    """Run id -> a label that tells runs apart on a chart: "b32 lr0.01 s0 (train-1a2b)"."""
    labels = {}
    for row in runs.to_dict(orient="records"):
        if run_ids is not None and row["id"] not in run_ids:
            continue
        parts = []
        if _number(row.get("batch_size")) is not None:
            parts.append(f"b{int(row['batch_size'])}")
        if _number(row.get("lr")) is not None:
            parts.append(f"lr{row['lr']:.3g}")
        if _number(row.get("seed")) is not None:
            parts.append(f"s{int(row['seed'])}")
        labels[row["id"]] = f"{' '.join(parts)} ({row['id']})" if parts else row["id"]
    if run_ids is not None:
        return {r: labels.get(r, r) for r in run_ids}
    return labels


# -- runs in flight ------------------------------------------------------------------------------


def active_runs(runs: pd.DataFrame) -> list[str]:
    """Ids of the runs queued or running."""
    if runs.empty:
        return []
    return list(runs.loc[runs["state"].isin(LIVE_STATES), "id"])


@dataclass(frozen=True)
class RunProgress:
    id: str
    state: str
    label: str
    progress: float  # 0..1
    detail: str


def run_progress(home: Home, runs: pd.DataFrame) -> list[RunProgress]:
    """The queued and running runs with their progress, read from each job's status file."""
    out = []
    for row in runs[runs["state"].isin(LIVE_STATES)].to_dict(orient="records") if not runs.empty else []:
        job_dir = home.job_dir(row["id"])
        state = jobs.derive_state(job_dir) if job_dir.is_dir() else row["state"]
        status = jobs.read_status(job_dir) or {}
        progress = status.get("progress")
        progress = 0.0 if progress is None else max(0.0, min(1.0, float(progress)))
        label = " · ".join(
            filter(
                None,
                [
                    str(row.get("workload") or "?"),
                    f"batch {int(row['batch_size'])}" if _number(row.get("batch_size")) else "",
                    f"seed {int(row['seed'])}" if _number(row.get("seed")) is not None else "",
                ],
            )
        )
        out.append(
            RunProgress(
                id=row["id"], state=state, label=label, progress=progress, detail=str(status.get("phase") or "")
            )
        )
    return out


# -- curves --------------------------------------------------------------------------------------


def metric_choices(home: Home, run_ids: list[str]) -> list[str]:
    """The metric names recorded for the runs, the training loss and validation loss first."""
    if not run_ids:
        return []
    with store.connect(home) as con:
        names = store.run_metric_names(con, run_ids)
    first = [n for n in ("train_loss", "val_loss") if n in names]
    return first + [n for n in names if n not in first]


@dataclass
class CurvesView:
    figure: go.Figure
    points: int  # buckets drawn, over all runs


def curves_view(
    home: Home,
    run_ids: list[str],
    labels: dict[str, str],
    metric: str,
    x: str = DEFAULT_X,
    log_x: bool = False,
    log_y: bool = False,
    smoothing: float = 0.0,
) -> CurvesView:
    """The chart of one metric of the selected runs, from the downsampled series."""
    with store.connect(home) as con:
        return _curves(con, run_ids, labels, metric, x, log_x, log_y, smoothing)


def _curves(con, run_ids, labels, metric, x, log_x, log_y, smoothing) -> CurvesView:
    curves = store.run_curves(con, run_ids, metric, x, log_x=log_x)
    # One revision per metric and axis: a refresh keeps the zoom, another axis starts afresh.
    figure = runcharts.curves_figure(
        curves,
        labels,
        metric,
        x,
        log_x,
        log_y,
        smoothing,
        uirevision=f"runs:{metric}:{x}:{log_x}:{log_y}",
        batch_changes=store.batch_changes(con, run_ids),
    )
    return CurvesView(figure=figure, points=len(curves))


def selection_view(
    home: Home,
    run_ids: list[str],
    labels: dict[str, str],
    metric: str,
    x: str = DEFAULT_X,
    log_x: bool = False,
    log_y: bool = False,
    smoothing: float = 0.0,
    units: list[str] | None = None,
    baseline: str | None = None,
) -> tuple[CurvesView, ComparisonView | None]:
    """The curves of the selected runs and, with a baseline, their comparison: one connection."""
    with store.connect(home) as con:
        curves = _curves(con, run_ids, labels, metric, x, log_x, log_y, smoothing)
        comparison = _comparison(con, units or [], baseline, log_x=log_x, log_y=log_y) if baseline else None
    return curves, comparison


# -- comparison ----------------------------------------------------------------------------------


def comparison_units(runs: pd.DataFrame, run_ids: list[str]) -> list[str]:
    """What the selected runs compare as: a group of repeats where a run has one, else the run;
    units holding a run in the baseline role first."""
    by_id = {r["id"]: r for r in runs.to_dict(orient="records")}
    units, baselines = [], set()
    for run_id in run_ids:
        row = by_id.get(run_id, {})
        unit = row.get("group_id") if isinstance(row.get("group_id"), str) and row.get("group_id") else run_id
        if unit not in units:
            units.append(unit)
        if row.get("role") == "baseline":
            baselines.add(unit)
    # the baseline role first: it is the default baseline of the comparison
    return sorted(units, key=lambda u: u not in baselines)


@dataclass
class ComparisonView:
    error: str | None
    metrics: list[Metric] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure: go.Figure | None = None
    result: dict = field(default_factory=dict)
    caption: str = ""
    conditions: str | None = None  # the runs ran under different background load: which, in words


def unit_names(groups: list[dict]) -> dict[str, str]:
    """Group id -> what a person reads in a legend: "recommended · batch 1024, lr 0.008"; the id
    is added where two groups would read alike, and stands alone where nothing else is known."""

    def label(group: dict) -> str:
        parts = [group["role"]] if group.get("role") else []
        if group.get("batch_size") and group.get("lr"):
            parts.append(f"batch {group['batch_size']}, lr {group['lr']:.3g}")
        return " · ".join(parts) or group["name"]

    labels = {g["name"]: label(g) for g in groups}
    alike = {text for text in labels.values() if list(labels.values()).count(text) > 1}
    return {name: f"{text} ({name})" if text in alike and text != name else text for name, text in labels.items()}


def comparison_view(
    home: Home,
    units: list[str],
    baseline: str,
    x: str = "train_time_s",
    log_x: bool = False,
    log_y: bool = False,
    tolerance: float | None = None,
) -> ComparisonView:
    """Time to the baseline's validation loss, speedup and p-value of each unit against ``baseline``.

    ``tolerance`` None: the tolerances an autopilot compared these runs with, else the defaults (0.01)."""
    with store.connect(home) as con:
        return _comparison(con, units, baseline, x, log_x, log_y, tolerance)


def _comparison(
    con,
    units: list[str],
    baseline: str,
    x: str = "train_time_s",
    log_x: bool = False,
    log_y: bool = False,
    tolerance: float | None = None,
) -> ComparisonView:
    ordered = [baseline] + [u for u in units if u != baseline]
    groups = []
    for unit in ordered:
        runs = store.runs_by_id(con, store.runs_in(con, unit))
        if runs:
            groups.append((unit, runs))
    evals = store.run_evaluations(con, [r["id"] for _, rs in groups for r in rs])
    if len(groups) < 2 or groups[0][0] != baseline:
        return ComparisonView(
            error="the comparison needs the baseline and at least one other run or group that has started training"
        )
    stored = store.comparison_tolerances(con, [r["id"] for _, rs in groups for r in rs]) if tolerance is None else None
    tolerances = (
        {"tolerance": stored["tolerance"], "quality_tolerance": stored["quality_tolerance"]}
        if stored
        else {"tolerance": 0.01 if tolerance is None else tolerance}
    )
    try:
        result = compare_groups(groups, evals, **tolerances)
    except UsageError as exc:
        return ComparisonView(error=str(exc))

    metrics = []
    quality_name = result["quality"]["name"]
    names = unit_names(result["groups"])
    for group in result["groups"]:
        ttt = group["time_to_target"]
        if group["name"] == baseline:
            metrics.append(
                Metric(
                    "Baseline time to target",
                    time_text(ttt),
                    f"{group['name']}: training time to validation loss {result['target_val_loss']:.4g}, "
                    f"median over {group['n']} run(s) ({group['reached']} reached it)",
                )
            )
            continue
        metrics.append(
            Metric(
                f"Speedup of {names[group['name']]}",
                speedup_text(group),
                f"{(group.get('verdict') or {}).get('text', '')}. The baseline's median time to target over this group's "
                f"({time_text(ttt)}), with a {result['confidence']:.0%} bootstrap interval for censored data and an exact "
                f"test; {group['reached']} of {group['n']} runs reached the target, the others count as at least their "
                f"whole training time",
            )
        )
        quality = group.get("quality") or {}
        if quality.get("difference") is not None or quality.get("failed"):
            p = quality.get("p_value")
            value = DASH if quality.get("difference") is None else f"{quality['difference']:+.4f}"
            metrics.append(
                Metric(
                    f"Δ {quality_name}",
                    value + (f" (p={p:.2g})" if p is not None else ""),
                    f"{quality_words(quality, quality_name, result['confidence'])}; p: Welch's t-test, "
                    f"needs two or more runs per group",
                )
            )
    table = pd.DataFrame(comparison_table(result))
    groups_ids = {names.get(name, name): [r["id"] for r in runs] for name, runs in groups}
    figure = runcharts.comparison_figure(
        evals,
        groups_ids,
        names.get(baseline, baseline),
        result["target_val_loss"],
        x,
        log_x,
        log_y,
        uirevision=f"compare:{x}:{log_x}:{log_y}",
    )
    caption = (
        f"Target: validation loss {result['target_val_loss']:.4g} (the baseline's best "
        f"{result['baseline_best_val_loss']:.4g} + {result['tolerance']:.0%}); times are "
        f"{result['time_basis']}. A selected run that belongs to a group brings in all of the group's repeats."
    )
    if stored:
        caption += (
            f" Tolerances as autopilot `{stored['autopilot']}` compared these runs: target "
            f"{stored['tolerance']:.0%}, quality {stored['quality_tolerance']:.0%}."
        )
    conditions = result["conditions"]
    return ComparisonView(
        error=None,
        metrics=metrics,
        table=table,
        figure=figure,
        result=result,
        caption=caption,
        conditions=f"Conditions differed: {conditions['text']}." if conditions["differed"] else None,
    )
