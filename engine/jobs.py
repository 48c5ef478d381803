"""Jobs: profiling and training as their own processes, talking to the world through a spool.

A job never opens the database (DuckDB allows one writing process). It appends events to
``jobs/<id>/events.jsonl`` (fsynced in batches) and rewrites ``jobs/<id>/status.json``
atomically with its pid, heartbeat, phase and progress. :func:`engine.store.ingest` turns the
spool into rows; :func:`derive_state` turns the status file and the process table into a state.

One job runs at a time per device: a job holds ``locks/<device>.lock`` while it runs, and
waits for it as PENDING, so two timed runs never share a device.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil
from filelock import FileLock

from engine.errors import LargestepError
from engine.home import Home

__all__ = [
    "PENDING", "RUNNING", "FINISHED", "FAILED", "KILLED", "DIVERGED", "CRASHED",
    "FINAL_STATES", "STATES", "Spool", "JobContext", "submit", "cancel", "derive_state",
    "read_status", "read_spec", "new_job_id", "wait", "register_kind", "Diverged", "Cancelled", "Crashed",
]

PENDING, RUNNING, FINISHED, FAILED = "PENDING", "RUNNING", "FINISHED", "FAILED"
KILLED, DIVERGED, CRASHED = "KILLED", "DIVERGED", "CRASHED"
STATES = (PENDING, RUNNING, FINISHED, FAILED, KILLED, DIVERGED, CRASHED)
FINAL_STATES = frozenset({FINISHED, FAILED, KILLED, DIVERGED, CRASHED})

HEARTBEAT_S = 1.0           # how often a job rewrites its status file
STALE_AFTER_S = 120.0       # a live pid whose heartbeat is older than this is taken as hung
FLUSH_EVERY_S = 0.5         # events reach the disk at least this often ...
FLUSH_EVERY_EVENTS = 200    # ... or after this many, whichever comes first
CANCEL_MARKER = "cancelled"
QUEUE_POLL_S = 0.25          # how often a queued job looks whether its turn has come


class Diverged(Exception):
    """Raised by a job body when training diverged; the job ends as DIVERGED."""


class Cancelled(Exception):
    """Raised inside a job when it is asked to stop (SIGTERM); the job ends as KILLED."""


class Crashed(Exception):
    """Raised by a job body whose worker died (a rank killed by a signal, a lost Ray task); the job ends CRASHED."""


def new_job_id(kind: str) -> str:
    return f"{kind[:4]}-{secrets.token_hex(4)}"


# -- the spool, written by the job -------------------------------------------------------------


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
        line = json.dumps({"type": type_, "t": time.time(), **fields}, default=_json_default,
                          allow_nan=True)
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
            _write_json_atomic(self.dir / "status.json", self._status)

    def close(self) -> None:
        with self._lock:
            if not self._events.closed:
                self._flush_locked()
                self._events.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, default=_json_default)
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


# -- launching and cancelling, from the CLI or the dashboard -----------------------------------


def submit(home: Home, kind: str, params: dict, device: str, workload: str | None = None,
           job_id: str | None = None, locks: list[str] | None = None, launcher: str | None = None) -> str:
    """Write the job's spec and start its process in a new session; return the job id.

    The new process outlives the caller (a closed browser tab, a finished CLI command).
    ``locks``: the devices the job holds while it runs (default: ``device``); a multi-GPU job
    names each GPU. ``launcher="ray"`` runs the body as a Ray task instead (no local lock:
    the cluster schedules its own devices).
    """
    home.ensure()
    job_id = job_id or new_job_id(kind)
    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    spec = {"id": job_id, "kind": kind, "device": device, "workload": workload, "params": params,
            "created_at": time.time(), "home": str(home.root), "locks": list(locks or [device])}
    if launcher is not None:
        spec["launcher"] = launcher
    _write_json_atomic(job_dir / "spec.json", spec)
    (job_dir / "events.jsonl").touch()
    env = dict(os.environ)
    # Run from source trees that are not installed too: the engine's parent goes on the path.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(job_dir / "output.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.jobs", str(job_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=os.getcwd(),
        )
    _write_json_atomic(job_dir / "status.json",
                       {"state": PENDING, "pid": proc.pid, "pid_started": _create_time(proc.pid),
                        "heartbeat": time.time(), "phase": "queued", "progress": 0.0})
    return job_id


def cancel(home: Home, job_id: str, grace_s: float = 5.0) -> bool:
    """Stop a job's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    Returns False when the job had already ended. A queued job is stopped before it starts.
    """
    job_dir = home.job_dir(job_id)
    if not job_dir.is_dir():
        raise LargestepError(f"no job {job_id!r} in {home.jobs}")
    (job_dir / CANCEL_MARKER).touch()
    status = read_status(job_dir) or {}
    pid = status.get("pid")
    if not pid or not _alive(pid, status.get("pid_started")):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid, status.get("pid_started")):
        time.sleep(0.05)
    if _alive(pid, status.get("pid_started")):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)
    return True


def wait(home: Home, job_id: str, timeout_s: float | None = None, poll_s: float = 0.2) -> str:
    """Block until the job's process has ended; return its derived state."""
    job_dir = home.job_dir(job_id)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = derive_state(job_dir)
        if state in FINAL_STATES:
            return state
        if deadline is not None and time.monotonic() > deadline:
            return state
        time.sleep(poll_s)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Is ``pid`` still the job's process (and not a zombie, nor a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    """Collect an exit status if the job is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def exit_record(job_dir: Path) -> dict | None:
    """The job's own exit event, if it wrote one (the last line of a finished spool)."""
    path = Path(job_dir) / "events.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if '"type": "exit"' in line:
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def derive_state(job_dir: Path, now: float | None = None) -> str:
    """The job's state from its exit record, status file and the process table."""
    record = exit_record(job_dir)
    if record is not None:
        return record.get("state", FAILED)
    status = read_status(job_dir) or {}
    cancelled = (Path(job_dir) / CANCEL_MARKER).exists()
    pid = status.get("pid")
    alive = bool(pid) and _alive(pid, status.get("pid_started"))
    if not alive:
        return KILLED if cancelled else CRASHED
    heartbeat = status.get("heartbeat") or 0.0
    if (now or time.time()) - heartbeat > STALE_AFTER_S:
        return CRASHED
    return status.get("state", PENDING) if status.get("state") in (PENDING, RUNNING) else RUNNING


