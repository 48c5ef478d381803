"""The job runner: submit a job as its own process, queue it on its device, cancel it, tell its state.

A job talks to the world only through its spool (:mod:`largestep.jobs.spool`); :func:`largestep.store.ingest`
turns the spool into rows, and :func:`derive_state` turns the status file and the process table
into a state.

One job runs at a time per device: a job holds ``locks/<device>.lock`` while it runs, and
waits for it as PENDING, so two timed runs never share a device.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
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

from ..about import module
from ..errors import Cancelled, Crashed, Diverged, LargestepError
from ..home import Home
from . import events, forkserver
from .spool import Spool, read_spec, read_status, write_json_atomic

__all__ = [
    "PENDING",
    "RUNNING",
    "FINISHED",
    "FAILED",
    "KILLED",
    "DIVERGED",
    "CRASHED",
    "FINAL_STATES",
    "STATES",
    "JobContext",
    "submit",
    "cancel",
    "derive_state",
    "exit_record",
    "crash_reason",
    "job_process",
    "new_job_id",
    "wait",
    "register_kind",
    "run_job",
    "resolve_body",
    "outcome_of",
    "TRACKED",
    "runs_job_dir",
    "job_environment",
    "pause",
    "holding_devices",
]

PENDING, RUNNING, FINISHED, FAILED = "PENDING", "RUNNING", "FINISHED", "FAILED"
KILLED, DIVERGED, CRASHED = "KILLED", "DIVERGED", "CRASHED"
STATES = (PENDING, RUNNING, FINISHED, FAILED, KILLED, DIVERGED, CRASHED)
FINAL_STATES = frozenset({FINISHED, FAILED, KILLED, DIVERGED, CRASHED})

HEARTBEAT_S = 1.0  # how often a job rewrites its status file
STALE_AFTER_S = 120.0  # a live pid whose heartbeat is older than this is taken as hung
GRACE_S = 5.0  # without a pid: a job silent this long, with no process running it, has ended
CANCEL_MARKER = "cancelled"
CANCEL_GRACE_S = {None: 5.0, "autopilot": 30.0}  # SIGTERM to SIGKILL; an autopilot cancels its children first
QUEUE_POLL_S = 0.25  # how often a queued job looks whether its turn has come
TRACKED = "tracked"  # spec["launcher"] of a run tracked from the user's own process (largestep.track)


# a job id's prefix by kind, as the README shows them: train-1a2b3c4d, prof-1a2b3c4d, ...
ID_PREFIXES = {
    "train": "train",
    "profile": "prof",
    "noise": "noise",
    "noise_curve": "curve",
    "stability": "stab",
    "autopilot": "auto",
}


def new_job_id(kind: str) -> str:
    return f"{ID_PREFIXES.get(kind, kind)}-{secrets.token_hex(4)}"


# -- launching and cancelling, from the CLI or the dashboard -----------------------------------


def submit(
    home: Home,
    kind: str,
    params: dict,
    device: str,
    workload: str | None = None,
    job_id: str | None = None,
    locks: list[str] | None = None,
    launcher: str | None = None,
) -> str:
    """Write the job's spec and start its process in a new session; return the job id.

    The new process outlives the caller (a closed browser tab, a finished CLI command). It is forked by
    the home's warm launcher (:mod:`largestep.jobs.forkserver`) when one is running, else started afresh
    (and a launcher started for the next job); either way status.json records its pid before it runs.
    ``locks``: the devices the job holds while it runs (default: ``device``); a multi-GPU job
    names each GPU. ``launcher="ray"`` runs the body as a Ray task instead (no local lock:
    the cluster schedules its own devices).
    """
    home.ensure()
    job_id = job_id or new_job_id(kind)
    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    spec = {
        "id": job_id,
        "kind": kind,
        "device": device,
        "workload": workload,
        "params": params,
        "created_at": time.time(),
        "home": str(home.root),
        "locks": list(locks or [device]),
    }
    if launcher is not None:
        spec["launcher"] = launcher
    write_json_atomic(job_dir / "spec.json", spec)
    (job_dir / "events.jsonl").touch()
    env = job_environment()
    # A warm launcher forks the job with torch already imported; without one, a fresh process (always correct)
    warm = forkserver.enabled(env)
    forked = forkserver.fork_job(home, job_dir, env, os.getcwd()) if warm else None
    if forked is None and warm:
        # a launcher for the next job, started first: its imports overlap this job's own, not its measuring
        forkserver.start_in_background(home, env)
    pid = forked.pid if forked is not None else _start_fresh(job_id, job_dir, env)
    try:
        write_json_atomic(
            job_dir / "status.json",
            {
                "state": PENDING,
                "pid": pid,
                "pid_started": _create_time(pid),
                "heartbeat": time.time(),
                "phase": "queued",
                "progress": 0.0,
            },
        )
    except BaseException:
        if forked is not None:
            forked.abandon()  # it runs nothing without its "go"
        raise
    if forked is not None:
        forked.release()
    return job_id


def job_environment() -> dict:
    """The environment a job runs in: the submitter's, with the user's folder never first on the import path."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Never the user's folder first on the import path (python -P, inherited by the job's own children):
    # an engine.py, filelock.py or torch.py beside their data must not replace a library the job imports.
    # A workload the user names is imported from their folder by the loader, which puts it on the path.
    env["PYTHONSAFEPATH"] = "1"
    return env


