"""What every figure shares: colours, the layout, the empty "no data" figure, the batch-size axis,
and the cleaning of points into numbers."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ...format import short_count

__all__ = [
    "NO_DATA",
    "HEIGHT",
    "BLUE",
    "ORANGE",
    "GREY",
    "RED",
    "GREEN",
    "ok_points",
    "numeric",
    "flag",
    "revision_of",
    "apply_layout",
    "empty_figure",
    "batch_axis",
]

NO_DATA = "no data"
HEIGHT = 380  # pixels, every single-panel figure
BLUE, ORANGE, GREY, RED, GREEN = "#1f77b4", "#ff7f0e", "#7f7f7f", "#d62728", "#2ca02c"


def ok_points(points: pd.DataFrame | None, *required: str) -> pd.DataFrame:
    """The measured points (status "ok") with a value in every ``required`` column, by batch."""
    if points is None or len(points) == 0 or "batch_size" not in points:
        return pd.DataFrame(columns=["batch_size", *required])
    frame = points
    if "status" in frame:
        frame = frame[frame["status"] == "ok"]
    frame = frame.copy()
    for column in ("batch_size", *required):
        frame[column] = numeric(frame, column)
    frame = frame.dropna(subset=["batch_size", *required])
    frame = frame[frame["batch_size"] > 0]
    return frame.sort_values("batch_size").reset_index(drop=True)


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (nullable integers, None and missing columns become NaN)."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def flag(frame: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column with None/NA read as False."""
    if column not in frame:
        return pd.Series(False, index=frame.index, dtype=bool)
    return frame[column].map(lambda v: bool(v) if v is not None and not pd.isna(v) else False).astype(bool)


def revision_of(kind: str, frame: pd.DataFrame | None, id_column: str, uirevision: str | None) -> str:
    """Stable while one profile refreshes (zoom kept); new when another profile is shown."""
    if uirevision:
        return uirevision
    owner = ""
    if frame is not None and id_column in frame and len(frame):
        owner = str(frame[id_column].iloc[0])
    return f"{kind}:{owner}"


def apply_layout(
    fig: go.Figure, title: str, x_title: str | None, y_title: str | None, revision: str, subtitle: str | None = None
) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text=subtitle) if subtitle else None),
        uirevision=revision,
        height=HEIGHT,
        hovermode="closest",
        margin=dict(l=60, r=20, t=70 if subtitle else 50, b=50),
        # inside the top-left corner: on these charts the data rises to the right, leaving it empty
        legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.75)"),
        showlegend=sum(1 for trace in fig.data if trace.showlegend is not False) > 1,
    )
    if x_title is not None:
        fig.update_layout(xaxis_title=x_title)
    if y_title is not None:
        fig.update_layout(yaxis_title=y_title)
    return fig


def empty_figure(title: str, x_title: str, y_title: str, revision: str, message: str = NO_DATA) -> go.Figure:
    fig = go.Figure()
    apply_layout(fig, title, x_title, y_title, revision)
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=16, color=GREY)
    )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def batch_axis(fig: go.Figure, batch_sizes: Iterable[float], **where) -> None:
    """A log batch-size axis ticked at the measured sizes (powers of two read as such)."""
    ticks = sorted({int(b) for b in batch_sizes})
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[short_count(b) for b in ticks], **where)
