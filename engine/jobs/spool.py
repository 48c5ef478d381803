"""A job's spool: its append-only ``events.jsonl`` and its atomically rewritten ``status.json``.

A job never opens the database (DuckDB allows one writing process). It appends events (their
names and fields are catalogued in :mod:`largestep.jobs.events`) and fsyncs them in batches, and it
rewrites its status file (pid, heartbeat, phase, progress) atomically, so a reader never sees
half of one. ``spec.json`` is written once, when the job is submitted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "Spool",
    "FLUSH_EVERY_S",
    "FLUSH_EVERY_EVENTS",
    "json_default",
    "write_json_atomic",
    "read_status",
    "read_spec",
]

FLUSH_EVERY_S = 0.5  # events reach the disk at least this often ...
FLUSH_EVERY_EVENTS = 200  # ... or after this many, whichever comes first


class Spool:
    """Append-only events plus an atomically rewritten status file, for one job."""

    def __init__(self, job_dir: Path):
        self.dir = Path(job_dir)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._pending = 0
        self._last_flush = time.monotonic()
        self._status: dict[str, Any] = read_status(self.dir) or {}

    def emit(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, "t": time.time(), **fields}, default=json_default, allow_nan=True)
        with self._lock:
            self._events.write(line + "\n")
            self._pending += 1
            if self._pending >= FLUSH_EVERY_EVENTS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._events.flush()
        os.fsync(self._events.fileno())
        self._pending = 0
        self._last_flush = time.monotonic()

    def status(self, **fields: Any) -> None:
        """Merge ``fields`` into status.json and rewrite it atomically."""
        with self._lock:
            self._status.update(fields)
            self._status["heartbeat"] = time.time()
            write_json_atomic(self.dir / "status.json", self._status)

    def close(self) -> None:
        with self._lock:
            if not self._events.closed:
                self._flush_locked()
                self._events.close()


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, default=json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_status(job_dir: Path) -> dict | None:
    try:
        return json.loads((Path(job_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_spec(job_dir: Path) -> dict | None:
    try:
        return json.loads((Path(job_dir) / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