def _start_fresh(job_id: str, job_dir: Path, env: dict) -> int:
    """Start ``python -m largestep.jobs JOB_DIR`` in a new session; its pid."""
    with open(job_dir / "output.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module("jobs"), str(job_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=os.getcwd(),
        )
    # collect its exit status the moment it ends, so a long-lived submitter (the autopilot, the
    # dashboard) never keeps finished jobs as zombie processes
    threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
    return proc.pid


def cancel(home: Home, job_id: str, grace_s: float | None = None) -> bool:
    """Stop a job's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    Returns False when the job had already ended. A queued job is stopped before it starts. A run
    tracked from the user's own code (:mod:`largestep.jobs.track`) is refused: its process is not ours.
    ``grace_s`` None: the job kind's own (an autopilot first cancels each of its children).
    """
    job_dir = home.find_job(job_id)
    if job_dir is None:
        raise LargestepError(f"no job {job_id!r} in {home.jobs}")
    spec = read_spec(job_dir) or {}
    if spec.get("launcher") == TRACKED:
        # The process is the user's own program (and its session may be their shell's): never signal it.
        if derive_state(job_dir) in FINAL_STATES:
            return False
        pid = (read_status(job_dir) or {}).get("pid")
        raise LargestepError(
            f"{job_id} is tracked from your own training code (pid {pid}); largestep did not start "
            "that process and will not kill it: stop it where it runs"
        )
    if grace_s is None:
        grace_s = CANCEL_GRACE_S.get(spec.get("kind"), CANCEL_GRACE_S[None])
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
        pause(job_dir, poll_s)


def pause(job_dir: Path, seconds: float) -> None:
    """Sleep ``seconds`` between two looks at a job, or less if its process ends first: on Linux a pidfd of the
    job's process becomes readable as it ends, so a follower learns of the end at once rather than at its next
    look (on average half a poll later). Elsewhere, or before the job has a pid, a plain sleep."""
    pid = (read_status(job_dir) or {}).get("pid")
    try:
        fd = os.pidfd_open(pid) if pid and hasattr(os, "pidfd_open") else None
    except OSError:  # gone already, or not ours to watch
        fd = None
    if fd is None:
        time.sleep(seconds)
        return
    try:
        select.select([fd], [], [], seconds)
    finally:
        os.close(fd)


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
    return events.last(job_dir, events.EXIT)


def derive_state(job_dir: Path, now: float | None = None) -> str:
    """The job's state from its exit record, status file and the process table.

    A job is taken as ended only when every sign agrees: no exit record, its pid gone (or reused),
    no process running this job folder, and none of its files touched within ``GRACE_S``. A
    single missing or half-written status.json (deleted by hand, being rewritten) is not a crash.
    """
    job_dir = Path(job_dir)
    now = now or time.time()
    record = exit_record(job_dir)
    if record is not None:
        return record.get("state", FAILED)
    status = read_status(job_dir) or {}
    pid = status.get("pid")
    if not (pid and _alive(pid, status.get("pid_started"))):
        record = exit_record(job_dir)  # it may have ended between the two reads
        if record is not None:
            return record.get("state", FAILED)
        # a known pid that is gone is evidence enough; without one (no status file, or one without a
        # pid), only the process table and a grace period since the job last wrote anything can tell
        unknown = not pid and _recently_active(job_dir, status, now)
        if job_process(job_dir) is None and not unknown:
            return KILLED if (job_dir / CANCEL_MARKER).exists() else CRASHED
    elif now - (status.get("heartbeat") or 0.0) > STALE_AFTER_S:
        return CRASHED  # alive but silent for minutes: hung
    return status["state"] if status.get("state") in (PENDING, RUNNING) else RUNNING


def job_process(job_dir: Path) -> psutil.Process | None:
    """The live process running ``python -m largestep.jobs JOB_DIR``, whatever its status file says."""
    for proc in psutil.process_iter(["cmdline", "status"]):
        if runs_job_dir(proc.info.get("cmdline") or [], job_dir) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            return proc
    return None


