"""The Calibration page and `largestep calibration`, prepared without Streamlit: every verification in the home,
predicted against measured (the speedup and its two factors), the noise model's correction each workload and
device has earned, and the comparison behind any one point.

A verification is an autopilot's comparison, or a `largestep compare` of a recommendation's baseline and
recommended runs (:mod:`largestep.plan.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pandas as pd
import plotly.graph_objects as go

from .. import store
from ..errors import UsageError
from ..format import DASH
from ..home import Home
from ..plan.calibration import correction_from
from ..plan.compare import comparison_table
from ..plan.steps import StepsModel
from ..plan.verdict import interval_text
from .charts.calibration import calibration_figure

__all__ = [
    "START_MESSAGE",
    "CalibrationView",
    "load_calibration",
    "calibration_view",
    "calibration_rows",
    "corrections",
    "VerificationView",
    "verification_view",
    "runs_link",
    "selected_from_chart",
    "verification_labels",
]

START_MESSAGE = (
    "No verifications yet. Every autopilot that trains its arms records one (predicted against "
    "measured speedup, and each factor): press **Profile & train** on the Overview, or run `largestep "
    "autopilot --workload fraud-gru`. `largestep compare` of a recommendation's baseline and recommended "
    "runs records one too."
)


@dataclass
class CalibrationView:
    points: list[dict]  # the verifications table's rows, oldest first (comparison included)
    table: pd.DataFrame
    corrections: list[dict]  # per workload and device: the correction a recommendation there uses
    figure: go.Figure
    workloads: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.points


def load_calibration(home: Home, workload: str | None = None, device: str | None = None) -> CalibrationView:
    """Ingest, then every verification (of ``workload`` on ``device``, its id or name, where given).

    UsageError when a filter matches nothing although there are verifications: it names the ones there are."""
    store.ingest(home)
    with store.connect(home) as con:
        every = store.list_verifications(con)
    return calibration_view(every, workload, device)


def calibration_view(every: list[dict], workload: str | None = None, device: str | None = None) -> CalibrationView:
    workloads = sorted({p["workload"] for p in every if p.get("workload")})
    devices = sorted(
        {p.get("device_name") or p.get("device_id") for p in every if p.get("device_name") or p.get("device_id")}
    )
    if workload and every and workload not in workloads:
        raise UsageError(f"no verifications of workload {workload!r} here; verified: {', '.join(workloads)}")
    points = [p for p in every if not workload or p.get("workload") == workload]
    if device and points and not any(device in (p.get("device_id"), p.get("device_name")) for p in points):
        raise UsageError(f"no verifications on device {device!r} here; verified on: {', '.join(devices)}")
    points = [p for p in points if not device or device in (p.get("device_id"), p.get("device_name"))]
    return CalibrationView(
        points=points,
        table=pd.DataFrame(calibration_rows(points)),
        corrections=corrections(points),
        figure=calibration_figure(points),
        workloads=workloads,
        devices=devices,
    )


def _ratio(value, low=None, high=None, bound: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{bound} {value:.2f}×" if bound else f"{value:.2f}×"
    if (low is not None or high is not None) and not bound:
        text += f" ({interval_text(low, high)})"
    return text


def _critical(point: dict) -> str:
    value = point.get("implied_b_crit")
    if value is None:
        return DASH
    bound = point.get("steps_bound")
    body = "unbounded" if math.isinf(value) else f"{value:,.0f}"
    low, high = point.get("b_crit_low"), point.get("b_crit_high")
    span = f" ({'?' if low is None else f'{low:,.0f}'}–{'∞' if high is None or math.isinf(high) else f'{high:,.0f}'})"
    return (f"{bound} " if bound else "") + body + ("" if bound else span)


def calibration_rows(points: list[dict]) -> list[dict]:
    """One row per verification, in the units people read."""
    rows = []
    for p in points:
        rows.append(
            {
                "verification": p["id"],
                "workload": p.get("workload"),
                "device": p.get("device_name") or p.get("device_id"),
                "source": p.get("source")
                + (f" {p['autopilot_id']}" if p.get("autopilot_id") else "")
                + (f" (attempt {p['attempt']})" if (p.get("attempt") or 1) > 1 else ""),
                "batch": f"{p.get('baseline_batch')} → {p.get('batch_size')}",
                "rule": p.get("rule"),
                "speedup predicted": _ratio(
                    p.get("predicted_speedup"), p.get("predicted_low"), p.get("predicted_high")
                ),
                "speedup raw model": _ratio(p.get("raw_speedup"), p.get("raw_low"), p.get("raw_high")),
                "speedup measured": _ratio(
                    p.get("measured_speedup"), p.get("measured_low"), p.get("measured_high"), p.get("measured_bound")
                ),
                "steps predicted": _ratio(
                    p.get("predicted_steps"), p.get("predicted_steps_low"), p.get("predicted_steps_high")
                ),
                "steps measured": _ratio(
                    p.get("measured_steps"),
                    p.get("measured_steps_low"),
                    p.get("measured_steps_high"),
                    p.get("steps_bound"),
                ),
                "time/step predicted": _ratio(
                    p.get("predicted_step_time"), p.get("predicted_step_time_low"), p.get("predicted_step_time_high")
                ),
                "time/step measured": _ratio(
                    p.get("measured_step_time"), p.get("measured_step_time_low"), p.get("measured_step_time_high")
                ),
                "B_crit implied": _critical(p),
                "B_crit / B_simple": _ratio(
                    p.get("ratio"), p.get("ratio_low"), p.get("ratio_high"), p.get("steps_bound")
                ),
                "verdict": p.get("verdict") or DASH,
                "quality": p.get("quality") or DASH,
                "verified": "yes" if p.get("verified") else "no",
            }
        )
    return rows


def corrections(points: list[dict]) -> list[dict]:
    """Per workload and device, the correction a recommendation there ranks on (:func:`correction_from`): as a
    factor of B_simple where the verifications had a noise estimate, as a critical batch where none had."""
    out = []
    pairs = sorted({(p.get("workload"), p.get("device_id")) for p in points}, key=lambda pair: tuple(map(str, pair)))
    for workload, device_id in pairs:
        mine = [p for p in points if (p.get("workload"), p.get("device_id")) == (workload, device_id)]
        relative = correction_from(mine, StepsModel.from_estimate(1.0))
        absolute = correction_from(mine, StepsModel.perfect())
        used = relative or absolute
        name = next((p.get("device_name") for p in mine if p.get("device_name")), device_id)
        out.append(
            {
                "workload": workload,
                "device_id": device_id,
                "device": name,
                "verifications": len(mine),
                "learned_from": used.verifications if used else 0,
                "factor": used.factor if relative else None,
                "factor_interval": relative.interval if relative else None,
                "b_crit": absolute.factor if absolute else None,
                "b_crit_interval": absolute.interval if absolute else None,
                "text": (
                    f"{workload} on {name}: {used.describe()}"
                    if used
                    else f"{workload} on {name}: {len(mine)} verification(s), none measured the steps factor "
                    f"(no correction yet)"
                ),
            }
        )
    return out


def runs_link(point: dict) -> str:
    """The Runs page with the verification's runs charted and compared (its address names them)."""
    runs = list(point.get("baseline_runs") or []) + list(point.get("recommended_runs") or [])
    return "runs?" + urlencode([("run", r) for r in runs])


