"""A workload given from Python: a spec string, as the CLI takes it, or a :class:`largestep.Workload` built in the
notebook. A job runs in another process, so a Workload object reaches it through the home's workload cache: it is
stored there by value and the job is given the spec ``cached:<key>`` (see :mod:`largestep.workloads.cache`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

from ..errors import UsageError
from ..home import Home

__all__ = ["workload_spec", "workload_options"]


def workload_options(options: Mapping[str, object] | None, data: str | None, label: str | None) -> dict:
    """The workload function's keyword arguments: ``options`` (the CLI's ``--set KEY=VALUE``), ``data`` and
    ``label`` (``--data``, ``--label``, for the ``table`` workload)."""
    if options is not None and not isinstance(options, Mapping):
        raise UsageError(
            f"options must be a dict of the workload function's arguments, e.g. {{'samples': 4000}}, "
            f"not {type(options).__name__}"
        )
    chosen = {str(k): v for k, v in (options or {}).items()}
    if data is not None:
        chosen["path"] = str(data)
    if label is not None:
        chosen["label"] = label
    return chosen


@contextmanager
def workload_spec(home: Home, workload: object, options: dict, launcher: str = "local") -> Iterator[str]:
    """The spec a job is given for ``workload``. A Workload object is stored in ``home``'s workload cache for the
    duration; when the request is refused inside the ``with`` block, what was stored for it is taken away again,
    so bad input writes nothing."""
    from ..workloads.base import Workload

    if isinstance(workload, str):
        yield workload
        return
    if not isinstance(workload, Workload):
        raise UsageError(
            f"workload must be a spec such as 'fraud-mlp' or 'path/to/file.py:make', or a "
            f"largestep.Workload, not {type(workload).__name__}"
        )
    if options:
        raise UsageError(
            f"options go to a workload function; workload {workload.name!r} was built in Python "
            f"already: build it with the values you want instead"
        )
    if launcher != "local":
        raise UsageError(
            f"workload {workload.name!r} was built in Python and reaches its jobs through this "
            f"machine's workload cache, which a Ray task cannot read; give a spec such as "
            f"'path/to/file.py:make' for launcher='ray'"
        )
    from ..workloads.cache import STORED_PREFIX, cache_of

    key, undo = cache_of(home.check()).put(workload)
    try:
        yield f"{STORED_PREFIX}{key}"
    except BaseException:
        undo()
        raise
