"""The Overview page's logic, without Streamlit: the workload picker, the "Profile & train" launch,
and what an autopilot (running or finished) looks like phase by phase, down to its headline.

The page reads its widgets, calls one function here and renders the dataclasses it gets back.
Everything an autopilot shows comes from the store (after an ingest) and, while it runs, from its
status file, so a closed tab loses nothing: reopening reads the same place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from .. import jobs, store
from ..errors import LargestepError, UsageError
from ..home import Home
from ..jobs.autopilot import ARMS, PHASES, SCHEDULE_ARMS, AutopilotConfig
from ..plan import compare
from ..plan.recommend import accepted_load_note
from ..plan.verdict import headline_tone, interval_text, quality_words
from .widgets import TABLE_WORKLOAD, Metric, cancel, device_options

__all__ = [
    "START_MESSAGE",
    "PHASE_HELP",
    "MAX_REPEATS",
    "WorkloadChoice",
    "workload_choices",
    "AutopilotForm",
    "autopilot_request",
    "submit_autopilot",
    "AutopilotChoice",
    "autopilot_choices",
    "PhaseView",
    "AutopilotView",
    "autopilot_view",
    "headline_metrics",
    "unfinished_runs",
    "cancel",
    "device_options",
    "restart_autopilot",
]

START_MESSAGE = (
    "Nothing measured here yet. Pick a workload above and press **Profile & train**: largestep "
    "profiles step time against batch size, estimates the gradient noise scale, recommends a "
    "larger batch with a scaled learning rate, then trains the baseline and the recommendation "
    "and compares them. From a terminal: `largestep autopilot --workload fraud-gru`."
)
MAX_REPEATS = 20  # seeds per arm the form accepts; more is a job for the CLI

PHASE_HELP = {
    "profile": "step time, throughput and memory against batch size",
    "noise scale": "the gradient noise scale, from gradient norms at two batch sizes",
    "recommendation": "a larger batch and its learning rate, from the profile and the noise scale",
    "training runs": "the baseline and the recommendation, seed by seed in turn, so the machine's drift falls on both",
    "comparison": "time to the baseline's validation loss (Kaplan-Meier median, a bootstrap interval), and the "
    "quality difference with its interval",
}
LIVE_STATES = (jobs.PENDING, jobs.RUNNING)


# -- the workload picker -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadChoice:
    name: str  # what the picker shows and the user picks
    spec: str  # what the loader is given: a built-in or entry point name, or a path/module spec
    source: str  # "builtin" | "entry point" | "config"
    description: str = ""
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        kind = {"builtin": "built-in", "config": "largestep.toml"}.get(self.source, self.source)
        return f"{self.name} — {self.description} ({kind})" if self.description else f"{self.name} ({kind})"


def workload_choices(folder: str | None = None) -> tuple[dict[str, WorkloadChoice], list[str]]:
    """Built-ins, entry points and the project's configured workloads, by name; and problems to show.

    A configured name that a built-in or entry point already uses is left out (with a problem
    saying so), as the loader would pick the built-in. A broken config file is a problem too,
    not an error: the built-ins stay usable.
    """
    from ..workloads import list_workloads
    from ..workloads.config import configured_workloads

    choices: dict[str, WorkloadChoice] = {}
    problems: list[str] = []
    for row in list_workloads():
        choices.setdefault(
            row["name"],
            WorkloadChoice(
                row["name"],
                row.get("spec") or row["name"],
                row["source"],
                row.get("description") or "",
                dict(row.get("options") or {}),
            ),
        )
    try:
        configured = configured_workloads(folder)
    except LargestepError as exc:
        problems.append(str(exc))
        configured = []
    for row in configured:
        known = choices.get(row["name"])
        if known is not None and (known.source, known.spec) != ("config", row["spec"]):
            problems.append(
                f"the configured workload {row['name']!r} has the name of a {known.source} workload; "
                f"give it another name in the config file"
            )
            continue
        choices[row["name"]] = WorkloadChoice(
            row["name"], row["spec"], "config", row.get("description") or "", dict(row.get("options") or {})
        )
    return choices, problems


# -- launching -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutopilotForm:
    """What the Overview's launcher collects, as the user set it."""

    workload: str  # a name from workload_choices
    device: str = "cpu"
    repeats: int = 3  # seeds per arm (baseline, recommended)
    epochs: float | None = None  # None: the workload's own
    data_path: str = ""  # the table workload only: a CSV or Parquet file (data, never code)
    label: str = ""  # the table workload only: the label column
    compile: bool = False  # torch.compile the model in every step of the loop
    both_arms: bool = False  # train both arms even when the recommendation is the baseline
    schedule_arm: bool = False  # and a third: the batch schedule planned from a noise curve
    until_verified: bool = False  # a failed verification: learn, and try the next pair the corrected model ranks


