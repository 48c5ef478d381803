"""Data-parallel jobs on one machine: N rank processes, each taking a disjoint shard of every global batch.

The job process (``python -m largestep.jobs``) keeps its role: it holds the device locks, beats
the heartbeat, and writes the exit record. For ``nproc > 1`` its body calls :func:`run_ranks`,
which starts ``python -m largestep.jobs.torchrun JOB_DIR`` N times with the environment torchrun
would give each rank (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE) and waits. Each rank runs
the same job body (``train_task``, ``profile_task``) inside a process group (gloo on CPU, NCCL on
CUDA); only rank 0 appends to the spool's events, and it reports progress through
``rank0-status.json``, which the job process folds into ``status.json`` (one writer per file).

Not torchrun itself: its agent's rendezvous store (a TCPStore) listens on every network
interface, and torch offers no way to bind it to one. The ranks meet through a FileStore in the
job's folder instead, and their collectives' sockets are bound to the loopback interface, so a
single-machine run opens nothing another machine can reach.

A rank that dies ends the run, never hangs it: the job process stops the other ranks as soon as
one exits non-zero; a rank that fails (its own error, or out of memory) leaves at once rather than go
on to a collective its peers are not in; collectives carry a timeout; each rank dies with the job
process (PR_SET_PDEATHSIG). Each rank leaves ``rank-<r>.json`` with its state and error; a rank without
one died from a signal, and the job ends CRASHED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..about import module
from ..errors import Cancelled, Crashed, DeviceError, Diverged, LargestepError
from ..home import Home
from .runner import JobContext, resolve_body
from .spool import Spool, read_spec, write_json_atomic
from ..measure.devices_config import check_nproc, device_kind, lock_names  # noqa: F401  part of this API
from ..measure.distributed import RankOutOfMemory, loopback_interface, loopback_sockets  # noqa: F401  (this API's)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "check_nproc",
    "lock_names",
    "run_ranks",
    "rank_environment",
    "loopback_interface",
    "rank_status_path",
    "rank_main",
    "in_rank",
    "job_root_pid",
]

DEFAULT_TIMEOUT_S = 600.0  # a collective waiting longer than this fails the run (a rank hung or died)
RANK_STATUS = "rank0-status.json"
RANK_STORE = "rendezvous.store"  # the FileStore the ranks meet through
JOB_PID_ENV = "LARGESTEP_JOB_PID"  # the job process's pid, as its ranks see it
RANK_GRACE_S = 4.0  # after SIGTERM, how long the job waits for the ranks before SIGKILL
OUT_OF_MEMORY = "OUT_OF_MEMORY"  # a rank record's state: it ran out of memory and left (see RankOutOfMemory)


# -- checks made before a job is queued -------------------------------------------------------------


# -- the job process: launch the ranks, wait, explain the outcome --------------------------------------


def rank_status_path(job_dir: Path) -> Path:
    return Path(job_dir) / RANK_STATUS


def run_ranks(ctx, nproc: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Run this job's body in ``nproc`` rank processes; raise as the ranks ended.

    Raises :class:`largestep.errors.Crashed` when a rank died without an exit record, Diverged when
    the ranks agreed the loss diverged, LargestepError when a rank failed.
    """
    job_dir = Path(ctx.job_dir)
    for old in [*job_dir.glob("rank-*.json"), job_dir / RANK_STORE]:
        old.unlink(missing_ok=True)
    ctx.progress(f"starting {nproc} ranks", 0.0, nproc=nproc)
    ctx.spool.flush()  # the ranks append to the same events file: ours must be on disk first
    procs = _start_ranks(job_dir, nproc, timeout_s)
    try:
        last = None
        while (ended := _ranks_ended(procs)) is None:
            last = _forward_progress(ctx, job_dir, last)
            time.sleep(0.2)
        _forward_progress(ctx, job_dir, last)
    except BaseException:  # cancelled (SIGTERM): stop the ranks, give them a moment, then kill
        _stop(procs)
        raise
    finally:
        (job_dir / RANK_STORE).unlink(missing_ok=True)
    _explain(job_dir, nproc, ended.first_failed)


