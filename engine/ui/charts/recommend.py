"""Plotly figures of a recommendation, the experiment planner and a run comparison.

Pure functions, in the manner of :mod:`largestep.ui.charts.profile`: each takes a recommendation document,
a :class:`largestep.plan.planner.Plan` or frames from :mod:`largestep.store` and returns a
``plotly.graph_objects.Figure``; none reads the database or knows about Streamlit.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ...format import format_count, format_duration, short_count
from ...plan.recommend import model_text, steps_factor
from ...plan.verdict import interval_text
from .base import BLUE, GREY, ORANGE, RED, apply_layout, batch_axis, empty_figure

__all__ = ["time_to_target_figure", "planner_figure", "predicted_time_ratios", "batch_schedule_figure"]


def predicted_time_ratios(rec: dict) -> dict[int, float]:
    """Predicted T(B)/T(B0) for every candidate, the excluded ones too (what they would have scored).

    The same steps factor the recommendation ranked with; excluded candidates carry no ratio in
    the document, but the chart shows where they would have landed and why they were set aside.
    """
    noise = rec.get("noise_scale")
    b0 = rec["baseline"]["batch_size"]
    t0 = next((c["step_time_s"] for c in rec["candidates"] if c["batch_size"] == b0), None)
    if not t0:
        return {}
    base = steps_factor(b0, noise)
    out = {}
    for c in rec["candidates"]:
        if c.get("time_ratio") is not None:
            out[c["batch_size"]] = float(c["time_ratio"])
        elif c.get("step_time_s") and c.get("steps_factor"):  # the model ranked on, as every candidate stores it
            out[c["batch_size"]] = c["step_time_s"] / t0 / c["steps_factor"]
        elif c.get("step_time_s"):
            out[c["batch_size"]] = steps_factor(c["batch_size"], noise) / base * c["step_time_s"] / t0
    return out


def time_to_target_figure(rec: dict) -> go.Figure:
    """Predicted time to the target against batch size, relative to the baseline, the choice marked."""
    title = "Predicted time to target vs batch size"
    x_title, y_title = "batch size (samples, log)", "time to target (× baseline, log)"
    revision = f"time-to-target:{rec.get('recommendation_id')}"
    ratios = predicted_time_ratios(rec)
    if not ratios:
        return empty_figure(title, x_title, y_title, revision)
    b0, chosen = rec["baseline"]["batch_size"], rec["batch_size"]
    baseline_run = (rec.get("run_time_s") or {}).get("baseline")
    by_batch = {c["batch_size"]: c for c in rec["candidates"]}
    eligible = sorted(b for b, c in by_batch.items() if c.get("eligible") and b in ratios)
    excluded = sorted(b for b, c in by_batch.items() if not c.get("eligible") and b in ratios)

    def hover(batches: list[int]) -> list[str]:
        lines = []
        for b in batches:
            c, r = by_batch[b], ratios[b]
            text = f"batch {b}<br>lr {c['learning_rate']:.3g}<br>time to target {r:.3g}× the baseline"
            if c.get("speedup_interval"):
                text += f"<br>speedup {interval_text(*c['speedup_interval'])} (90% prediction interval)"
            if baseline_run:
                text += f"<br>run ≈ {format_duration(baseline_run * r)}"
            if c.get("excluded"):
                text += f"<br>excluded: {c['excluded']}"
            lines.append(text)
        return lines

    def error_bars(batches: list[int]) -> dict | None:
        """The prediction interval of each time ratio (1/speedup), as asymmetric error bars."""
        spans = [by_batch[b].get("speedup_interval") for b in batches]
        if not any(spans):
            return None
        return dict(
            type="data",
            symmetric=False,
            color=BLUE,
            thickness=1.2,
            array=[(1 / s[0] - ratios[b]) if s else 0 for b, s in zip(batches, spans)],
            arrayminus=[(ratios[b] - 1 / s[1]) if s else 0 for b, s in zip(batches, spans)],
        )

    fig = go.Figure()
    if eligible:
        fig.add_trace(
            go.Scatter(
                x=eligible,
                y=[ratios[b] for b in eligible],
                mode="lines+markers",
                name="candidates (90% interval)",
                line=dict(color=BLUE),
                marker=dict(size=9),
                hovertext=hover(eligible),
                hoverinfo="text",
                error_y=error_bars(eligible),
            )
        )
    if excluded:
        fig.add_trace(
            go.Scatter(
                x=excluded,
                y=[ratios[b] for b in excluded],
                mode="markers",
                name="excluded (hover for why)",
                marker=dict(symbol="x", size=10, color=GREY),
                hovertext=hover(excluded),
                hoverinfo="text",
            )
        )
    if b0 in ratios and b0 != chosen:
        fig.add_trace(
            go.Scatter(
                x=[b0],
                y=[ratios[b0]],
                mode="markers",
                name=f"baseline {b0}",
                marker=dict(symbol="diamond", size=13, color=ORANGE),
                hoverinfo="skip",
            )
        )
    if chosen in ratios:
        fig.add_trace(
            go.Scatter(
                x=[chosen],
                y=[ratios[chosen]],
                mode="markers+text",
                name=f"recommended {chosen}",
                marker=dict(symbol="star", size=20, color=RED, line=dict(color="white", width=1)),
                text=[f"batch {chosen}"],
                textposition="top center",
                textfont=dict(color=RED),
                hoverinfo="skip",
            )
        )
    fig.add_hline(y=1.0, line=dict(color=GREY, dash="dot", width=1))
    speed = rec.get("predicted_speedup") or {}
    speedup, span = speed.get("time_to_target"), speed.get("time_to_target_interval")
    basis = model_text(rec)
    subtitle = (
        (
            f"recommended batch {chosen}: predicted {speedup:.2f}× the baseline {b0}'s speed"
            + (f" ({speed.get('coverage', 0.9):.0%} prediction interval {interval_text(*span)})" if span else "")
            + f" · {basis}"
        )
        if speedup
        else basis
    )
    apply_layout(fig, title, x_title, y_title, revision, subtitle)
    # falling curves: the top-left corner holds data, so the legend goes top right
    fig.update_layout(legend=dict(x=0.99, xanchor="right", y=0.99, yanchor="top"))
    batch_axis(fig, list(ratios))
    fig.update_yaxes(type="log")
    return fig


def planner_figure(plan) -> go.Figure:
    """Experiments per day at each measured batch size, the baseline and the recommendation coloured."""
    title, x_title, y_title = "Experiments per day vs batch size", "batch size (samples)", "experiments per day"
    revision = f"planner:{plan.baseline_batch}:{plan.recommended_batch}"
    if not plan.rows:
        return empty_figure(title, x_title, y_title, revision)
    colours = {"baseline": ORANGE, "recommended": RED, None: BLUE}
    labels = [short_count(r.batch_size) for r in plan.rows]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[r.experiments_per_day for r in plan.rows],
            marker_color=[colours[r.role] for r in plan.rows],
            text=[format_count(r.experiments_per_day) + (f"<br>{r.role}" if r.role else "") for r in plan.rows],
            textposition="outside",
            cliponaxis=False,
            name="experiments per day",
            customdata=[
                [r.batch_size, format_duration(r.run_time_s), r.vs_baseline, r.runs_per_day] for r in plan.rows
            ],
            hovertemplate="batch %{customdata[0]}<br>run %{customdata[1]}<br>%{y:,.0f} experiments/day "
            "(%{customdata[3]} whole runs)<br>%{customdata[2]:.2f}× the baseline<extra></extra>",
        )
    )
    subtitle = (
        f"{plan.config.gpus} GPU{'s' if plan.config.gpus > 1 else ''} × "
        f"{plan.config.gpu_hours_per_day:g} h/day · {plan.epochs:g} epochs at the baseline"
    )
    if plan.ratio is not None:
        subtitle = f"recommended: {plan.ratio:.1f}× as many experiments per day · " + subtitle
    apply_layout(fig, title, x_title, y_title, revision, subtitle)
    fig.update_xaxes(type="category")
    fig.update_yaxes(rangemode="tozero")
    return fig


def batch_schedule_figure(plan: dict) -> go.Figure:
    """The noise curve over the baseline's training (log y) and the planned batch, a step per phase,
    on the same axis: each phase's batch sits near the noise scale that called for it."""
    title = "Noise scale along training, and the batch schedule"
    x_title, y_title = "fraction of the baseline's training", "samples (log)"
    revision = f"batch-schedule:{plan.get('curve_id')}"
    curve = plan.get("noise_curve") or []
    if not curve:
        return empty_figure(title, x_title, y_title, revision)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[p["fraction"] for p in curve],
            y=[p["b_simple"] for p in curve],
            mode="lines+markers",
            name="B_noise (measured)",
            line=dict(color=BLUE),
            marker=dict(size=9),
            hovertemplate="%{x:.0%} of training<br>B_simple ≈ %{y:,.0f}<extra></extra>",
        )
    )
    phases = plan["phases"]
    ends = [p["baseline_fraction"] for p in phases[1:]] + [1.0]
    xs, ys = [], []
    for phase, end in zip(phases, ends):
        xs += [phase["baseline_fraction"], end]
        ys += [phase["batch_size"], phase["batch_size"]]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            name="planned batch",
            line=dict(color=RED, width=3, shape="hv"),
            hovertemplate="batch %{y:,}<extra></extra>",
        )
    )
    fixed = plan["best_fixed"]["batch_size"]
    fig.add_hline(
        y=fixed,
        line=dict(color=GREY, dash="dot", width=1),
        annotation_text=f"best fixed batch {fixed}",
        annotation_position="bottom right",
    )
    speed = plan["predicted_speedup"]

    def span(key: str) -> str:
        return f" ({interval_text(*speed[key + '_interval'])})" if speed.get(key + "_interval") else ""

    subtitle = (
        f"schedule {plan['spec']}: predicted {speed['over_baseline']:.2f}×{span('over_baseline')} over the "
        f"baseline, {speed['over_best_fixed']:.2f}×{span('over_best_fixed')} over the best fixed batch"
    )
    apply_layout(fig, title, x_title, y_title, revision, subtitle)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(type="log")
    return fig
