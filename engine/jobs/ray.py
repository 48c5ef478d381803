"""Where a job's body runs: here (the default), or as a task on a Ray cluster.

With ``--launcher ray`` a job still has its folder, spec and local job process (``python -m
largestep.jobs``): that process is the Ray *driver*. It connects to the cluster (``--ray-address``,
else ``$RAY_ADDRESS`` or the newest cluster started on this machine, else a fresh local one),
sends the job's body (train, profile, noise) as one Ray task asking for one GPU (or, on a
CPU-only cluster or ``--device cpu``, the CPUs it needs), and copies what the task reports
into the local spool, so ingest, the dashboard and `largestep runs` see it as any local job.

The task talks back through a :class:`ray.util.queue.Queue` actor: batches of spool events
(their own timestamps kept) and progress. Outcomes:

- the task returns: FINISHED; it raises Diverged: DIVERGED; it raises any other error: FAILED;
- its worker or node dies (``WorkerCrashedError``, ``NodeDiedError``, ...): CRASHED;
- `largestep runs cancel` (SIGTERM to the local job process): ``ray.cancel(force=True)``, KILLED.

Ray schedules the devices, so Ray jobs take no local device lock: a sweep of K runs on a
cluster of K GPUs runs side by side. Ray is optional: ``pip install 'largestep[ray]'``.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import LargestepError, UsageError

__all__ = ["LAUNCHERS", "INSTALL_HINT", "check_launcher", "launcher_from_cli", "ray_task"]

LAUNCHERS = ("local", "ray")
INSTALL_HINT = "pip install 'largestep[ray]'"
FLUSH_EVERY_S = 0.5  # the task sends its events at least this often ...
FLUSH_EVERY_EVENTS = 200  # ... or after this many
POLL_S = 0.2  # the driver drains the queue and checks the task this often


def launcher_from_cli(launcher: str, ray_address: str | None, cpus: int | None = None) -> dict | None:
    """``--launcher`` / ``--ray-address`` as the launcher description jobs carry (None: run here)."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher must be local or ray, not {launcher!r}")
    if launcher == "local":
        if ray_address is not None:
            raise UsageError("--ray-address needs --launcher ray")
        return None
    return {"kind": "ray", "address": ray_address, "cpus": cpus or 1}