def rank_environment(nproc: int, rank: int, timeout_s: float) -> dict[str, str]:
    """What one rank process is started with: torchrun's variables, loopback-only sockets, its share of the cores."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        LARGESTEP_COLLECTIVE_TIMEOUT_S=str(timeout_s),
    )
    env[JOB_PID_ENV] = str(os.getpid())  # the root of the job's process tree: the ranks' load is not background
    # N ranks on one machine: share the cores instead of each taking them all
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return loopback_sockets(env)  # a user who set the interfaces knows their network better than we do


def _start_ranks(job_dir: Path, nproc: int, timeout_s: float) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", module("jobs.torchrun"), str(job_dir)]
    procs: list[subprocess.Popen] = []
    try:
        with open(job_dir / "output.log", "ab") as log:
            for rank in range(nproc):
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=rank_environment(nproc, rank, timeout_s),
                        cwd=os.getcwd(),
                    )
                )
    except BaseException:
        _stop(procs)
        raise
    return procs


@dataclass(frozen=True)
class _Ended:
    first_failed: int | None  # the rank whose non-zero exit ended the run; None: every rank finished


def _ranks_ended(procs: list[subprocess.Popen]) -> _Ended | None:
    """None while the run goes on; else how it ended. When one rank exits non-zero the ranks still
    running are stopped at once (as torchrun would): a peer left waiting in a collective would hang."""
    codes = [proc.poll() for proc in procs]
    failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
    if failed:
        _stop(procs)
        # a rank killed by a signal first: its peers, which lost it, may have exited (with an error) by the poll
        return _Ended(first_failed=min(failed, key=lambda rank: codes[rank] >= 0))
    return _Ended(first_failed=None) if all(code == 0 for code in codes) else None


def _explain(job_dir: Path, nproc: int, first_failed: int | None) -> None:
    """Raise as the ranks ended, naming the rank whose exit ended the run (the others were stopped)."""
    if first_failed is None:
        return
    records = {r: _read_json(job_dir / f"rank-{r}.json") for r in range(nproc)}
    # first: a rank out of memory left on purpose, and the ranks it left waiting were stopped (or killed)
    for r, record in records.items():
        if record is not None and record.get("state") == OUT_OF_MEMORY:
            raise RankOutOfMemory(record["batch_size"], record.get("error") or f"rank {r}: out of memory")
    states = {r: (record or {}).get("state") for r, record in records.items()}
    if (job_dir / "cancelled").exists() and not {"FAILED", "DIVERGED"} & set(states.values()):
        raise Cancelled()
    for record in records.values():
        if record and record.get("state") == "DIVERGED":
            raise Diverged(record.get("error") or "training diverged")
    if records[first_failed] is None:
        raise Crashed(
            f"rank {first_failed} of {nproc} died without an exit record (killed by a signal or the "
            f"system); the other ranks were stopped"
        )
    # the rank that failed first: a peer that lost it (a closed connection) fails after it, with an error of no use
    failed = sorted((records[r].get("ended_at") or float("inf"), r) for r, state in states.items() if state == "FAILED")
    r = failed[0][1] if failed else first_failed
    raise LargestepError(f"rank {r} of {nproc}: {records[r].get('error') or 'failed'}")


def _forward_progress(ctx, job_dir: Path, last: dict | None) -> dict | None:
    status = _read_json(rank_status_path(job_dir))
    if status and status != last:
        fields = {k: v for k, v in status.items() if k not in ("phase", "progress", "heartbeat")}
        ctx.progress(status.get("phase") or "running", status.get("progress"), **fields)
    return status


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every rank still running, then SIGKILL those that have not ended within the grace period."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + RANK_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- the rank process -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank when the job process goes, even by SIGKILL (no orphans holding a GPU)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _rank_spool(job_dir: Path, is_rank_zero: bool):
    class RankZeroSpool(Spool):
        """Rank 0 appends events like any job; its progress goes to its own file, not status.json."""

        def status(self, **fields: Any) -> None:
            with self._lock:
                self._status.update(fields)
                self._status["heartbeat"] = time.time()
                write_json_atomic(rank_status_path(self.dir), self._status)

    class QuietSpool:
        """Ranks other than 0 write nothing."""

        def emit(self, type_: str, **fields: Any) -> None:
            pass

        def flush(self) -> None:
            pass

        def status(self, **fields: Any) -> None:
            pass

        def close(self) -> None:
            pass

    if not is_rank_zero:
        return QuietSpool()
    spool = RankZeroSpool(job_dir)
    spool._status = {}
    return spool


class _Terminated(Exception):
    """The job process (a failed peer, or a cancel) asked this rank to stop."""


def rank_main(job_dir: Path) -> int:
    """The body of one rank: join the process group, run the job's body, leave ``rank-<r>.json``."""
    _die_with_parent()
    job_dir = Path(job_dir)
    spec = read_spec(job_dir)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    global_rank = int(os.environ.get("RANK", "0"))

    def on_term(_signum, _frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_term)
    state, error, batch_size = "FAILED", None, None
    try:
        params = spec["params"]
        kind = device_kind(params.get("device", "auto"))
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError("this rank sees no CUDA device")
            torch.cuda.set_device(local_rank)
            params["device"] = f"cuda:{local_rank}"
        else:
            params["device"] = "cpu"
        timeout = timedelta(seconds=float(os.environ.get("LARGESTEP_COLLECTIVE_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rendezvous = dist.FileStore(str(job_dir / RANK_STORE), world_size)
        dist.init_process_group(
            "nccl" if kind == "cuda" else "gloo",
            store=rendezvous,
            rank=global_rank,
            world_size=world_size,
            timeout=timeout,
        )
        spec["rank"] = global_rank
        spool = _rank_spool(job_dir, global_rank == 0)
        try:
            body = resolve_body(spec["kind"])
            body(JobContext(spec["id"], job_dir, Home(Path(spec["home"])), spec, spool))
        finally:
            spool.close()
        state = "FINISHED"
    except _Terminated:
        state, error = "KILLED", "stopped by the launcher"
    except RankOutOfMemory as exc:
        state, error, batch_size = OUT_OF_MEMORY, str(exc), exc.batch_size
    except Diverged as exc:
        state, error = "DIVERGED", str(exc) or "training diverged"
    except LargestepError as exc:
        state, error = "FAILED", str(exc)
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        state, error = "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the record must not be interrupted
        write_json_atomic(
            job_dir / f"rank-{global_rank}.json",
            {"state": state, "error": error, "pid": os.getpid(), "batch_size": batch_size, "ended_at": time.time()},
        )
        if state in (OUT_OF_MEMORY, "FAILED"):
            # leave at once: tearing down a group whose other ranks wait in a collective (the gradient all-reduce
            # this rank will never join) could block, and this rank's exit is what makes the job process stop them
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a broken group (a peer died) cannot always be torn down cleanly
                pass
    return 0 if state == "FINISHED" else 1


def job_root_pid() -> int:
    """The job's own process: this one, or in a rank the job process that started the ranks."""
    return int(os.environ.get(JOB_PID_ENV) or os.getpid())


def in_rank(ctx) -> bool:
    """Is this job body running inside a rank (rather than in the job process that launches them)?"""
    return "rank" in ctx.spec


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(
            "usage: python -m largestep.jobs.torchrun JOB_DIR (started by the job process, once per rank)",
            file=sys.stderr,
        )
        sys.exit(2)
    from .torchrun import rank_main as _rank_main  # the imported module's functions, not __main__'s

    sys.exit(_rank_main(Path(sys.argv[1])))
