"""Plotly figures of training runs: metric curves, and the comparison of groups of repeats.

Pure functions, like :mod:`largestep.ui.charts.profile`: each takes data in the shapes :mod:`largestep.store`
returns (``run_curves``: one row per bucket of a downsampled series; ``run_evaluations``) and
returns a ``plotly.graph_objects.Figure``. None of them reads the database or knows about
Streamlit. The series arrive already thinned in DuckDB to at most about a thousand buckets per
run, each with its lowest, highest and last value; smoothing is applied here, to those buckets'
last values, which is cheap (a thousand points) and close to smoothing the raw series, since a
bucket's last value is one of the raw points. Every figure carries a ``uirevision`` that stays the
same while the same view refreshes, so the user's zoom survives each live redraw.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .base import NO_DATA

__all__ = ["AXIS_TITLES", "ema", "curves_figure", "comparison_figure", "group_bands"]

HEIGHT = 420  # pixels
RAW_OPACITY = 0.25  # the unsmoothed line behind a smoothed one
BAND_OPACITY = 0.15  # the min..max band of each bucket, and the ± std band of a group
AXIS_TITLES = {
    "step": "step (optimizer steps)",
    "epoch": "epoch",
    "samples": "samples seen",
    "wall_time_s": "wall time (s, evaluation included)",
    "train_time_s": "training time (s, evaluation excluded)",
}
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_GREY = "#7f7f7f"


def ema(values, weight: float) -> np.ndarray:
    """Exponential moving average: s[0] = y[0], s[i] = weight * s[i-1] + (1 - weight) * y[i].

    ``weight`` 0 returns the series unchanged; NaN values are skipped (the average carries on).
    """
    y = np.asarray(values, dtype=float)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight!r}")
    if weight == 0.0 or len(y) == 0:
        return y.copy()
    out = np.empty_like(y)
    last = math.nan
    for i, v in enumerate(y):
        if math.isnan(v):
            out[i] = last
            continue
        last = v if math.isnan(last) else weight * last + (1.0 - weight) * v
        out[i] = last
    return out


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(
    title: str, x: str, y_title: str, log_x: bool, log_y: bool, uirevision: str, subtitle: str | None = None
) -> dict:
    return dict(
        title=dict(text=title, subtitle=dict(text=subtitle) if subtitle else None),
        uirevision=uirevision,
        height=HEIGHT,
        hovermode="x unified",
        margin=dict(l=60, r=20, t=70 if subtitle else 50, b=50),
        legend=dict(orientation="h", x=0, y=-0.18, xanchor="left", yanchor="top"),
        xaxis=dict(
            title=dict(text=AXIS_TITLES.get(x, x) + (" (log)" if log_x else "")), type="log" if log_x else "linear"
        ),
        yaxis=dict(title=dict(text=y_title + (" (log)" if log_y else "")), type="log" if log_y else "linear"),
    )


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    # Built from plain dicts without plotly's per-property validation: with ten runs of a
    # thousand points it costs most of the figure's build time, and these dicts are ours.
    return go.Figure(data=[{"type": "scatter", **t} for t in traces], layout=layout, _validate=False)


def _empty(layout: dict, message: str = NO_DATA) -> go.Figure:
    hidden = dict(showticklabels=False, showgrid=False, zeroline=False)
    layout["xaxis"].update(hidden)
    layout["yaxis"].update(hidden)
    layout["annotations"] = [
        dict(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=16, color=_GREY))
    ]
    return _figure([], layout)


def _band(x: np.ndarray, low: np.ndarray, high: np.ndarray, colour: str, group: str, name: str) -> dict:
    """A filled polygon from ``low`` to ``high``: one trace, drawn behind its line."""
    return dict(
        x=np.concatenate([x, x[::-1]]),
        y=np.concatenate([high, low[::-1]]),
        mode="lines",
        line=dict(width=0),
        fill="toself",
        fillcolor=_rgba(colour, BAND_OPACITY),
        legendgroup=group,
        showlegend=False,
        hoverinfo="skip",
        name=name,
    )


# -- curves --------------------------------------------------------------------------------------


def curves_figure(
    curves: pd.DataFrame | None,
    labels: dict[str, str],
    metric: str,
    x: str = "step",
    log_x: bool = False,
    log_y: bool = False,
    smoothing: float = 0.0,
    uirevision: str | None = None,
    batch_changes: pd.DataFrame | None = None,
) -> go.Figure:
    """One metric of several runs against ``x``: per run, the buckets' min..max as a faint band,
    the last value of each bucket as the line, EMA-smoothed with ``smoothing`` > 0 (the raw line
    then stays faint behind it).

    ``curves``: :func:`largestep.store.run_curves`; ``labels``: run id -> legend label, in the order
    the runs should be drawn (it also fixes each run's colour). ``batch_changes``
    (:func:`largestep.store.batch_changes`): a dashed vertical line in the run's colour where a batch
    schedule changed its batch, labelled with the new batch.
    """
    layout = _layout(
        metric,
        x,
        metric,
        log_x,
        log_y,
        uirevision or f"runs:{metric}:{x}",
        subtitle="line: last value per bucket"
        + (f", EMA {smoothing:.2f}" if smoothing else "")
        + "; band: min..max per bucket (spikes kept)",
    )
    if curves is None or curves.empty:
        return _empty(layout, f"no {metric} recorded yet for the selected runs" if labels else NO_DATA)
    traces = []
    by_run = dict(tuple(curves.groupby("run_id", sort=False)))
    for index, run_id in enumerate(r for r in labels if r in by_run):
        colour = _COLOURS[index % len(_COLOURS)]
        label = labels[run_id]
        data = by_run[run_id].sort_values("x_last")
        xs = data["x_last"].to_numpy(dtype=float)
        y_min, y_max = data["y_min"].to_numpy(dtype=float), data["y_max"].to_numpy(dtype=float)
        y_last = data["y_last"].to_numpy(dtype=float)
        if (y_max > y_min).any():  # buckets of one point have nothing to show as a band
            traces.append(_band(xs, y_min, y_max, colour, run_id, f"{label} min..max"))
        if smoothing > 0:
            traces.append(
                dict(
                    x=xs,
                    y=y_last,
                    mode="lines",
                    line=dict(color=colour, width=1),
                    opacity=RAW_OPACITY,
                    legendgroup=run_id,
                    showlegend=False,
                    name=f"{label} raw",
                    hoverinfo="skip",
                )
            )
        traces.append(
            dict(
                x=xs,
                y=ema(y_last, smoothing) if smoothing > 0 else y_last,
                legendgroup=run_id,
                mode="lines+markers" if len(xs) < 30 else "lines",
                line=dict(color=colour, width=2),
                marker=dict(size=5),
                name=label,
                hovertemplate=f"{label}: %{{y:.4g}}<extra></extra>",
            )
        )
    _mark_batch_changes(layout, batch_changes, [r for r in labels if r in by_run], x, log_x)
    return _figure(traces, layout)


def _mark_batch_changes(layout: dict, changes: pd.DataFrame | None, drawn: list[str], x: str, log_x: bool) -> None:
    """Vertical lines at each batch change of the drawn runs, in each run's colour."""
    if changes is None or changes.empty or x not in changes:
        return
    shapes, notes = [], []
    for index, run_id in enumerate(drawn):
        colour = _COLOURS[index % len(_COLOURS)]
        for change in changes[changes["run_id"] == run_id].itertuples():
            at = float(getattr(change, x))
            shapes.append(
                dict(
                    type="line",
                    xref="x",
                    yref="paper",
                    x0=at,
                    x1=at,
                    y0=0,
                    y1=1,
                    line=dict(color=colour, dash="dash", width=1),
                )
            )
            # an annotation on a log axis is placed in log10 units, a shape in data units
            notes.append(
                dict(
                    x=math.log10(at) if log_x and at > 0 else at,
                    y=1,
                    xref="x",
                    yref="paper",
                    text=f"batch {change.batch_size}",
                    showarrow=False,
                    yanchor="bottom",
                    font=dict(size=10, color=colour),
                )
            )
    layout["shapes"] = shapes
    layout["annotations"] = notes


# -- comparison ----------------------------------------------------------------------------------


def group_bands(evals: pd.DataFrame, groups: dict[str, list[str]], x: str = "train_time_s") -> pd.DataFrame:
    """Mean and standard deviation of validation loss across each group's repeats, evaluation by
    evaluation (the k-th evaluation of every repeat lines up: same config, other seed).

    Columns: group, eval, n, x (mean over repeats), mean, std (NaN with one repeat).
    """
    if evals is None or evals.empty:
        return pd.DataFrame(columns=["group", "eval", "n", "x", "mean", "std"])
    group_of = {run_id: name for name, run_ids in groups.items() for run_id in run_ids}
    part = evals[evals["run_id"].isin(group_of)].sort_values(["run_id", "step"])
    part = part.assign(group=part["run_id"].map(group_of), eval=part.groupby("run_id").cumcount())
    stats = (
        part.groupby(["group", "eval"], sort=False)
        .agg(n=("val_loss", "size"), x=(x, "mean"), mean=("val_loss", "mean"), std=("val_loss", "std"))
        .reset_index()
    )
    order = {name: i for i, name in enumerate(groups)}
    return stats.sort_values(
        ["group", "eval"], key=lambda c: c.map(order) if c.name == "group" else c, ignore_index=True
    )


def comparison_figure(
    evals: pd.DataFrame | None,
    groups: dict[str, list[str]],
    baseline: str,
    target: float | None,
    x: str = "train_time_s",
    log_x: bool = False,
    log_y: bool = False,
    uirevision: str | None = None,
) -> go.Figure:
    """Validation loss of each group against ``x``: the mean over repeats, ± one standard
    deviation as a band, each repeat faint behind it; the target (from the baseline) dashed."""
    layout = _layout(
        "Validation loss by group",
        x,
        "validation loss",
        log_x,
        log_y,
        uirevision or f"compare:{x}",
        subtitle=f"baseline {baseline}; line: mean over repeats, band: ± 1 std"
        + ("; dashed: target" if target is not None else ""),
    )
    if evals is None or evals.empty:
        return _empty(layout, "no validation loss recorded yet")
    bands = dict(tuple(group_bands(evals, groups, x).groupby("group", sort=False)))
    by_run = dict(tuple(evals.sort_values(["run_id", "step"]).groupby("run_id", sort=False)))
    traces = []
    for index, (name, run_ids) in enumerate(groups.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        band = bands.get(name)
        if band is None:
            continue
        for run in (by_run[r] for r in run_ids if r in by_run):
            run_id = run["run_id"].iloc[0]
            traces.append(
                dict(
                    x=run[x].to_numpy(),
                    y=run["val_loss"].to_numpy(),
                    mode="lines",
                    legendgroup=name,
                    line=dict(color=colour, width=1),
                    opacity=RAW_OPACITY,
                    showlegend=False,
                    name=f"{name} {run_id}",
                    hoverinfo="skip",
                )
            )
        xs, mean = band["x"].to_numpy(dtype=float), band["mean"].to_numpy(dtype=float)
        std = band["std"].fillna(0.0).to_numpy(dtype=float)
        if (std > 0).any():
            traces.append(_band(xs, mean - std, mean + std, colour, name, f"{name} ± std"))
        n = int(band["n"].max())
        traces.append(
            dict(
                x=xs,
                y=mean,
                mode="lines+markers",
                legendgroup=name,
                line=dict(color=colour, width=2),
                name=f"{name} ({n} run{'s' if n != 1 else ''})"
                + (" · baseline" if name == baseline and "baseline" not in name else ""),
                customdata=np.column_stack([std, band["n"].to_numpy()]),
                hovertemplate=f"{name}: %{{y:.4g}} ± %{{customdata[0]:.2g}} (n=%{{customdata[1]}})<extra></extra>",
            )
        )
    if target is not None:
        layout["shapes"] = [
            dict(
                type="line",
                xref="paper",
                x0=0,
                x1=1,
                y0=target,
                y1=target,
                line=dict(color=_GREY, dash="dash", width=1),
            )
        ]
        layout["annotations"] = [
            dict(
                text=f"target {target:.4g}",
                xref="paper",
                x=1,
                xanchor="right",
                y=math.log10(target) if log_y and target > 0 else target,
                yanchor="bottom",
                showarrow=False,
                font=dict(color=_GREY),
            )
        ]
    return _figure(traces, layout)