@dataclass
class VerificationView:
    id: str
    title: str
    learned: str | None
    comparison: pd.DataFrame | None
    link: str
    failed_why: str | None


def verification_view(view: CalibrationView, verification_id: str | None) -> VerificationView | None:
    """The comparison behind one point: its table (as the Runs page shows it) and a link to its runs."""
    point = next((p for p in view.points if p["id"] == verification_id), None)
    if point is None:
        return None
    comparison = point.get("comparison") or {}
    table = pd.DataFrame(comparison_table(comparison)) if comparison.get("groups") else None
    title = (
        f"Verification `{point['id']}` · {point.get('workload')} on "
        f"{point.get('device_name') or point.get('device_id')}: batch "
        f"{point.get('baseline_batch')} → {point.get('batch_size')} ({point.get('rule')} rule), predicted "
        f"{_ratio(point.get('predicted_speedup'), point.get('predicted_low'), point.get('predicted_high'))}, "
        f"measured {_ratio(point.get('measured_speedup'), point.get('measured_low'), point.get('measured_high'), point.get('measured_bound'))}"
    )
    return VerificationView(
        id=point["id"],
        title=title,
        learned=point.get("learned"),
        comparison=table,
        link=runs_link(point),
        failed_why=point.get("failed_why"),
    )


def verification_labels(view: CalibrationView) -> dict[str, str]:
    """Verification id -> what a picker shows: "fraud-gru · cpu · 128 → 1024 (ver-…)"."""
    return {
        p["id"]: f"{p.get('workload')} · {p.get('device_name') or p.get('device_id')} · "
        f"{p.get('baseline_batch')} → {p.get('batch_size')} ({p['id']})"
        for p in reversed(view.points)
    }


def selected_from_chart(event) -> str | None:
    """The verification of the point clicked on the chart (Streamlit's selection event), if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None