def autopilot_request(form: AutopilotForm, choices: dict[str, WorkloadChoice]) -> tuple[str, dict, AutopilotConfig]:
    """``(spec, options, config)`` for :func:`largestep.jobs.start.start_autopilot`; only listed workloads pass."""
    choice = choices.get(form.workload)
    if choice is None:
        raise UsageError(f"unknown workload {form.workload!r}; choose one of {', '.join(choices) or 'none'}")
    options = dict(choice.options)
    if choice.spec == TABLE_WORKLOAD and choice.source == "builtin":
        if not form.data_path.strip():
            raise UsageError("the table workload needs a data file: give the path of a CSV or Parquet file")
        if not form.label.strip():
            raise UsageError("the table workload needs the name of the label column")
        options.update(path=form.data_path.strip(), label=form.label.strip())
    repeats = form.repeats
    if isinstance(repeats, float) and repeats.is_integer():
        repeats = int(repeats)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise UsageError(f"repeats must be a whole number from 1 to {MAX_REPEATS}, not {form.repeats!r}")
    epochs = form.epochs
    if epochs is not None and (not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0):
        raise UsageError(f"epochs must be a positive number (or empty for the workload's own), not {epochs!r}")
    return (
        choice.spec,
        options,
        AutopilotConfig(
            repeats=repeats,
            epochs=float(epochs) if epochs else None,
            compile=bool(form.compile),
            arms=_arms(form),
            until_verified=bool(form.until_verified),
        ),
    )


def _arms(form: AutopilotForm) -> tuple[str, ...] | None:
    """The arms the form asks for: a schedule arm trains all three; both arms, the two; else the default."""
    if form.schedule_arm:
        return SCHEDULE_ARMS
    return ARMS if form.both_arms else None


def submit_autopilot(home: Home, form: AutopilotForm, choices: dict[str, WorkloadChoice]) -> str:
    """Check the form, start the autopilot job, ingest (so the page sees it at once); its id."""
    from ..jobs import start as actions  # imports torch and the workloads: only when something is launched

    spec, options, config = autopilot_request(form, choices)
    job_id = actions.start_autopilot(home, spec, options, form.device, config)
    store.ingest(home)
    return job_id


# -- one autopilot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutopilotChoice:
    id: str
    label: str  # never changes over the autopilot's life (a select box keeps old labels)
    live: bool


def autopilot_choices(home: Home) -> list[AutopilotChoice]:
    """Every autopilot, newest first, after reading the spools (also those started from the CLI)."""
    store.ingest(home)
    with store.connect(home) as con:
        frame = store.list_jobs(con, kind="autopilot")
    out = []
    for row in frame.to_dict(orient="records"):
        created = pd.Timestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M") if not pd.isna(row["created_at"]) else "?"
        out.append(
            AutopilotChoice(
                row["id"],
                f"{row.get('workload') or '?'} · {row.get('device') or '?'} · {created} ({row['id']})",
                row["state"] in LIVE_STATES,
            )
        )
    return out


@dataclass(frozen=True)
class PhaseView:
    name: str
    status: str  # "done" | "running" | "waiting" | "failed" | "cancelled" | "not run"
    detail: str = ""

    @property
    def icon(self) -> str:
        return {
            "done": ":material/check_circle:",
            "running": ":material/progress_activity:",
            "waiting": ":material/schedule:",
            "failed": ":material/error:",
            "cancelled": ":material/cancel:",
        }.get(self.status, ":material/remove:")