# -- the job process -----------------------------------------------------------------------------


@dataclass
class JobContext:
    """What a job body gets: its spec, its spool, and a way to report progress."""

    job_id: str
    job_dir: Path
    home: Home
    spec: dict
    spool: Spool

    @property
    def params(self) -> dict:
        return self.spec.get("params", {})

    def progress(self, phase: str, fraction: float | None = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"phase": phase, **extra}
        if fraction is not None:
            fields["progress"] = max(0.0, min(1.0, float(fraction)))
        self.spool.status(**fields)


_KINDS: dict[str, str] = {
    # kind -> "module:function"; imported lazily so the job process loads only what it runs
    "profile": "engine.tasks:profile_task",
    "noise": "engine.tasks:noise_task",
    "stability": "engine.tasks:stability_task",
    "train": "engine.tasks:train_task",
    "autopilot": "engine.autopilot:autopilot_task",
    "ray": "engine.launchers:ray_task",     # any kind above, run as a Ray task (spec["launcher"] == "ray")
}


def register_kind(kind: str, target: str) -> None:
    _KINDS[kind] = target


def _resolve_body(kind: str) -> Callable[[JobContext], None]:
    import importlib

    module, _, function = _KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), function)


def _device_lock(home: Home, device: str) -> FileLock:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device or "any")
    return FileLock(str(home.locks / f"device-{safe}.lock"))


