"""One self-contained HTML file: the profile, the recommendation, and the runs that verified it.

Every chart is an interactive plotly figure; plotly.js is inlined once in the page's head, so the
file works offline (mailed, attached to a ticket, opened years later) and holds no external
script. :func:`collect_report` reads the store; :func:`render_report` is pure and builds the
text from that data alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go

from .. import curve, store
from ..about import __version__
from ..errors import UsageError
from ..format import format_count, format_number
from ..home import Home
from ..plan.compare import compare_groups, comparison_table
from ..plan.recommend import accepted_load_note, model_text
from ..plan.verdict import headline_tone, interval_text
from . import profiles as views
from .charts import profile as charts
from .charts import recommend as reccharts
from .charts import runs as runcharts
from .recommend import candidates_table, highlight_roles

__all__ = ["ReportData", "collect_report", "render_report", "build_report", "error_page"]

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
EMPTY_HOME = "nothing to report yet: run `largestep profile --workload W` (and `largestep recommend`) first"


@dataclass
class ReportData:
    profile: dict
    points: pd.DataFrame
    recommendation: dict | None = None
    runs: list[dict] = field(default_factory=list)  # baseline and recommended runs of the recommendation
    evaluations: pd.DataFrame | None = None  # their validation losses (store.run_evaluations)
    autopilot: dict | None = None  # the autopilot that made the recommendation, if any


def collect_report(home: Home, recommendation_id: str | None = None, profile_id: str | None = None) -> ReportData:
    """Everything the report shows, read from the store. UsageError for an unknown id or an empty home.

    ``recommendation_id`` may be ``latest``. Without it, a given profile brings its newest
    recommendation (if any); with neither, the newest recommendation and its profile, or the
    newest profile alone.
    """
    with store.connect(home) as con:
        rec = None
        if recommendation_id is not None:
            rec = store.load_recommendation(con, recommendation_id)
            if rec is None:
                raise UsageError(
                    "no recommendation yet: run `largestep recommend` first"
                    if recommendation_id == "latest"
                    else f"no recommendation {recommendation_id!r}; see `largestep recommendations`"
                )
        if profile_id is not None:
            profile = store.load_profile(con, profile_id)
            if profile is None:
                raise UsageError(
                    "no profile yet: run `largestep profile --workload W` first"
                    if profile_id == "latest"
                    else f"no profile {profile_id!r}; see `largestep profiles`"
                )
            if rec is None:
                mine = store.list_recommendations(con)
                mine = mine[mine["profile_id"] == profile["id"]]
                rec = store.load_recommendation(con, str(mine["id"].iloc[0])) if len(mine) else None
        else:
            if rec is None:
                rec = store.load_recommendation(con, "latest")
            profile = (
                store.load_profile(con, rec["profile_id"]) if rec is not None else store.load_profile(con, "latest")
            )
            if profile is None:
                raise UsageError(
                    EMPTY_HOME
                    if rec is None
                    else f"the profile {rec['profile_id']} of recommendation {rec['recommendation_id']} "
                    f"is no longer stored"
                )
        points = store.profile_points(con, profile["id"])
        runs, evals, autopilot = [], None, None
        if rec is not None:
            runs = store.frame_records(store.recommendation_runs(con, rec["recommendation_id"]))
            evals = store.run_evaluations(con, [r["id"] for r in runs]) if runs else None
            autopilot = store.autopilot_for_recommendation(con, rec["recommendation_id"])
    return ReportData(
        profile=profile, points=points, recommendation=rec, runs=runs, evaluations=evals, autopilot=autopilot
    )


def build_report(home: Home, recommendation_id: str | None = None, profile_id: str | None = None) -> str:
    """The HTML report for a recommendation or a profile (see :func:`collect_report`)."""
    return render_report(collect_report(home, recommendation_id, profile_id))


def error_page(message: str) -> str:
    """A minimal page in place of a report that could not be built."""
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>largestep report</title></head>"
        f"<body><h1>largestep report</h1><p>The report could not be built: {_e(message)}</p></body></html>\n"
    )


# -- rendering -----------------------------------------------------------------------------------


def render_report(data: ReportData, generated_at: datetime | None = None) -> str:
    """The whole page: head (styles, plotly.js once), then the profile, recommendation, runs."""
    from plotly.offline import get_plotlyjs

    generated_at = generated_at or datetime.now(timezone.utc)
    profile, rec = data.profile, data.recommendation
    title = f"largestep report: {profile.get('workload')} on {profile.get('device_name') or profile.get('device_kind')}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>Generated {_e(generated_at.strftime('%Y-%m-%d %H:%M UTC'))} by largestep "
        f"{_e(__version__)} · profile <code>{_e(profile['id'])}</code>"
        + (f" · recommendation <code>{_e(rec['recommendation_id'])}</code>" if rec else "")
        + "</p>",
    ]
    if rec is not None:
        body.append(_summary(rec, data))
    body.append(_profile_section(profile, data.points))
    if rec is not None:
        body.append(_recommendation_section(rec))
        body.append(_runs_section(rec, data))
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _summary(rec: dict, data: ReportData) -> str:
    speed, base = rec["predicted_speedup"], rec["baseline"]
    per_day = rec.get("experiments_per_gpu_day") or {}
    cards = [
        ("Recommended batch", f"{rec['batch_size']}", f"baseline {base['batch_size']}"),
        ("Learning rate", f"{rec['learning_rate']:.4g}", f"{rec['rule']} rule from {base['learning_rate']:.4g}"),
        (
            "Warm-up",
            f"{rec['warmup_steps']} step{'' if rec['warmup_steps'] == 1 else 's'}",
            f"{rec['warmup_samples']:,} samples",
        ),
        (
            "Predicted speedup",
            f"{speed['time_to_target']:.2f}×",
            (f"{speed['coverage']:.0%} prediction interval " if speed.get("coverage") else "interval ")
            + interval_text(*speed["time_to_target_interval"])
            + f"; {speed['throughput']:.2f}× in throughput"
            if speed.get("time_to_target_interval")
            else f"{speed['throughput']:.2f}× in throughput",
        ),
    ]
    if per_day.get("baseline") and per_day.get("recommended"):
        cards.append(
            (
                "Runs per GPU-day",
                format_count(per_day["recommended"]),
                f"{format_count(per_day['baseline'])} at the baseline",
            )
        )
    out = ["<section id='summary'><div class='cards'>"]
    for label, value, note in cards:
        out.append(
            f"<div class='card'><div class='label'>{_e(label)}</div><div class='value'>{_e(value)}</div>"
            f"<div class='note'>{_e(note)}</div></div>"
        )
    out.append("</div>")
    headline = (data.autopilot or {}).get("headline") or {}
    if headline.get("text"):  # its colour follows its verdict, as on the Overview
        tone = headline.get("tone") or headline_tone(headline.get("verdict"), headline.get("quality"))
        out.append(f"<p class='headline {tone}'>Measured: {_e(headline['text'])}</p>")
    out.append("</section>")
    return "\n".join(out)


def _profile_section(profile: dict, points: pd.DataFrame) -> str:
    caption = views.profile_caption(profile).replace("**", "").replace("`", "")
    figures = [
        charts.step_time_figure(points),
        charts.throughput_figure(points, profile.get("saturation_batch")),
        charts.memory_figure(
            points,
            profile.get("memory_fit_intercept_bytes"),
            profile.get("memory_fit_slope_bytes"),
            profile.get("memory_budget_bytes"),
        ),
    ]
    out = ["<section id='profile'><h2>Profile</h2>", f"<p>{_e(caption)}</p>"]
    untrusted = curve.refusal(profile)
    if untrusted:  # shown where the curve is, never as if it were sound
        out.append(f"<p><b>{_e(untrusted)}</b></p>")
    out.append("<div class='grid'>")
    out += [_figure(fig, f"chart-profile-{i}") for i, fig in enumerate(figures)]
    out.append("</div>")
    out.append(_table(views.points_table(points)))
    out.append("</section>")
    return "\n".join(out)


def _recommendation_section(rec: dict) -> str:
    noise = model_text(rec)  # the noise model ranked on: an estimate or a curve, and its correction
    out = [
        "<section id='recommendation'><h2>Recommendation</h2>",
        *([f"<p><b>{_e(accepted_load_note(rec['accepted_load']))}</b></p>"] if rec.get("accepted_load") else []),
        f"<p>Batch <b>{rec['batch_size']}</b> at learning rate <b>{rec['learning_rate']:.4g}</b> "
        f"({_e(rec['rule'])} rule), optimizer {_e(rec.get('optimizer'))}, warm-up {rec['warmup_steps']} step{'' if rec['warmup_steps'] == 1 else 's'}; "
        f"{_e(noise)}; saturation batch {_e(rec.get('saturation_batch'))}.</p>",
        _figure(reccharts.time_to_target_figure(rec), "chart-time-to-target"),
        "<h3>Candidates</h3>",
        highlight_roles(candidates_table(rec)).hide(axis="index").to_html(),
        "<h3>Why</h3><ul>",
    ]
    out += [f"<li>{_e(reason)}</li>" for reason in rec.get("reasons") or []]
    out.append("</ul></section>")
    return "\n".join(out)


def _runs_section(rec: dict, data: ReportData) -> str:
    baseline = [r for r in data.runs if r.get("role") == "baseline"]
    recommended = [r for r in data.runs if r.get("role") == "recommended"]
    out = ["<section id='runs'><h2>Verification runs</h2>"]
    if not baseline or not recommended:
        out.append(
            "<p class='empty'>No baseline and recommended training runs for this recommendation yet: run "
            "<code>largestep autopilot</code>, or train both with "
            f"<code>largestep train ... </code> and the recommendation {_e(rec['recommendation_id'])}.</p>"
            "</section>"
        )
        return "\n".join(out)
    evals = (
        data.evaluations
        if data.evaluations is not None
        else pd.DataFrame(columns=["run_id", "step", "train_time_s", "wall_time_s", "val_loss"])
    )
    stored = (data.autopilot or {}).get("comparison") or {}  # judged with the autopilot's own tolerances
    tolerances = (
        {"tolerance": stored["tolerance"], "quality_tolerance": stored["quality"]["tolerance_share"]}
        if stored.get("tolerance") is not None and (stored.get("quality") or {}).get("tolerance_share") is not None
        else {}
    )
    try:
        comparison = compare_groups([("baseline", baseline), ("recommended", recommended)], evals, **tolerances)
    except UsageError as exc:
        comparison = {}
        out.append(f"<p class='empty'>{_e(exc)}</p>")
    else:
        out.append(
            f"<p>Target: the baseline's best validation loss {comparison['baseline_best_val_loss']:.4f} "
            f"loosened by {comparison['tolerance']:.0%} → {comparison['target_val_loss']:.4f}; times are "
            f"{_e(comparison['time_basis'])}; a quality difference within "
            f"{comparison['quality']['tolerance_share']:.0%} of the baseline's counts as none.</p>"
        )
        if comparison["conditions"]["differed"]:
            out.append(f"<p class='warning'>Conditions differed: {_e(comparison['conditions']['text'])}.</p>")
        out.append(_table(pd.DataFrame(comparison_table(comparison))))
    groups = {"baseline": [r["id"] for r in baseline], "recommended": [r["id"] for r in recommended]}
    out.append(
        _figure(
            runcharts.comparison_figure(
                evals, groups, "baseline", comparison.get("target_val_loss"), uirevision="report"
            ),
            "chart-val-loss",
        )
    )
    out.append("</section>")
    return "\n".join(out)


def _figure(fig: go.Figure, div_id: str) -> str:
    """A figure as a div and its script; plotly.js itself is in the page's head, once."""
    return (
        "<div class='figure'>"
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)
        + "</div>"
    )


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="—", border=0, classes="data", escape=True, float_format=format_number)


def _e(value) -> str:
    return html.escape("—" if value is None else str(value))


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; background: white; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2.2rem; }
.meta { color: #666; font-size: 0.9rem; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #e3e3e3; border-radius: 8px; padding: 10px 16px; min-width: 160px; }
.card .label { color: #666; font-size: 0.85rem; }
.card .value { font-size: 1.6rem; font-weight: 600; }
.card .note { color: #888; font-size: 0.8rem; }
.headline { font-weight: 600; padding: 8px 12px; border-radius: 6px; }
.headline.good { background: #e8f5e9; color: #1b5e20; }
.headline.bad { background: #fdecea; color: #8e1b10; }
.headline.neutral { background: #fff8e1; color: #6d4c00; }
/* fixed tracks: each chart is drawn (and sized) before the next one exists in the page */
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
@media (max-width: 1000px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.figure { min-height: 380px; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 8px 0 16px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
code { background: #f3f3f3; padding: 0 4px; border-radius: 3px; }
.empty { color: #777; font-style: italic; }
.warning { color: #8a5a00; font-weight: 600; }
"""
