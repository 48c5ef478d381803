"""The calibration figure: predicted against measured, for the speedup and each of its two factors.

A pure function, as the other charts: it takes verification rows (:func:`largestep.store.list_verifications`)
and returns a ``plotly`` figure. Each verification is one point per panel, coloured by its workload and
device, with both intervals as error bars and y = x drawn: a point above the line was under-predicted.
Where a recommendation was ranked on a corrected noise model, the raw model's prediction is a hollow
marker on the same row, so the correction's effect is seen. A point's ``customdata`` is the verification's
id, so a page can open the comparison behind a clicked point.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import GREY, HEIGHT

__all__ = ["calibration_figure", "PANELS", "PALETTE"]

#: (title, predicted column, its interval, raw column, measured column, its interval, bound column)
PANELS = (
    (
        "speedup (time to target)",
        "predicted_speedup",
        ("predicted_low", "predicted_high"),
        "raw_speedup",
        "measured_speedup",
        ("measured_low", "measured_high"),
        "measured_bound",
    ),
    (
        "steps factor S(B0)/S(B)",
        "predicted_steps",
        ("predicted_steps_low", "predicted_steps_high"),
        "raw_steps",
        "measured_steps",
        ("measured_steps_low", "measured_steps_high"),
        "steps_bound",
    ),
    (
        "time per step t(B)/t(B0)",
        "predicted_step_time",
        ("predicted_step_time_low", "predicted_step_time_high"),
        None,
        "measured_step_time",
        ("measured_step_time_low", "measured_step_time_high"),
        None,
    ),
)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BOUND_SYMBOLS = {"at most": "triangle-down", "at least": "triangle-up"}


def _number(value) -> float | None:
    return float(value) if value is not None and isinstance(value, (int, float)) and math.isfinite(value) else None


def _label(point: dict) -> str:
    return f"{point.get('workload') or '?'} · {point.get('device_name') or point.get('device_id') or '?'}"


def _hover(point: dict, title: str, predicted: float, measured: float, raw: bool) -> str:
    model = (
        "raw noise model"
        if raw
        else (
            "corrected model"
            if point.get("raw_speedup") not in (None, point.get("predicted_speedup"))
            else "as recommended"
        )
    )
    bound = point.get("measured_bound") if title.startswith("speedup") else point.get("steps_bound")
    return (
        f"<b>{_label(point)}</b><br>batch {point.get('baseline_batch')} → {point.get('batch_size')} "
        f"({point.get('rule')} rule)<br>{title}: predicted {predicted:.2f}× ({model}), measured "
        f"{bound + ' ' if bound else ''}{measured:.2f}×<br>{point.get('verdict') or ''}, quality "
        f"{point.get('quality') or '-'}<br>{point.get('source')} `{point.get('autopilot_id') or ''}` · "
        f"{point['id']} (click to open its comparison)"
    )


def calibration_figure(points: list[dict], uirevision: str = "calibration") -> go.Figure:
    """Three panels, predicted (x) against measured (y), log axes, y = x dashed."""
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[p[0] for p in PANELS], horizontal_spacing=0.07)
    colours = {}
    for point in points:
        colours.setdefault(_label(point), PALETTE[len(colours) % len(PALETTE)])
    shown_legend: set[str] = set()
    for column, (title, predicted, p_span, raw, measured, m_span, bound) in enumerate(PANELS, start=1):
        ends = []
        for label, colour in colours.items():
            rows = [p for p in points if _label(p) == label and _number(p.get(predicted)) and _number(p.get(measured))]
            if not rows:
                continue
            xs = [float(p[predicted]) for p in rows]
            ys = [float(p[measured]) for p in rows]
            ends += xs + ys
            symbols = [BOUND_SYMBOLS.get(p.get(bound), "circle") if bound else "circle" for p in rows]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=label not in shown_legend,
                    marker=dict(color=colour, size=11, symbol=symbols, line=dict(color="white", width=1)),
                    error_x=_bars(rows, xs, p_span, colour),
                    error_y=_bars(rows, ys, m_span, colour, bound),
                    customdata=[p["id"] for p in rows],
                    hoverinfo="text",
                    hovertext=[_hover(p, title, x, y, False) for p, x, y in zip(rows, xs, ys)],
                ),
                row=1,
                col=column,
            )
            shown_legend.add(label)
            if raw:  # the raw model's prediction where the recommendation ranked on a corrected one
                corrected = [
                    (p, float(p[raw]), y)
                    for p, y in zip(rows, ys)
                    if _number(p.get(raw)) and abs(float(p[raw]) - float(p[predicted])) > 1e-9
                ]
                if corrected:
                    ends += [x for _, x, _ in corrected]
                    fig.add_trace(
                        go.Scatter(
                            x=[x for _, x, _ in corrected],
                            y=[y for _, _, y in corrected],
                            mode="markers",
                            name=f"{label} (raw model)",
                            legendgroup=label,
                            showlegend=False,
                            marker=dict(color=colour, size=11, symbol="circle-open", line=dict(width=2)),
                            customdata=[p["id"] for p, _, _ in corrected],
                            hoverinfo="text",
                            hovertext=[_hover(p, title, x, y, True) for p, x, y in corrected],
                        ),
                        row=1,
                        col=column,
                    )
        low, high = (min(ends), max(ends)) if ends else (0.5, 2.0)
        low, high = min(low, 1.0) / 1.3, max(high, 1.0) * 1.3
        fig.add_trace(
            go.Scatter(
                x=[low, high],
                y=[low, high],
                mode="lines",
                name="y = x (a perfect prediction)",
                line=dict(color=GREY, dash="dash", width=1),
                hoverinfo="skip",
                showlegend=column == 1,
            ),
            row=1,
            col=column,
        )
        fig.update_xaxes(type="log", title_text="predicted", row=1, col=column)
        fig.update_yaxes(type="log", title_text="measured" if column == 1 else None, row=1, col=column)
    fig.update_layout(
        height=HEIGHT + 40,
        uirevision=uirevision,
        hovermode="closest",
        margin=dict(l=60, r=20, t=60, b=50),
        clickmode="event+select",
        legend=dict(orientation="h", x=0, y=-0.2, xanchor="left", yanchor="top"),
    )
    return fig


def _bars(rows: list[dict], values: list[float], span: tuple[str, str], colour: str, bound: str | None = None) -> dict:
    """Asymmetric error bars from each row's interval (an open end or a bound: no bar on that side)."""
    plus, minus = [], []
    for row, value in zip(rows, values):
        low, high = _number(row.get(span[0])), _number(row.get(span[1]))
        if bound and row.get(bound):
            low = high = None
        plus.append(max(0.0, high - value) if high is not None else 0.0)
        minus.append(max(0.0, value - low) if low is not None else 0.0)
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, color=colour, thickness=1, width=3)
