"""The exceptions that carry meaning across layers.

``LargestepError`` and its subclasses are errors a user can fix: the CLI prints them as one line
and exits with code 2, the dashboard shows them in an error box. ``Diverged``, ``Cancelled`` and
``Crashed`` are not errors but outcomes: raised inside a job, they end it in the state of the
same name instead of FAILED.
"""

from __future__ import annotations

__all__ = [
    "LargestepError",
    "UsageError",
    "UnusableProfile",
    "WorkloadError",
    "DeviceError",
    "StoreError",
    "Diverged",
    "Cancelled",
    "Crashed",
]


class LargestepError(Exception):
    """Base for every error caused by the user's input or environment, not by a bug."""


class UsageError(LargestepError, ValueError):
    """A bad argument: a size string, a batch list, conflicting flags."""


class UnusableProfile(UsageError):
    """A profile that cannot be trusted for recommending (measured under load, failing the physics check),
    refused unless the user accepts it (--accept-load). Its message is the one line to show."""

    def __init__(self, message: str, profile_id: str | None = None):
        super().__init__(message)
        self.profile_id = profile_id


class WorkloadError(LargestepError):
    """A workload that cannot be found, built or validated."""


class DeviceError(LargestepError):
    """A device that does not exist or cannot be used here."""


class StoreError(LargestepError):
    """The home or database cannot be used (not a DuckDB file, not writable, ...)."""


# -- outcomes of a job other than FINISHED and FAILED ---------------------------------------------


class Diverged(Exception):
    """Training diverged (loss not finite or exploding); the job ends as DIVERGED."""


class Cancelled(Exception):
    """The job was asked to stop (SIGTERM); it ends as KILLED."""


class Crashed(Exception):
    """A worker of the job died (a rank killed by a signal, a lost Ray task); the job ends CRASHED."""
