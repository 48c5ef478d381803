"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

__all__ = ["LargestepError", "UsageError", "WorkloadError", "DeviceError", "StoreError"]


class LargestepError(Exception):
    """Base for every error caused by the user's input or environment, not by a bug."""


class UsageError(LargestepError, ValueError):
    """A bad argument: a size string, a batch list, conflicting flags."""


class WorkloadError(LargestepError):
    """A workload that cannot be found, built or validated."""


class DeviceError(LargestepError):
    """A device that does not exist or cannot be used here."""


class StoreError(LargestepError):
    """The home or database cannot be used (not a DuckDB file, not writable, ...)."""