def check_launcher(launcher: dict | None, device: str, nproc: int = 1) -> dict | None:
    """A usable launcher description, or a one-line UsageError (before anything is written)."""
    if launcher is None or launcher.get("kind", "local") == "local":
        return None
    if launcher.get("kind") != "ray":
        raise UsageError(f"unknown launcher {launcher.get('kind')!r}; use local or ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--launcher ray needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    if nproc != 1:
        raise UsageError(
            "--nproc and --launcher ray do not combine: a Ray task runs one process; "
            "use --nproc on a machine with several devices, or Ray for many single-device runs"
        )
    if str(device or "auto") not in ("auto", "cpu", "cuda"):
        raise UsageError(f"with --launcher ray, --device is auto, cpu or cuda (Ray picks the GPU), not {device}")
    cpus = launcher.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
        raise UsageError(f"the CPUs per Ray task must be positive, not {cpus!r}")
    return {"kind": "ray", "address": launcher.get("address"), "cpus": cpus}


def absolute_workload_spec(spec: str) -> str:
    """``path/to/file.py:fn`` made absolute when the file is here, so a task on this machine finds it."""
    path, sep, function = spec.rpartition(":")
    if sep and path.endswith(".py") and Path(path).is_file():
        return f"{Path(path).resolve()}:{function}"
    return spec


# -- the task side (runs on a Ray worker) ----------------------------------------------------------


class QueueSpool:
    """The spool interface of :class:`largestep.jobs.spool.Spool`, sending to the driver through a Ray queue."""

    def __init__(self, queue):
        self.queue = queue
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._status: dict[str, Any] = {}
        self._last_flush = time.monotonic()

    def emit(self, type_: str, **fields: Any) -> None:
        with self._lock:
            self._events.append({"type": type_, "t": time.time(), **fields})
            if len(self._events) >= FLUSH_EVERY_EVENTS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._flush_locked()

    def status(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)
            if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        import json

        from .spool import json_default

        if self._events or self._status:
            # through JSON, as a local spool would: numpy and torch scalars become numbers
            events = json.loads(json.dumps(self._events, default=json_default))
            status = json.loads(json.dumps(self._status, default=json_default))
            self.queue.put((events, status))
            self._events, self._status = [], {}
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()


def _run_remote(spec: dict, queue) -> dict:
    """The Ray task: run the job's body with a spool that reports to the driver."""
    from .runner import JobContext, resolve_body

    spool = QueueSpool(queue)
    spool.status(phase="started on the cluster", worker_pid=os.getpid(), worker_host=os.uname().nodename)
    spool.flush()
    with tempfile.TemporaryDirectory(prefix="largestep-") as scratch:
        spec = dict(spec, params=dict(spec["params"], save_weights=False))  # nothing to save on a worker
        try:
            resolve_body(spec["kind"])(JobContext(spec["id"], Path(scratch), None, spec, spool))
        finally:
            spool.close()
    return {"pid": os.getpid()}


# -- the driver side (the local job process) --------------------------------------------------------


def ray_task(ctx) -> None:
    """The local job body for ``launcher == "ray"``: send the real body to the cluster and relay it."""
    import ray
    from ray.util.queue import Queue

    from ..errors import Cancelled, Crashed, Diverged

    launcher = ctx.params["launcher"]
    ctx.progress("connecting to Ray", 0.0)
    root = str(Path(__file__).resolve().parents[2])
    stop = threading.Event()
    ray.init(
        address=launcher.get("address"),
        ignore_reinit_error=True,
        # workers on this machine import the engine from this checkout even when it is not installed
        runtime_env={"env_vars": {"PYTHONPATH": root}} if not _importable_everywhere() else None,
    )
    # Ray's driver installs its own SIGTERM handler (sys.exit), and an exception raised from a handler
    # inside Ray's C++ wait comes out garbled: the handler only sets a flag, the loop below acts on it
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    queue, ref, done = None, None, False
    try:
        options = _resources(ray.cluster_resources(), ctx.params.get("device", "auto"), launcher.get("cpus", 1))
        queue = Queue()
        spec = {k: v for k, v in ctx.spec.items() if k != "launcher"}
        ref = (
            ray.remote(_run_remote)
            .options(max_retries=0, name=f"largestep-{ctx.job_id}", **options)
            .remote(spec, queue)
        )
        wanted = ", ".join(f"{v} {k.removeprefix('num_').upper()}" for k, v in options.items())
        ctx.progress(f"queued on Ray ({wanted})", 0.0, ray_task=ref.task_id().hex())
        while not done:
            done = bool(ray.wait([ref], timeout=POLL_S)[0])
            _relay(ctx, queue)
            if stop.is_set() and not done:
                raise Cancelled()
        _relay(ctx, queue)
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Diverged):
                raise Diverged(str(cause)) from None
            if isinstance(cause, LargestepError):
                raise LargestepError(str(cause)) from None
            message = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            raise LargestepError(f"the Ray task failed: {message.splitlines()[0][:1000]}") from None
        except ray.exceptions.TaskCancelledError:
            raise Cancelled() from None
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ActorDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OutOfMemoryError,
        ) as exc:
            raise Crashed(f"the Ray task died: {type(exc).__name__}: {str(exc).splitlines()[0][:500]}") from None
    finally:
        if ref is not None and not done:  # cancelled here (SIGTERM) or an error while waiting
            try:
                ray.cancel(ref, force=True)
            except Exception:  # the cluster may be gone too; the exit record says what happened
                pass
        ray.shutdown()


def _importable_everywhere() -> bool:
    """Is the engine installed (so every worker can import it) rather than run from a source tree?"""
    import importlib.metadata

    try:
        importlib.metadata.distribution("largestep")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _resources(cluster: dict, device: str, cpus: float) -> dict:
    """One GPU when the run wants CUDA and the cluster has GPUs; else the CPUs it needs."""
    gpus = cluster.get("GPU", 0)
    if device == "cuda" and gpus < 1:
        raise UsageError("--device cuda, but the Ray cluster has no GPU")
    if device == "cuda" or (device == "auto" and gpus >= 1):
        return {"num_gpus": 1}
    if cluster.get("CPU", 0) < cpus:
        raise UsageError(f"a task asks for {cpus} CPUs; the Ray cluster has {cluster.get('CPU', 0):g}")
    return {"num_cpus": cpus}


def _relay(ctx, queue) -> None:
    """Copy what the task sent into the local spool and status file."""
    from ray.util.queue import Empty

    while True:
        try:
            events, status = queue.get_nowait()
        except Empty:
            return
        for event in events:
            fields = {k: v for k, v in event.items() if k != "type"}
            ctx.spool.emit(event["type"], **fields)  # the task's own timestamp "t" is kept
        if status:
            ctx.spool.status(**{k: v for k, v in status.items() if k not in ("state", "pid", "pid_started")})
