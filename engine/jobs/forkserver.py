"""The warm launcher: a fork server that starts jobs from a process that has already imported torch.

A fresh ``python -m largestep.jobs JOB_DIR`` spends most of its start-up importing torch and, on its first
optimizer, ``torch._dynamo``: together about twice the time of ``python -c "import torch"``, before the
job does anything. A launcher imports them once; each job is then a fork of it.

One launcher serves one home, one Python executable, one version of the engine's source and one set
of the environment variables read while importing (``PYTHONPATH``, the thread counts, ...): its key
hashes them all, and names its abstract Unix socket (no path, so no 108-byte limit) and its record in
``<home>/launchers/``. A launcher whose source has changed since it started exits rather than run old
code, and so does one left idle (no request, none of its jobs running) for ``IDLE_S``.

The protocol, one job a connection::

    submitter -> launcher   {"job_dir", "env", "cwd", "version"}
    child     -> submitter  {"pid"}      the forked child, now in its own session, holds the connection
    submitter -> child      "go"         once the submitter has recorded the pid in status.json

A child that does not get its "go" exits having run nothing, so a submitter that gave up waiting
(the launcher busy, dead or gone) can start the job itself: a job is never started twice. Every
failure on the submitter's side is answered with None, and :func:`largestep.jobs.runner.submit` falls
back to a fresh process, which is always correct. ``LARGESTEP_WARM_LAUNCHER=0`` turns it all off.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from ..about import module
from ..home import Home

__all__ = [
    "WARM_ENV",
    "enabled",
    "launcher_key",
    "source_version",
    "fork_job",
    "ForkedJob",
    "start_in_background",
    "running",
    "stop",
]

WARM_ENV = "LARGESTEP_WARM_LAUNCHER"  # "0": never start or use a launcher
ANSWER_S = 2.0  # a launcher that has not forked the job by then is busy or hung: start it afresh
GO_WAIT_S = 60.0  # a child whose submitter is silent this long was given up: it exits, having run nothing
IDLE_S = 300.0  # a launcher with no request and no job running for this long exits (a job it forked
# lives on when it exits: it is in its own session)
TICK_S = 1.0  # how often a launcher reaps its children and looks whether it should exit
MAX_REQUEST = 1 << 20  # bytes: a job's request is its folder, cwd and environment
# Variables read while the launcher imports (the interpreter's, the thread pools' sizes, torch's own
# settings): a job whose environment differs in any of them needs a launcher of its own.
IMPORT_TIME_ENV = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "GOMP_", "KMP_", "TORCH", "PYTORCH", "LD_")
# ... except what torch writes into its own process's environment at run time, not read at import: the
# inductor's cache folder, set by a submitter that compiled or built a workload (a job gets the value in its env)
SET_BY_TORCH_ENV = frozenset({"TORCHINDUCTOR_CACHE_DIR"})
ENGINE_ROOT = Path(__file__).resolve().parents[1]
# The launcher's command (not ``-m largestep.jobs.forkserver``: the package imports this module first)
LAUNCHER_MAIN = f"import sys; from {module('jobs.forkserver')} import main; sys.exit(main(sys.argv[1:]))"
PRELOADED = (
    "torch",
    "torch._dynamo",
    "setproctitle",
    module("jobs.bodies"),
    module("measure.train"),
    module("measure.profiler"),
)


def enabled(env: dict) -> bool:
    return env.get(WARM_ENV, "1").strip() != "0"


def source_version() -> str:
    """A hash of the engine's source files (path, size, modification time) and of the installed torch:
    a launcher started before any of them changed must not run the job."""
    digest = hashlib.sha256(sys.executable.encode())
    for path in sorted(ENGINE_ROOT.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(ENGINE_ROOT)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.origin:
            stat = (Path(spec.origin).parent / "version.py").stat()
            digest.update(f"torch:{stat.st_size}:{stat.st_mtime_ns}".encode())
    except (ImportError, OSError, ValueError):
        pass
    return digest.hexdigest()[:16]


def launcher_key(home: Home, env: dict, version: str | None = None) -> str:
    """Which launcher may start a job with ``env`` in ``home``."""
    import_env = sorted(
        (name, value)
        for name, value in env.items()
        if name.startswith(IMPORT_TIME_ENV) and name not in SET_BY_TORCH_ENV
    )
    material = json.dumps([str(home.root), sys.executable, version or source_version(), import_env])
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _address(key: str) -> str:
    return f"\0largestep-launcher-{key}"  # Linux abstract namespace: gone with the process, no file to clean


def _record_path(home: Home, key: str) -> Path:
    return home.launchers / f"{key}.json"


# -- the submitter's side -------------------------------------------------------------------------


@dataclass
class ForkedJob:
    """A job forked by a launcher, waiting for its submitter's word: ``release`` starts it, ``abandon`` ends it."""

    pid: int
    connection: socket.socket

    def release(self) -> None:
        """Let the job run. After this the pid is the job's, whatever happens to the launcher."""
        try:
            self.connection.sendall(b"go\n")
        except OSError:
            pass  # the child is gone: its pid, already recorded, reads as a crashed job
        finally:
            self.connection.close()

    def abandon(self) -> None:
        self.connection.close()  # the child reads no "go" and exits