@dataclass
class AutopilotView:
    id: str
    workload: str
    device: str
    state: str
    live: bool  # still pending or running: refresh it
    progress: float  # 0..1 over the six phases
    phase: str  # the phase now (or "queued", "done")
    phases: list[PhaseView]
    caption: str
    error: str | None = None
    recommendation: str | None = None  # "batch 512 at lr 0.016 (baseline 32 at 0.001), predicted 3.1x"
    headline: dict | None = None  # largestep.jobs.autopilot.headline's dict, once compared
    metrics: list[Metric] = field(default_factory=list)
    comparison: pd.DataFrame | None = None
    runs: pd.DataFrame | None = None
    run_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # runs that did not finish, and so weigh nothing
    untrusted: str | None = None  # it stopped: its profile could not be trusted and the machine never quietened
    accepted_load: str | None = None  # its recommendation came from a profile accepted though untrusted

    @property
    def tone(self) -> str:
        """The headline box's look, from its verdict: "good" (a success box) only when the recommendation was
        faster beyond doubt with its quality not worse; "bad" (an error box) when it was slower, worse or its
        seeds failed; "neutral" (a caution) otherwise, and for a headline stored before verdicts were."""
        headline = self.headline or {}
        return headline.get("tone") or headline_tone(headline.get("verdict"), headline.get("quality"))

    @property
    def good_news(self) -> bool:
        return self.tone == "good"


def autopilot_view(home: Home, autopilot_id: str | None = None, ingest: bool = True) -> AutopilotView | None:
    """Everything the Overview shows of one autopilot (the newest when ``autopilot_id`` is None)."""
    if ingest:
        store.ingest(home)
    with store.connect(home) as con:
        if autopilot_id is None:
            newest = store.list_jobs(con, kind="autopilot").head(1)
            autopilot_id = str(newest["id"].iloc[0]) if len(newest) else None
        job = store.get_job(con, autopilot_id) if autopilot_id else None
        if job is None or job.get("kind") != "autopilot":
            return None
        row = store.load_autopilot(con, job["id"]) or {}
        rec = store.load_recommendation(con, row["recommendation_id"]) if row.get("recommendation_id") else None
    status = jobs.read_status(home.job_dir(job["id"])) or {}
    state = job["state"]
    live = state in LIVE_STATES
    phase = (status.get("phase") if live else None) or row.get("phase") or job.get("phase") or "queued"
    if state == jobs.FINISHED:
        phase = "done"
    progress = 1.0 if state == jobs.FINISHED else float(status.get("progress") or job.get("progress") or 0.0)
    phases = _phases(state, phase, status if live else {}, row)
    view = AutopilotView(
        id=job["id"],
        workload=str(row.get("workload") or job.get("workload") or "?"),
        device=str(job.get("device") or "?").removeprefix("autopilot-"),
        state=state,
        live=live,
        progress=max(0.0, min(1.0, progress)),
        phase=phase,
        phases=phases,
        caption=_caption(job, state),
        error=job.get("error") if state not in (jobs.FINISHED, *LIVE_STATES) else None,
        recommendation=_recommendation_text(rec) if rec else None,
        run_ids=list(row.get("baseline_runs") or []) + list(row.get("recommended_runs") or []),
        untrusted=row.get("untrusted"),
        accepted_load=accepted_load_note(rec["accepted_load"]) if rec and rec.get("accepted_load") else None,
    )
    if view.untrusted and view.error == view.untrusted:
        view.error = None  # said in its warning box, with the button to profile again
    headline, comparison = row.get("headline"), row.get("comparison")
    if headline:
        view.headline = headline
        view.metrics = headline_metrics(headline)
    if comparison and comparison.get("groups"):
        view.comparison = pd.DataFrame(compare.comparison_table(comparison))
        view.runs = pd.DataFrame(compare.comparison_runs(comparison))
        view.warnings = unfinished_runs(comparison)
    return view


