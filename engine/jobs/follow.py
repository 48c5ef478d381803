"""Following a job from another process: what it adds to its spool, read as it goes, until it ends.

The command line (a rich progress bar) and the Python API (tqdm, in a terminal or a notebook) show the same
updates each in its own way; the lines they print for an event are written once here, beside the catalogue
they describe (:mod:`largestep.jobs.events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import events
from .runner import FINAL_STATES, cancel, derive_state, pause
from .spool import read_status
from ..home import Home

__all__ = ["Update", "watch", "last_log_line", "describe_profile_event", "describe_autopilot_event", "load_note"]

POLL_S = 0.2  # how often the spool is read while the job runs


@dataclass(frozen=True)
class Update:
    """What a job added since the last look: its new events, where it is, and its state."""

    events: list[dict]
    phase: str  # the job's own words for its current step ("batch 256", "noise scale")
    progress: float  # 0..1
    state: str  # PENDING or RUNNING; a final state in the last update


def watch(home: Home, job_id: str, show: Callable[[Update], None], poll_s: float = POLL_S) -> str:
    """Call ``show`` with every update of job ``job_id`` until it ends; returns its final state.

    Ctrl-C (KeyboardInterrupt, also a notebook's "interrupt the kernel") cancels the job, then is raised on.
    """
    job_dir = home.job_dir(job_id)
    offset = 0
    try:
        while True:
            # the state first: a job that has ended wrote every event before its exit record, so the read
            # below sees them all
            state = derive_state(job_dir)
            batch = events.read(job_dir, offset)
            offset = batch.offset
            status = read_status(job_dir) or {}
            show(
                Update(
                    batch.events,
                    str(status.get("phase") or status.get("state") or ""),
                    float(status.get("progress") or 0.0),
                    state,
                )
            )
            if state in FINAL_STATES:
                return state
            pause(job_dir, poll_s)
    except KeyboardInterrupt:
        cancel(home, job_id)
        raise


def last_log_line(home: Home, job_id: str) -> str:
    """The last line the job printed: why it failed, when it recorded no error of its own."""
    try:
        lines = (home.job_dir(job_id) / "output.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"
    except OSError:
        return "no output"


# -- what an event says to a person following the job ---------------------------------------------


def load_note(point: dict) -> str:
    """How other processes' load shaped a point, as a clause (empty when they did not)."""
    aside = point.get("loaded_visits") or 0
    if point.get("under_load"):
        return ", measured under load (other processes took the cores it needs)"
    return f", {aside} contended visit{'s' if aside != 1 else ''} set aside" if aside else ""


def describe_profile_event(event: dict) -> str | None:
    """A profile's measured batch size as one line; None for the events a person need not see."""
    if event.get("type") != events.POINT:
        return None
    if event.get("status") == "ok":
        bound = ", input-bound" if event.get("input_bound") else ""
        # a batch size is reported again as its interleaved rounds, a re-measure or the physics check end
        rounds = f", over {event['visits']} visits" if (event.get("visits") or 1) > 1 else ""
        again = ", re-measured" if event.get("remeasured") else ""
        flag = ", inconsistent with its neighbours" if event.get("inconsistent") else ""
        step = event.get("estimate_s") or event["median_s"]  # the profile's estimate, the median in an old spool
        return (
            f"batch {event['batch_size']}: {step * 1e3:.2f} ms/step, "
            f"{event['samples_per_s']:,.0f} samples/s{bound}{rounds}{again}{load_note(event)}{flag}"
        )
    return f"batch {event['batch_size']}: {event['status']} ({event.get('error') or ''})"


def describe_autopilot_event(event: dict) -> str | None:
    """The autopilot's phases and its recommendation as lines; None for the rest."""
    if event.get("type") == events.AUTOPILOT_PHASE and event.get("untrusted"):
        return None  # why it stops: the command's error says it, once
    if event.get("type") == events.AUTOPILOT_PHASE and "job" not in event and "run_ids" not in event:
        # waiting for a quiet window: how long so far, and how busy the machine is
        return f"phase: {event['phase']}" + (f": {event['detail']}" if event.get("detail") else "")
    if event.get("type") == events.AUTOPILOT_PHASE and "run_ids" in event:
        return f"phase: {event['phase']} ({', '.join(event['run_ids'])})"
    if event.get("type") == events.RECOMMENDATION:
        doc = event["document"]
        speed = doc["predicted_speedup"]
        span = speed.get("time_to_target_interval")
        raw = speed.get("raw") if speed.get("corrected") else None
        return (
            f"recommended: batch {doc['batch_size']}, lr {doc['learning_rate']:.3g} "
            f"(predicted {speed['time_to_target']:.2f}x to target"
            + (
                f", {speed.get('coverage', 0.9):.0%} prediction interval {span[0]:.2f}x to {span[1]:.2f}x"
                if span
                else ""
            )
            + (
                f"; {raw['time_to_target']:.2f}x on the raw noise model, corrected by "
                f"{doc['correction']['verifications']} verification(s))"
                if raw
                else ")"
            )
        )
    if event.get("type") == events.VERIFICATION:
        point = event["verification"]
        said = "verified" if point.get("verified") else f"not verified ({point.get('failed_why')})"
        return (
            f"{said}: batch {point['batch_size']} ({point.get('rule')} rule), attempt {point.get('attempt') or 1}"
            + (f"; {point['learned']}" if point.get("learned") else "")
        )
    return None