def fork_job(home: Home, job_dir: Path, env: dict, cwd: str) -> ForkedJob | None:
    """Ask the home's launcher to fork the job; None when there is none, or it does not answer in time."""
    version = source_version()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(ANSWER_S)
    try:
        connection.connect(_address(launcher_key(home, env, version)))
        request = {"job_dir": str(job_dir), "env": env, "cwd": cwd, "version": version}
        connection.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(_read_line(connection) or b"{}")
        if isinstance(reply.get("pid"), int):
            return ForkedJob(reply["pid"], connection)
    except (OSError, ValueError):
        pass
    connection.close()
    return None


def start_in_background(home: Home, env: dict) -> None:
    """Start the launcher for the next job, unless one is running or starting; never waits for it."""
    key = launcher_key(home, env)
    try:
        home.launchers.mkdir(parents=True, exist_ok=True)
        with _record_lock(home, key):
            if _live_record(_record_path(home, key)) is not None:
                return
            with open(home.launchers / f"{key}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-c", LAUNCHER_MAIN, str(home.root), key],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    cwd="/",
                )
            _write_record(_record_path(home, key), proc.pid, key)
    except (OSError, Timeout):
        return  # the job started anyway; the next one may start its launcher
    # collect its exit status when it ends, so a long-lived submitter keeps no zombie
    threading.Thread(target=proc.wait, name=f"reap-launcher-{proc.pid}", daemon=True).start()


def running(home: Home) -> list[dict]:
    """The home's live launchers, from their records: pid, key, version, started_at, and serving_since (None
    while it is still importing)."""
    if not home.launchers.is_dir():
        return []
    return [record for path in sorted(home.launchers.glob("*.json")) if (record := _live_record(path))]


def stop(home: Home, grace_s: float = 5.0) -> int:
    """End the home's launchers (not the jobs they started); returns how many were running."""
    stopped = 0
    for record in running(home):
        try:
            proc = psutil.Process(record["pid"])
            proc.terminate()
            try:
                proc.wait(grace_s)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(grace_s)
        except psutil.Error:
            continue
        _record_path(home, record["key"]).unlink(missing_ok=True)
        stopped += 1
    return stopped


def _record_lock(home: Home, key: str, timeout_s: float = 1.0) -> FileLock:
    return FileLock(str(home.launchers / f"{key}.lock"), timeout=timeout_s)


def _write_record(path: Path, pid: int, key: str, serving_since: float | None = None) -> None:
    """The launcher's record: written by its starter (pid), then by the launcher once it serves."""
    from .spool import write_json_atomic

    write_json_atomic(
        path,
        {
            "pid": pid,
            "pid_started": psutil.Process(pid).create_time(),
            "key": key,
            "version": source_version(),
            "python": sys.executable,
            "started_at": time.time(),
            "serving_since": serving_since,
        },
    )


def _live_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
        proc = psutil.Process(record["pid"])
        if proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - record["pid_started"]) < 1.0:
            return record
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        pass
    return None


