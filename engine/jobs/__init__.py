"""Jobs: profiling, noise estimates, stability checks, training runs and the autopilot as processes.

A job writes only its spool (``events.jsonl`` and ``status.json``, catalogued in ``events``);
it never opens the database. ``runner`` submits, queues (one job a device), cancels and tells a
job's state; ``start`` validates a request before anything is written; ``bodies`` and
``autopilot`` are what runs inside a job; ``torchrun`` (N ranks on this machine) and ``ray`` launch a body elsewhere.
"""

from .runner import (
    CRASHED,
    DIVERGED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    KILLED,
    PENDING,
    RUNNING,
    STATES,
    JobContext,
    cancel,
    crash_reason,
    derive_state,
    exit_record,
    job_process,
    new_job_id,
    pause,
    submit,
    wait,
)
from .spool import Spool, read_spec, read_status

__all__ = [
    "PENDING",
    "RUNNING",
    "FINISHED",
    "FAILED",
    "KILLED",
    "DIVERGED",
    "CRASHED",
    "STATES",
    "FINAL_STATES",
    "JobContext",
    "Spool",
    "submit",
    "cancel",
    "wait",
    "derive_state",
    "crash_reason",
    "job_process",
    "exit_record",
    "read_status",
    "read_spec",
    "new_job_id",
    "pause",
]