def restart_autopilot(home: Home, autopilot_id: str) -> str:
    """Start the autopilot again as it was asked for (its workload, device and config): it profiles afresh,
    and waits for a quiet window again should that profile not be trusted either. Returns the new id."""
    from ..jobs import start as actions  # imports torch and the workloads: only when something is launched

    with store.connect(home) as con:
        job = store.get_job(con, autopilot_id)
    spec = (job or {}).get("spec")
    spec = json.loads(spec) if isinstance(spec, str) else (spec or {})
    params = spec.get("params") or {}
    if not job or job.get("kind") != "autopilot" or not params.get("workload"):
        raise UsageError(f"no autopilot {autopilot_id!r} to start again")
    known = {k: v for k, v in (params.get("autopilot") or {}).items() if k in AutopilotConfig.__dataclass_fields__}
    if known.get("arms") is not None:
        known["arms"] = tuple(known["arms"])
    job_id = actions.start_autopilot(
        home, params["workload"], params.get("options") or {}, params["device"], AutopilotConfig(**known)
    )
    store.ingest(home)
    return job_id


def _caption(job: dict, state: str) -> str:
    created = pd.Timestamp(job["created_at"]).strftime("%Y-%m-%d %H:%M") if job.get("created_at") else "?"
    return (
        f"**{job.get('workload') or '?'}** on `{str(job.get('device') or '?').removeprefix('autopilot-')}` · "
        f"autopilot `{job['id']}` · started {created} · {state.lower()}"
    )


def _phases(state: str, phase: str, status: dict, row: dict) -> list[PhaseView]:
    """Each phase done, running, waiting, or (for an ended autopilot) failed, cancelled or not run."""
    if state == jobs.FINISHED:
        current = len(PHASES)
    elif phase in PHASES:
        current = PHASES.index(phase)
    else:
        current = 0 if state not in LIVE_STATES else -1  # queued: nothing started yet
    ended = {jobs.KILLED: "cancelled"}.get(state, "failed")
    out = []
    for index, name in enumerate(PHASES):
        if index < current:
            out.append(PhaseView(name, "done", _done_detail(name, row)))
        elif index == current and state in LIVE_STATES:
            out.append(PhaseView(name, "running", _live_detail(name, status)))
        elif index == current:
            out.append(PhaseView(name, ended, ""))
        else:
            out.append(PhaseView(name, "waiting" if state in LIVE_STATES else "not run", ""))
    return out


def _done_detail(name: str, row: dict) -> str:
    if name == "profile" and row.get("profile_id"):
        return f"profile `{row['profile_id']}`"
    if name == "noise scale" and row.get("noise_id"):
        return f"estimate `{row['noise_id']}`"
    if name == "training runs":
        base, chosen = len(row.get("baseline_runs") or []), len(row.get("recommended_runs") or [])
        return f"{base} baseline and {chosen} recommended runs" if base or chosen else "none: the baseline is kept"
    return ""


def _live_detail(name: str, status: dict) -> str:
    child, detail = status.get("job"), status.get("detail")
    parts = []
    run_ids = status.get("run_ids") or []
    if name == "training runs" and child in run_ids:
        parts.append(f"run {run_ids.index(child) + 1} of {len(run_ids)}")
    if child:
        parts.append(f"job `{child}`")
    if detail and detail != "done":
        parts.append(str(detail))
    return " · ".join(parts)


def _recommendation_text(rec: dict) -> str:
    base = rec.get("baseline") or {}
    speed = rec.get("predicted_speedup") or {}
    predicted = speed.get("time_to_target")
    text = (
        f"batch **{rec['batch_size']}** at learning rate **{rec['learning_rate']:.3g}** "
        f"(baseline {base.get('batch_size')} at {base.get('learning_rate', float('nan')):.3g}, {rec.get('rule', 'linear')} rule)"
    )
    if predicted is not None:
        text += f"; predicted {predicted:.2f}× the baseline's speed to its validation loss"
        if speed.get("time_to_target_interval"):
            text += f" ({predicted_interval_text(speed)})"
        if speed.get("corrected"):  # ranked on the corrected noise model: the raw prediction beside it
            text += (
                f" on the noise model corrected by {(rec.get('correction') or {}).get('verifications')} "
                f"verification(s); {speed['raw']['time_to_target']:.2f}× on the raw one"
            )
    alike = rec.get("indistinguishable") or []
    if len(alike) > 1:  # how stable the choice is
        text += (
            f"; batches {', '.join(map(str, alike[:-1]))} and {alike[-1]} are indistinguishable here (each "
            f"one's prediction lies within the choice's interval)"
        )
    return text