def _read_line(connection: socket.socket) -> bytes | None:
    """One newline-terminated message (without it), or None when the peer closed first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk or len(data) > MAX_REQUEST:
            return None
        data += chunk
    return data[:-1]


# -- the launcher ---------------------------------------------------------------------------------


def serve(home: Home, key: str) -> int:
    """Import what every job imports, then fork one child a request until idle or out of date."""
    version = source_version()
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_address(key))
    except OSError:
        print(f"another launcher serves {key}", flush=True)
        return 0
    listener.listen(64)
    listener.settimeout(TICK_S)
    record = _record_path(home, key)
    with _record_lock(home, key, timeout_s=30.0):  # after its starter's record, never before it
        _write_record(record, os.getpid(), key, serving_since=time.time())
    print(f"launcher {os.getpid()} serving {home.root} (engine {version})", flush=True)
    busy_at = time.monotonic()
    try:
        while time.monotonic() - busy_at < IDLE_S and home.root.is_dir():
            if _reap_children():
                busy_at = time.monotonic()  # a job still runs: the next one is likely submitted when it ends
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                if source_version() != version:
                    print("the engine's source changed: exiting", flush=True)
                    break
                continue
            busy_at = time.monotonic()
            with connection:
                if not _serve_one(listener, connection, version):
                    break
    finally:
        listener.close()
        if (_live_record(record) or {}).get("pid") == os.getpid():
            record.unlink(missing_ok=True)
        _reap_children()
    return 0


def _preload() -> None:
    """Import torch, torch._dynamo (a first optimizer step imports it) and the job bodies' modules, and
    nothing more: no torch op, no thread pool, no CUDA, which would not survive the fork. A launcher
    that finds a thread of its own started refuses to serve (every submitter then starts jobs afresh)."""
    import importlib

    import numpy  # noqa: F401  its BLAS starts its pool on import, with handlers that make fork safe

    threads = _os_threads()
    for name in PRELOADED:
        importlib.import_module(name)
    import setproctitle
    import torch

    setproctitle.getproctitle()  # finds the process's argv memory now, while the environment is the one it started with

    if _os_threads() != threads or threading.active_count() != 1 or torch.cuda.is_initialized():
        raise SystemExit(
            f"importing {', '.join(PRELOADED)} started threads ({_os_threads()} now, {threads} "
            "before): forking would not be safe, not serving"
        )


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _reap_children() -> bool:
    """Collect the exit status of every forked job that has ended, so none lingers as a zombie; whether any
    still runs."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _serve_one(listener: socket.socket, connection: socket.socket, version: str) -> bool:
    """Fork the job one request asks for; False when the launcher should stop serving."""
    connection.settimeout(ANSWER_S)
    try:
        if _peer_uid(connection) != os.getuid():
            return True  # only its own user may start processes as that user
        request = json.loads(_read_line(connection) or b"{}")
        if request.get("version") != version or source_version() != version:
            return False  # out of date: the submitter falls back, and starts a launcher of the new version
        job = (str(request["job_dir"]), dict(request["env"]), str(request["cwd"]))
    except (OSError, ValueError, KeyError, TypeError):
        return True
    try:
        pid = os.fork()
    except OSError as exc:  # out of processes or memory: the submitter reads no pid and starts the job afresh
        print(f"cannot fork: {exc}", flush=True)
        return True
    if pid == 0:
        listener.close()  # the job must not keep the launcher's address bound once the launcher is gone
        _become_job(connection, *job)
    return True


def _peer_uid(connection: socket.socket) -> int:
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _become_job(connection: socket.socket, job_dir: str, env: dict, cwd: str) -> None:
    """In the forked child: become what ``python -m largestep.jobs JOB_DIR`` started by the submitter would
    be (its own session, its cwd, its environment, stdio, signal handlers), wait for "go", run it, exit."""
    try:
        os.setsid()  # its own session and process group: cancel signals the group
        _look_like_a_job(job_dir)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        _redirect_stdio(Path(job_dir) / "output.log", unbuffered=bool(env.get("PYTHONUNBUFFERED")))
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        connection.settimeout(GO_WAIT_S)
        go = _read_line(connection) == b"go"
        connection.close()
    except BaseException:
        os._exit(0)  # nothing ran: the submitter, without a pid, starts the job itself
    if not go:
        os._exit(0)
    os._exit(_run_as_main(job_dir))


def _redirect_stdio(log: Path, unbuffered: bool) -> None:
    import io

    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd, target in ((0, null), (1, out), (2, out)):
        os.dup2(target, fd)
    os.close(null)
    os.close(out)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=unbuffered, line_buffering=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")


def _look_like_a_job(job_dir: str) -> None:
    """Show the job's own command line in the process table: ``ps``, and every check that finds a job's
    process by its folder (the runner's, a test's clean-up), see what a fresh job would show."""
    import numpy
    import setproctitle

    setproctitle.setproctitle(f"{sys.executable} -m {module('jobs')} {job_dir}")
    sys.argv = [str(ENGINE_ROOT / "jobs" / "__main__.py"), job_dir]
    # a fresh interpreter's random state, not the launcher's copy: Python's own random module reseeds
    # itself after a fork, numpy's global generator does not
    numpy.random.seed()


def _run_as_main(job_dir: str) -> int:
    """Run engine/jobs/__main__.py as ``python -m`` would, and return the exit code the interpreter would."""
    import atexit
    import runpy
    import traceback

    code = 0
    try:
        runpy.run_module(module("jobs"), run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs at exit (a DataLoader's workers, logging)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: the launcher takes HOME KEY", file=sys.stderr)
        return 2
    return serve(Home(Path(argv[0])), argv[1])