def _lock_names(spec: dict) -> set[str]:
    if spec.get("launcher") == "ray":
        return set()  # a job sent to Ray holds none: the cluster's scheduler gives each task its device
    return set(spec.get("locks") or [spec.get("device", "any")])


def _device_locks(home: Home, spec: dict):
    """Every device lock the job needs, in its turn: first in, first out among the jobs waiting for
    any of the same devices; the locks taken in sorted order (two multi-device jobs never deadlock).
    """
    from contextlib import ExitStack

    stack = ExitStack()
    names = _lock_names(spec)
    if names:
        while _older_job_waiting(home, spec, names):
            time.sleep(QUEUE_POLL_S)
    for name in sorted(names):
        stack.enter_context(_device_lock(home, name))
    return stack


def _older_job_waiting(home: Home, spec: dict, names: set[str]) -> bool:
    """Is a job submitted before this one still waiting (alive, not cancelled) for one of ``names``?"""
    mine = (spec.get("created_at", 0.0), spec["id"])
    for job_dir in home.jobs.iterdir():
        status = read_status(job_dir) if job_dir.name != spec["id"] else None
        if not status or status.get("state") != PENDING or (job_dir / CANCEL_MARKER).exists():
            continue
        other = read_spec(job_dir)
        if other is None or (other.get("created_at", 0.0), other["id"]) >= mine or not names & _lock_names(other):
            continue
        if _alive(status.get("pid"), status.get("pid_started")):
            return True
    return False


def run_job(job_dir: Path) -> int:
    """The body of ``python -m engine.jobs JOB_DIR``: wait for the device, run, record the exit."""
    job_dir = Path(job_dir)
    spec = read_spec(job_dir)
    if spec is None:
        print(f"no readable spec.json in {job_dir}", file=sys.stderr)
        return 2
    home = Home(Path(spec["home"]))
    spool = Spool(job_dir)
    stop = threading.Event()

    def on_term(_signum, _frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, on_term)
    spool.status(state=PENDING, pid=os.getpid(), pid_started=_create_time(os.getpid()), phase="waiting for device")
    beat = threading.Thread(target=_heartbeat, args=(spool, stop), daemon=True)
    beat.start()
    state, error = FAILED, None
    try:
        with _device_locks(home, spec):
            if (job_dir / CANCEL_MARKER).exists():
                raise Cancelled()
            spool.status(state=RUNNING, phase="starting", started_at=time.time())
            spool.emit("start", kind=spec["kind"], pid=os.getpid())
            body = _resolve_body("ray" if spec.get("launcher") == "ray" else spec["kind"])
            body(JobContext(spec["id"], job_dir, home, spec, spool))
            state = FINISHED
    except Cancelled:
        state, error = KILLED, "cancelled"
    except Diverged as exc:
        state, error = DIVERGED, str(exc) or "training diverged"
    except Crashed as exc:
        state, error = CRASHED, str(exc) or "a worker died"
    except LargestepError as exc:
        state, error = FAILED, str(exc)
    except BaseException as exc:  # the job's last word: record why it failed, then exit non-zero
        import traceback

        traceback.print_exc()
        state, error = FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the exit record must not be interrupted
        stop.set()
        spool.emit("exit", state=state, error=error)
        spool.status(state=state, phase="done", ended_at=time.time(), error=error)
        spool.close()
    return 0 if state == FINISHED else 1


def _heartbeat(spool: Spool, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            spool.status()
            spool.flush()
        except (OSError, ValueError):  # spool closed while stopping
            return


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m engine.jobs JOB_DIR", file=sys.stderr)
        sys.exit(2)
    # Run the imported module's run_job, not this __main__ copy's: the job bodies raise
    # engine.jobs.Diverged / Cancelled, which are other classes than __main__'s.
    from engine.jobs import run_job as _run_job

    sys.exit(_run_job(Path(sys.argv[1])))