def predicted_interval_text(speed: dict) -> str:
    """ "90% prediction interval 1.50–3.02×" of a recommendation's ``predicted_speedup``."""
    interval = speed.get("time_to_target_interval")
    if not interval:
        return "no interval"
    coverage = speed.get("coverage")
    return (f"{coverage:.0%} prediction interval " if coverage else "interval ") + interval_text(*interval)


def headline_metrics(headline: dict) -> list[Metric]:
    """The four numbers a person reads first, formatted for st.metric."""
    measured, predicted = headline.get("measured_speedup"), headline.get("predicted_speedup")
    interval = headline.get("measured_speedup_interval")
    quality = headline.get("quality") or {}
    name = quality.get("name") or headline.get("metric") or "metric"
    diff, p = quality.get("difference"), quality.get("p_value")
    verdict = headline.get("verdict") or {}
    if headline.get("kept_baseline"):
        measured_text = "baseline kept"
    elif verdict.get("cell"):
        measured_text = verdict["cell"]
    elif measured is not None:  # a headline stored before verdicts: the ratio and interval, no word
        measured_text = f"{measured:.2f}×" + (f" ({interval_text(*interval)})" if interval else "")
    else:
        measured_text = "not reached"
    predicted_interval = headline.get("predicted_speedup_interval")
    coverage = headline.get("predicted_coverage")
    return [
        Metric(
            "Measured speedup",
            measured_text,
            "baseline's training time to its own validation loss over the recommendation's (Kaplan-Meier medians "
            "over seeds, a run that never reached it counted as at least its whole time; evaluation excluded), "
            f"with a {headline.get('confidence', 0.9):.0%} bootstrap interval for censored data and an exact "
            'test: "faster" only when both say so, and never on fewer than three seeds an arm'
            + (
                f"; reached in {headline.get('reached')} of {headline.get('seeds')} seeds"
                if headline.get("seeds")
                else ""
            ),
        ),
        Metric(
            "Predicted speedup",
            (f"{predicted:.2f}×" + (f" ({interval_text(*predicted_interval)})" if predicted_interval else ""))
            if predicted is not None
            else "—",
            "from the profile and the gradient noise scale: [(1 + B_noise/B1)/(1 + B_noise/B2)]·t(B1)/t(B2)"
            + (
                f"; {coverage:.0%} prediction interval from resampling the noise estimate and the profile's visits"
                if coverage and predicted_interval
                else ""
            ),
        ),
        Metric(
            f"{name} difference",
            f"{diff:+.4f}" if diff is not None else "—",
            f"{name} of the recommendation minus the baseline's (means over seeds)"
            + (f"; {quality_words(quality, name, headline.get('confidence', 0.9))}" if quality else ""),
        ),
        Metric(
            "p-value",
            f"{p:.3g}" if p is not None else "—",
            f"Welch's t-test on the {name}: a small p means the difference is unlikely to be chance; "
            f"it needs two or more finished seeds in each arm",
        ),
    ]


def unfinished_runs(comparison: dict) -> list[str]:
    """One line per arm whose runs did not all finish: "1 of 2 recommended runs diverged"."""
    out = []
    for group in comparison.get("groups") or []:
        runs = group.get("runs") or []
        states: dict[str, int] = {}
        for run in runs:
            if run.get("state") and run["state"] != jobs.FINISHED:
                states[run["state"]] = states.get(run["state"], 0) + 1
        for state, count in sorted(states.items()):
            out.append(
                f"{count} of {len(runs)} {group['name']} runs {state.lower()}"
                + (
                    " (loss not finite or exploding: the learning rate may be too high for this batch)"
                    if state == jobs.DIVERGED
                    else ""
                )
            )
    return out
