"""Plotly figures of a profile: step time, throughput, memory, FLOP/s, energy and telemetry, with
other profiles' step time and throughput overlaid for comparison.

Pure functions: each takes data in the shapes :mod:`largestep.store` returns (``profile_points``,
``profile_telemetry``) and returns a ``plotly.graph_objects.Figure``. None of them reads the
database or knows about Streamlit. Every figure copes with an empty frame (a "no data" note
instead of an error) and carries a ``uirevision`` that stays the same while one profile is
refreshed live, so the user's zoom survives each refresh.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...format import byte_unit, short_count
from .base import (
    BLUE,
    GREEN,
    GREY,
    HEIGHT,
    NO_DATA,
    ORANGE,
    RED,
    apply_layout,
    batch_axis,
    empty_figure,
    flag,
    numeric,
    ok_points,
    revision_of,
)

__all__ = [
    "NO_DATA",
    "SATURATION_LABEL",
    "step_time_figure",
    "throughput_figure",
    "memory_figure",
    "flops_figure",
    "energy_figure",
    "has_energy",
    "overlay_profiles",
    "telemetry_figure",
    "ok_points",
    "byte_unit",
]

SATURATION_LABEL = "saturation (90% of best)"
SATURATION_SHARE = 0.9  # the saturation batch reaches this share of the best throughput
BUDGET_OFF_CHART = 4.0  # a budget this many times above the data is noted, not drawn
FIT_SAMPLES = 64  # points along the memory fit curve (log-spaced batch sizes)
_BAND_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
# Overlaid profiles: colours apart from the shown profile's blue and green, drawn dotted behind it
_OVERLAY_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
# What an overlay draws from each other profile, per figure: (column, scale to the figure's unit, unit)
OVERLAID = {"step time": ("median_s", 1e3, "ms"), "throughput": ("samples_per_s", 1.0, "samples/s")}


# -- step time -----------------------------------------------------------------------------------


def step_time_figure(points: pd.DataFrame | None, uirevision: str | None = None) -> go.Figure:
    """Median step time against batch size, log-log, with the p25..p75 spread as error bars.

    The dashed reference t_ref(B) = t(B_min) * B / B_min is what step time would be with no
    parallelism gain at all (time grows with the batch); the further the measured curve stays
    below it, the cheaper a large batch is on this hardware.
    """
    title, x_title, y_title = "Step time vs batch size", "batch size (samples, log)", "step time (ms, log)"
    revision = revision_of("step-time", points, "profile_id", uirevision)
    ok = ok_points(points, "median_s")
    if ok.empty:
        return empty_figure(title, x_title, y_title, revision)

    batch = ok["batch_size"]
    median_ms = ok["median_s"] * 1e3
    p25_ms = numeric(ok, "p25_s").fillna(ok["median_s"]) * 1e3
    p75_ms = numeric(ok, "p75_s").fillna(ok["median_s"]) * 1e3
    steps = numeric(ok, "n").fillna(0).astype(int)
    noisy = flag(ok, "noisy")

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=batch,
            y=median_ms,
            mode="lines+markers",
            name="median step time",
            line=dict(color=BLUE),
            error_y=dict(
                type="data",
                symmetric=False,
                array=(p75_ms - median_ms).clip(lower=0),
                arrayminus=(median_ms - p25_ms).clip(lower=0),
                thickness=1.2,
                width=4,
            ),
            customdata=np.column_stack([p25_ms, p75_ms, steps]),
            hovertemplate="batch %{x}<br>median %{y:.3g} ms<br>p25..p75 %{customdata[0]:.3g}..%{customdata[1]:.3g} ms"
            "<br>%{customdata[2]} timed steps<extra></extra>",
        )
    )
    estimate_ms = numeric(ok, "estimate_s") * 1e3
    if estimate_ms.notna().any() and not np.allclose(estimate_ms.fillna(median_ms), median_ms):
        # the step time the profile uses (its estimator, robust to interference), beside the median
        fig.add_trace(
            go.Scatter(
                x=batch,
                y=estimate_ms,
                mode="lines+markers",
                name="step time (the profile's estimate)",
                line=dict(color=BLUE, dash="dot"),
                marker=dict(symbol="diamond-open"),
                hovertemplate="batch %{x}<br>estimate %{y:.3g} ms<extra></extra>",
            )
        )
    b_min, t_min = float(batch.iloc[0]), float(median_ms.iloc[0])
    reference = t_min * batch / b_min
    fig.add_trace(
        go.Scatter(
            x=batch,
            y=reference,
            mode="lines",
            name="time grows with batch (no parallelism gain)",
            line=dict(color=GREY, dash="dash"),
            hovertemplate="batch %{x}<br>linear reference %{y:.3g} ms<extra></extra>",
        )
    )
    if noisy.any():
        fig.add_trace(
            go.Scatter(
                x=batch[noisy],
                y=median_ms[noisy],
                mode="markers",
                name="noisy (wide IQR)",
                marker=dict(symbol="circle-open", size=16, color=ORANGE, line=dict(width=2)),
                hovertemplate="batch %{x}: noisy measurement (IQR wide against the median)<extra></extra>",
            )
        )
    subtitle = None
    if len(ok) >= 2:
        b_ratio = float(batch.iloc[-1]) / b_min
        t_ratio = float(median_ms.iloc[-1]) / t_min
        subtitle = f"{b_ratio:.0f}× the batch took {t_ratio:.2g}× the step time"
    apply_layout(fig, title, x_title, y_title, revision, subtitle)
    batch_axis(fig, batch)
    fig.update_yaxes(type="log")
    return fig


# -- throughput ----------------------------------------------------------------------------------


def throughput_figure(
    points: pd.DataFrame | None, saturation_batch: int | None, uirevision: str | None = None
) -> go.Figure:
    """Samples per second against batch size (log x), the saturation batch marked."""
    title, x_title, y_title = "Throughput vs batch size", "batch size (samples, log)", "throughput (samples/s)"
    revision = revision_of("throughput", points, "profile_id", uirevision)
    ok = ok_points(points, "samples_per_s")
    if ok.empty:
        return empty_figure(title, x_title, y_title, revision)

    fig = go.Figure(
        go.Scatter(
            x=ok["batch_size"],
            y=ok["samples_per_s"],
            mode="lines+markers",
            name="throughput",
            line=dict(color=GREEN),
            hovertemplate="batch %{x}<br>%{y:,.0f} samples/s<extra></extra>",
        )
    )
    best = float(ok["samples_per_s"].max())
    fig.add_hline(y=SATURATION_SHARE * best, line=dict(color=GREY, dash="dot", width=1))
    ticks = list(ok["batch_size"])
    if saturation_batch is not None and not pd.isna(saturation_batch) and saturation_batch > 0:
        saturation_batch = int(saturation_batch)
        fig.add_vline(x=saturation_batch, line=dict(color=RED, dash="dash", width=2))
        # Annotations on a log axis take log10 of the data value (shapes do not).
        fig.add_annotation(
            x=math.log10(saturation_batch),
            xref="x",
            y=1.0,
            yref="paper",
            yanchor="bottom",
            text=SATURATION_LABEL,
            showarrow=False,
            font=dict(color=RED),
        )
        ticks.append(saturation_batch)
    apply_layout(
        fig,
        title,
        x_title,
        y_title,
        revision,
        subtitle=f"best {best:,.0f} samples/s; dotted line: {SATURATION_SHARE:.0%} of best",
    )
    batch_axis(fig, ticks)
    fig.update_yaxes(rangemode="tozero")
    return fig


# -- other profiles overlaid -----------------------------------------------------------------------


def overlay_profiles(fig: go.Figure, figure_name: str, others: dict[str, pd.DataFrame]) -> go.Figure:
    """Draw each other profile's curve (``others``: label -> its points) on a step time or
    throughput figure, dotted, so measurements on other devices or dtypes read against this one."""
    column, scale, unit = OVERLAID[figure_name]
    if others and fig.data:
        fig.data[0].name = f"{fig.data[0].name} (this profile)"
    ticks = [int(b) for trace in fig.data for b in (trace.x if trace.x is not None else ())]
    for index, (label, points) in enumerate(others.items()):
        ok = ok_points(points, column)
        if ok.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=ok["batch_size"],
                y=ok[column] * scale,
                mode="lines+markers",
                name=label,
                line=dict(color=_OVERLAY_COLOURS[index % len(_OVERLAY_COLOURS)], dash="dot"),
                hovertemplate=f"{label}<br>batch %{{x}}<br>%{{y:,.3g}} {unit}<extra></extra>",
            )
        )
        ticks += [int(b) for b in ok["batch_size"]]
    if others and ticks:
        batch_axis(fig, ticks)
        fig.update_layout(showlegend=True, legend=dict(x=0.01, y=-0.2, yanchor="top", orientation="h"))
    return fig


# -- energy --------------------------------------------------------------------------------------


def has_energy(points: pd.DataFrame | None) -> bool:
    """Whether any measured point has an energy figure (NVML power was read while it was timed)."""
    return not ok_points(points, "energy_per_sample_j").empty


def energy_figure(points: pd.DataFrame | None, uirevision: str | None = None) -> go.Figure:
    """Energy per training sample (J) against batch size: mean board power over the timed steps
    times the step time, per sample. A larger batch that keeps the GPU busier for the same power
    spends fewer joules on each sample."""
    title, x_title, y_title = "Energy per sample vs batch size", "batch size (samples, log)", "energy per sample (J)"
    revision = revision_of("energy", points, "profile_id", uirevision)
    ok = ok_points(points, "energy_per_sample_j")
    if ok.empty:
        return empty_figure(title, x_title, y_title, revision, "no power readings (NVML) for this profile")
    power = numeric(ok, "mean_power_w")
    fig = go.Figure(
        go.Scatter(
            x=ok["batch_size"],
            y=ok["energy_per_sample_j"],
            mode="lines+markers",
            name="energy per sample",
            line=dict(color=ORANGE),
            customdata=power,
            hovertemplate="batch %{x}<br>%{y:.3g} J/sample<br>mean power %{customdata:.0f} W<extra></extra>",
        )
    )
    lowest = ok.loc[ok["energy_per_sample_j"].idxmin()]
    apply_layout(
        fig,
        title,
        x_title,
        y_title,
        revision,
        subtitle=f"lowest {lowest['energy_per_sample_j']:.3g} J/sample at batch {int(lowest['batch_size'])}",
    )
    batch_axis(fig, ok["batch_size"])
    fig.update_yaxes(type="log")
    return fig


# -- memory --------------------------------------------------------------------------------------


def memory_figure(
    points: pd.DataFrame | None,
    intercept: float | None,
    slope: float | None,
    budget_bytes: int | None,
    uirevision: str | None = None,
) -> go.Figure:
    """Peak memory against batch size, the linear fit m(B) = a + b*B, and the budget if given."""
    revision = revision_of("memory", points, "profile_id", uirevision)
    ok = ok_points(points, "peak_memory_bytes")
    estimate = bool(flag(ok, "memory_is_estimate").any())
    title = "Peak memory vs batch size" + (" — estimate (CPU)" if estimate else "")
    x_title = "batch size (samples, log)"
    all_points = points if points is not None and "batch_size" in points else pd.DataFrame(columns=["batch_size"])
    # points refused before running (over the budget) carry the fit's prediction instead
    predicted = all_points[all_points["status"] != "ok"] if "status" in all_points else all_points.iloc[0:0]
    predicted = predicted.assign(predicted_memory_bytes=numeric(predicted, "predicted_memory_bytes"))
    predicted = predicted.dropna(subset=["predicted_memory_bytes"])
    if ok.empty and predicted.empty:
        return empty_figure(title, x_title, "peak memory", revision)

    has_fit = intercept is not None and slope is not None and not pd.isna(intercept) and not pd.isna(slope)
    batches = pd.to_numeric(all_points["batch_size"], errors="coerce").dropna()
    batches = batches[batches > 0]
    b_lo, b_hi = float(batches.min()), float(batches.max())
    fit_b = np.unique(np.geomspace(b_lo, b_hi, FIT_SAMPLES)) if b_hi > b_lo else np.array([b_lo])
    fit_y = intercept + slope * fit_b if has_fit else np.array([])

    candidates = [
        ok["peak_memory_bytes"].max() if len(ok) else None,
        predicted["predicted_memory_bytes"].max() if len(predicted) else None,
        float(fit_y.max()) if len(fit_y) else None,
    ]
    largest = max((c for c in candidates if c is not None and not pd.isna(c)), default=None)
    budget_drawn = (
        budget_bytes is not None
        and budget_bytes > 0
        and (largest is None or budget_bytes <= BUDGET_OFF_CHART * largest)
    )
    divisor, unit = byte_unit(max(largest or 0, budget_bytes if budget_drawn else 0))

    fig = go.Figure()
    label = "peak memory, estimate (CPU)" if estimate else "peak memory (measured)"
    if len(ok):
        fig.add_trace(
            go.Scatter(
                x=ok["batch_size"],
                y=ok["peak_memory_bytes"] / divisor,
                mode="markers",
                name=label,
                marker=dict(color=BLUE, size=9),
                hovertemplate=f"batch %{{x}}<br>%{{y:.3g}} {unit}<extra></extra>",
            )
        )
    if has_fit:
        fig.add_trace(
            go.Scatter(
                x=fit_b,
                y=fit_y / divisor,
                mode="lines",
                name="linear fit a + b·B",
                line=dict(color=GREY, dash="dash"),
                hovertemplate=f"batch %{{x:.0f}}<br>fit %{{y:.3g}} {unit}<extra></extra>",
            )
        )
    if len(predicted):
        fig.add_trace(
            go.Scatter(
                x=predicted["batch_size"],
                y=predicted["predicted_memory_bytes"] / divisor,
                mode="markers",
                name="predicted, not run",
                marker=dict(symbol="x", size=10, color=RED),
                hovertemplate=f"batch %{{x}}<br>predicted %{{y:.3g}} {unit} (not run)<extra></extra>",
            )
        )
    notes = []
    if has_fit:
        per_sample_div, per_sample_unit = byte_unit(abs(slope))
        base_div, base_unit = byte_unit(abs(intercept))
        notes.append(
            f"fit {intercept / base_div:.3g} {base_unit} + {slope / per_sample_div:.3g} {per_sample_unit}/sample"
        )
    if budget_bytes is not None and budget_bytes > 0:
        budget_div, budget_unit = byte_unit(budget_bytes)
        budget_text = f"budget {budget_bytes / budget_div:.3g} {budget_unit}"
        if budget_drawn:
            fig.add_hline(
                y=budget_bytes / divisor,
                line=dict(color=RED, dash="dot", width=2),
                annotation_text=budget_text,
                annotation_position="top left",
                annotation_font_color=RED,
            )
        else:
            budget_text += " (off the chart)"
        if has_fit and slope > 0:
            fits = max(0, int((budget_bytes - intercept) // slope))
            budget_text += f", fits batch ≤ {fits:,} by the fit"
        notes.append(budget_text)
    apply_layout(fig, title, x_title, f"peak memory ({unit})", revision, subtitle=" · ".join(notes) or None)
    batch_axis(fig, list(ok["batch_size"]) + list(predicted["batch_size"]))
    fig.update_yaxes(rangemode="tozero")
    return fig


# -- FLOP/s --------------------------------------------------------------------------------------


def flops_figure(points: pd.DataFrame | None, uirevision: str | None = None) -> go.Figure:
    """Achieved GFLOP/s (counted FLOPs per step / median step time) against batch size."""
    title, x_title, y_title = "Achieved compute vs batch size", "batch size (samples, log)", "achieved GFLOP/s"
    revision = revision_of("flops", points, "profile_id", uirevision)
    ok = ok_points(points, "flops_per_s")
    if ok.empty:
        return empty_figure(title, x_title, y_title, revision)
    per_step = numeric(ok, "flops_per_step") / 1e9
    fig = go.Figure(
        go.Scatter(
            x=ok["batch_size"],
            y=ok["flops_per_s"] / 1e9,
            mode="lines+markers",
            name="achieved GFLOP/s",
            line=dict(color="#9467bd"),
            customdata=per_step,
            hovertemplate="batch %{x}<br>%{y:.3g} GFLOP/s<br>%{customdata:.3g} GFLOP per step<extra></extra>",
        )
    )
    apply_layout(fig, title, x_title, y_title, revision, subtitle="FLOPs counted with torch FlopCounterMode")
    batch_axis(fig, ok["batch_size"])
    fig.update_yaxes(rangemode="tozero")
    return fig


# -- telemetry -----------------------------------------------------------------------------------

# (column, axis title, scale) per panel; NVML panels when a GPU was sampled, else psutil's.
_NVML_PANELS = (
    ("gpu_util_pct", "GPU util (%)", 1.0),
    ("power_w", "power (W)", 1.0),
    ("temp_c", "temp (°C)", 1.0),
    ("sm_clock_mhz", "SM clock (MHz)", 1.0),
)
_PSUTIL_PANELS = (("cpu_util_pct", "CPU util (%)", 1.0), ("rss_bytes", "process RSS (MiB)", 1.0 / 2**20))


def telemetry_figure(telemetry: pd.DataFrame | None, uirevision: str | None = None) -> go.Figure:
    """The hardware over time while the profile ran, shaded by the batch size being timed.

    NVML (GPU utilisation, power, temperature, SM clock) when the samples came from NVML;
    otherwise CPU utilisation and the profiling process's resident memory.
    """
    title, x_title = "Hardware during the profile", "time since start (s)"
    revision = revision_of("telemetry", telemetry, "job_id", uirevision)
    if telemetry is None or len(telemetry) == 0 or "t" not in telemetry:
        return empty_figure(title, x_title, "", revision)

    frame = telemetry.copy()
    frame["elapsed_s"] = _elapsed_seconds(frame["t"])
    frame = frame.dropna(subset=["elapsed_s"]).sort_values("elapsed_s").reset_index(drop=True)
    nvml = "source" in frame and bool((frame["source"] == "nvml").any())
    panels = [p for p in (_NVML_PANELS if nvml else _PSUTIL_PANELS) if numeric(frame, p[0]).notna().any()]
    if frame.empty or not panels:
        return empty_figure(title, x_title, "", revision)

    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=None)
    for row, (column, axis_title, scale) in enumerate(panels, start=1):
        values = numeric(frame, column) * scale
        fig.add_trace(
            go.Scatter(
                x=frame["elapsed_s"],
                y=values,
                mode="lines",
                name=axis_title,
                line=dict(width=1.5),
                showlegend=False,
                hovertemplate=f"%{{x:.1f}} s<br>{axis_title}: %{{y:.3g}}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text=axis_title, row=row, col=1, rangemode="tozero")

    # One band a stretch of samples timed at one batch size, over every panel (they share the x axis).
    # Set all at once: an interleaved profile has a stretch a visit, and plotly's add_vrect rescans every
    # shape and trace on each call, so adding them one by one grows with the square of their number.
    segments = batch_segments(frame)
    colours = {
        batch: _BAND_COLOURS[i % len(_BAND_COLOURS)]
        for i, batch in enumerate(dict.fromkeys(batch for _, _, batch in segments))
    }  # a size keeps its colour
    span = (frame["elapsed_s"].iloc[-1] - frame["elapsed_s"].iloc[0]) or 1.0
    fig.update_layout(
        shapes=[
            dict(
                type="rect",
                xref="x",
                yref="paper",
                x0=start,
                x1=end,
                y0=0,
                y1=1,
                fillcolor=colours[batch],
                opacity=0.12,
                line_width=0,
                layer="below",
            )
            for start, end, batch in segments
        ],
        annotations=[
            *fig.layout.annotations,
            *(
                dict(
                    x=(start + end) / 2,
                    xref="x",
                    y=1.0,
                    yref="paper",
                    yanchor="bottom",
                    text=f"B={short_count(batch)}",
                    showarrow=False,
                    font=dict(size=10, color=colours[batch]),
                )
                # a label where it fits: an interleaved profile's visits can be too short to name each one
                for start, end, batch in segments
                if (end - start) / span >= MIN_LABELLED_BAND or len(segments) <= 12
            ),
        ],
    )

    source = "NVML" if nvml else "psutil (no NVML)"
    apply_layout(fig, title, None, None, revision, subtitle=f"source: {source}; shaded by the batch size being timed")
    fig.update_layout(height=max(HEIGHT, 170 * len(panels) + 90), margin=dict(t=90))
    fig.update_xaxes(title_text=x_title, row=len(panels), col=1)
    return fig


def _elapsed_seconds(t: pd.Series) -> pd.Series:
    """Seconds since the first sample, from timestamps or unix seconds."""
    if pd.api.types.is_numeric_dtype(t):
        seconds = t.astype(float)
    else:
        stamps = pd.to_datetime(t, utc=True, errors="coerce")
        seconds = (stamps - stamps.min()).dt.total_seconds()
    return seconds - seconds.min()


MIN_LABELLED_BAND = 0.04  # of the chart's width: narrower bands go unlabelled (their colour says the batch)


def batch_segments(frame: pd.DataFrame) -> list[tuple[float, float, int]]:
    """Contiguous runs of samples taken while one batch size was timed: (start_s, end_s, batch)."""
    if "batch_size" not in frame or "elapsed_s" not in frame:
        return []
    batch = numeric(frame, "batch_size")
    segments: list[tuple[float, float, int]] = []
    start_index = None
    for i in range(len(frame) + 1):
        current = batch.iloc[i] if i < len(frame) else np.nan
        previous = batch.iloc[i - 1] if i > 0 else np.nan
        if start_index is not None and (i == len(frame) or current != previous):
            # the band runs to the next sample's time, so adjacent bands touch without gaps
            end = float(frame["elapsed_s"].iloc[min(i, len(frame) - 1)])
            segments.append((float(frame["elapsed_s"].iloc[start_index]), end, int(previous)))
            start_index = None
        if i < len(frame) and not pd.isna(current) and start_index is None:
            start_index = i
    return segments