def runs_job_dir(cmdline: list[str], job_dir: Path | str) -> bool:
    """Is ``cmdline`` that of ``python -m largestep.jobs JOB_DIR``? A job forked by the warm launcher shows it as
    one title, padded with empty arguments (or split at its spaces), so it is read as one line."""
    target = str(job_dir)
    return (target in cmdline and module("jobs") in cmdline) or " ".join(cmdline).rstrip().endswith(
        f" -m {module('jobs')} {target}"
    )


def _recently_active(job_dir: Path, status: dict, now: float) -> bool:
    """Did the job beat, or write any of its files, within the grace period (just submitted, or busy)?"""
    if now - (status.get("heartbeat") or 0.0) < GRACE_S:
        return True
    for name in ("spec.json", "status.json", events.EVENTS_FILE):
        try:
            if now - (job_dir / name).stat().st_mtime < GRACE_S:
                return True
        except OSError:
            continue
    return False


def crash_reason(job_dir: Path, lines: int = 3) -> str:
    """Why a job that left no exit record ended, as far as its output tells (a failed import, a kill)."""
    try:
        output = (Path(job_dir) / "output.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        output = ""
    tail = [line.strip() for line in output.splitlines() if line.strip()][-lines:]
    if not tail:
        return "process ended without an exit record (no output)"
    return ("process ended without an exit record; its output ends: " + " | ".join(tail))[:1000]


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
    "profile": module("jobs.bodies") + ":profile_task",
    "noise": module("jobs.bodies") + ":noise_task",
    "noise_curve": module("jobs.bodies") + ":noise_curve_task",
    "stability": module("jobs.bodies") + ":stability_task",
    "train": module("jobs.bodies") + ":train_task",
    "autopilot": module("jobs.autopilot") + ":autopilot_task",
    "ray": module("jobs.ray") + ":ray_task",  # any kind above, run as a Ray task (spec["launcher"] == "ray")
}


def register_kind(kind: str, target: str) -> None:
    _KINDS[kind] = target


def resolve_body(kind: str) -> Callable[[JobContext], None]:
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


@contextlib.contextmanager
def holding_devices(home: Home, names: list[str], on_wait: Callable[[str], None] = lambda _name: None):
    """The job locks of the devices ``names`` held for the block, by work outside a job that must not share a device
    with one (the device self-check): a job running on one of them ends first (``on_wait(name)`` says so), and no
    job starts on them meanwhile. A home without a lock folder has never run a job: nothing to wait for."""
    from filelock import Timeout

    with contextlib.ExitStack() as stack:
        if home.locks.is_dir():
            for name in sorted(set(names)):  # sorted, as jobs take theirs: never a deadlock with one of them
                lock = _device_lock(home, name)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    on_wait(name)
                    lock.acquire()
                stack.callback(lock.release)
        yield


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
    """The body of ``python -m largestep.jobs JOB_DIR``: wait for the device, run, record the exit."""
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
            spool.emit(events.START, kind=spec["kind"], pid=os.getpid())
            body = resolve_body("ray" if spec.get("launcher") == "ray" else spec["kind"])
            body(JobContext(spec["id"], job_dir, home, spec, spool))
            state = FINISHED
    except BaseException as exc:  # the job's last word: record why it ended, then exit non-zero
        state, error = outcome_of(exc)
        if state == FAILED and not isinstance(exc, LargestepError):
            import traceback

            traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the exit record must not be interrupted
        stop.set()
        spool.emit(events.EXIT, state=state, error=error)
        spool.status(state=state, phase="done", ended_at=time.time(), error=error)
        spool.close()
    return 0 if state == FINISHED else 1


def outcome_of(exc: BaseException) -> tuple[str, str | None]:
    """The state a run ends in when ``exc`` ends it, and the one-line error to record.

    Shared by job processes and runs tracked from the user's own code, so both end alike.
    """
    if isinstance(exc, Cancelled):
        return KILLED, "cancelled"
    if isinstance(exc, KeyboardInterrupt):
        return KILLED, "interrupted"
    if isinstance(exc, Diverged):
        return DIVERGED, str(exc) or "training diverged"
    if isinstance(exc, Crashed):
        return CRASHED, str(exc) or "a worker died"
    if isinstance(exc, LargestepError):
        return FAILED, str(exc)
    return FAILED, one_line(f"{type(exc).__name__}: {exc}")


def one_line(text: str, limit: int = 1000) -> str:
    """The first line of ``text``, at most ``limit`` characters: what a runs table can show."""
    return (text.splitlines() or [""])[0][:limit]


def _heartbeat(spool: Spool, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            spool.status()
            spool.flush()
        except (OSError, ValueError):  # spool closed while stopping
            return
