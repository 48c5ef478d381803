"""Runs from the user's own training code: the user's process writes a training job's folder.

``largestep.track(...)`` opens a run that the store, ``largestep runs``, ``compare``, the Runs page
and the HTML report see as any training job's: ``spec.json`` of kind ``train``, a ``status.json``
with this process's pid and a heartbeat, and ``events.jsonl`` with the events of
:mod:`largestep.jobs.events` (run_start, metrics, metric_values, eval, run_end, exit). So its state
is derived as a job's is: RUNNING while the block runs, FINISHED or FAILED when it ends, CRASHED
when the process dies without an exit record.

``log`` never touches the database or the disk in the caller's thread: it checks its values and
appends a row in memory; the heartbeat thread hands the rows to the spool (which fsyncs them)
every second, or as soon as a batch of rows is pending.
"""

from __future__ import annotations

import atexit
import json
import math
import numbers
import os
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError
from ..home import Home
from ..measure.train_config import MAX_EPOCHS
from ..units import INT64_MAX, check_int, check_number
from . import events
from .runner import (
    FAILED,
    FINISHED,
    HEARTBEAT_S,
    RUNNING,
    TRACKED,
    _create_time,
    new_job_id,
    outcome_of,
)
from .spool import Spool, json_default, write_json_atomic

__all__ = ["TrackConfig", "TrackedRun", "role_for", "lr_for", "new_run_id", "ROLES", "EXTERNAL", "ROWS_PER_EVENT"]

EXTERNAL = "external"  # the role of a run not tied to a recommendation's batch
ROLES = (EXTERNAL, "baseline", "recommended")
ROWS_PER_EVENT = 500  # pending rows that wake the heartbeat thread to write them
RESERVED = frozenset({"wall_time_s", "train_time_s"})  # the run's clock sets these, never the caller
PRIMARY_METRIC_MODES = ("max", "min")
_TRAIN = frozenset(events.TRAIN_METRICS)  # a wide training row's metrics
_INDEX = frozenset({"epoch", "samples"})  # where a row sits, given by the caller


@dataclass(frozen=True)
class TrackConfig:
    """What a tracked run says about itself; validated before anything is written."""

    name: str  # the model or workload name, as runs are listed by
    batch_size: int  # global batch: samples per optimizer step, all processes together
    lr: float | None = None  # peak learning rate
    seed: int | None = None
    tags: tuple[str, ...] = ()
    accumulate: int = 1  # micro-batches per optimizer step
    world_size: int = 1  # data-parallel processes
    epochs: float | None = None  # planned training length, if known
    total_steps: int | None = None  # planned optimizer steps, if known: the run's progress bar
    group: str | None = None  # repeats of one config share a group
    primary_metric: str | None = None  # the validation metric compared across runs ("accuracy": val_accuracy)
    primary_metric_mode: str = "max"  # "max" | "min": which way the primary metric improves
    hyperparameters: dict = field(default_factory=dict)  # anything else the caller wants kept with the run

    def validate(self) -> None:
        """Every field against the bounds the CLI gives it and the column it lands in: a run the store
        could not hold would be set aside at ingest, its numbers never listed."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise UsageError(f"track: name must be a non-empty string, not {self.name!r}")
        check_int(self.batch_size, "track: batch_size")
        check_int(self.accumulate, "track: accumulate")
        check_int(self.world_size, "track: world_size")
        if self.total_steps is not None:
            check_int(self.total_steps, "track: total_steps", high=INT64_MAX)
        if self.lr is not None:
            check_number(self.lr, "track: lr", low=0)
        if self.epochs is not None:
            check_number(self.epochs, "track: epochs", low=0, high=MAX_EPOCHS)
        if self.seed is not None:
            check_int(self.seed, "track: seed", low=0)
        if not all(isinstance(tag, str) for tag in self.tags):
            raise UsageError(f"track: tags must be strings, not {list(self.tags)!r}")
        for what, value in (("group", self.group), ("primary_metric", self.primary_metric)):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"track: {what} must be a string or None, not {value!r}")
        if self.primary_metric_mode not in PRIMARY_METRIC_MODES:
            raise UsageError(f"track: primary_metric_mode must be 'max' or 'min', not {self.primary_metric_mode!r}")
        if not isinstance(self.hyperparameters, dict):
            raise UsageError(f"track: hyperparameters must be a dict, not {type(self.hyperparameters).__name__}")
        try:  # as the run's spec and events write them; NaN is refused, the database's JSON has none
            json.dumps(self.hyperparameters, default=json_default, allow_nan=False)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(
                f"track: hyperparameters must be JSON: numbers, strings, lists and dicts of them "
                f"({' '.join(str(exc).split())[:200]})"
            ) from None

    @property
    def micro_batch(self) -> int | None:
        """Samples per forward pass in one process, where the global batch splits evenly."""
        share = self.accumulate * self.world_size
        return self.batch_size // share if self.batch_size % share == 0 else None


def new_run_id() -> str:
    """An id for a run about to be tracked (a framework may need it before the run starts)."""
    return new_job_id("train")


def role_for(recommendation: dict | None, batch_size: int) -> str:
    """``baseline`` or ``recommended`` when the run matches that batch of its recommendation, else external."""
    if recommendation is None:
        return EXTERNAL
    if batch_size == recommendation["batch_size"]:
        return "recommended"
    if batch_size == recommendation["baseline"]["batch_size"]:
        return "baseline"
    return EXTERNAL


def lr_for(recommendation: dict | None, role: str) -> float | None:
    """The learning rate a recommendation gives the role's batch (None for an external run)."""
    if recommendation is None or role == EXTERNAL:
        return None
    return recommendation["learning_rate"] if role == "recommended" else recommendation["baseline"]["learning_rate"]


class TrackedRun:
    """One run of the user's own training code, spooled as a training job is.

    Use it as a context manager (``with largestep.track(...) as run``), or call :meth:`start` and
    :meth:`finish` where a framework's hooks bracket the training (the integrations do).
    """

    def __init__(
        self,
        home: Home,
        config: TrackConfig,
        device: str | None = None,
        recommendation: dict | None = None,
        run_id: str | None = None,
    ):
        config.validate()
        from ..measure import devices

        home.check()
        self.home, self.config = home, config
        self.device = devices.resolve_device(device)  # a bad device fails here, before anything is written
        self.role = role_for(recommendation, config.batch_size)
        self.recommendation_id = recommendation["recommendation_id"] if recommendation else None
        self.id = run_id or new_run_id()
        self.dir = home.job_dir(self.id)
        if self.dir.exists():
            raise UsageError(f"track: run {self.id} exists already in {home.jobs}; give each run its own id")
        self._spool: Spool | None = None
        self._lock = threading.Lock()  # guards the pending rows between the caller and the heartbeat
        self._rows: list[dict] = []  # wide training rows (events.TRAIN_METRICS)
        self._values: list[dict] = []  # long rows: validation metrics without a loss, other names
        self._evals: list[dict] = []  # eval events
        self._warned: set[str] = set()
        self._last_step: int | None = None
        self._last_samples: tuple[float, float] | None = None  # (clock, samples) at the last log that had them
        self._last_epoch: float | None = None
        self._final_val_loss: float | None = None
        self._best_val_loss: float | None = None
        self._final_metrics: dict[str, float] = {}
        self._last_loss: float | None = None
        self._start = 0.0
        self._paused_s = 0.0
        self._stop = threading.Event()  # the run is ending: the heartbeat thread stops
        self._wake = threading.Event()  # a full batch of rows is pending: write it now
        self._beat: threading.Thread | None = None
        self._sampler = None  # the background load while the run trains (telemetry.Sampler)
        self._owner_pid = os.getpid()
        self._state: str | None = None  # set once the run has ended

    @property
    def running(self) -> bool:
        """Started and not yet ended: ``log`` accepts rows."""
        return self._spool is not None and self._state is None

    # -- lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> "TrackedRun":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exc)
        return False  # the caller's exception goes on up: the run records it, it does not swallow it

    def start(self) -> "TrackedRun":
        """Write the run's folder (spec, status, run_start) and start its heartbeat."""
        from ..measure import devices, telemetry
        from ..measure.devices import versions

        if self._spool is not None:
            raise UsageError(f"run {self.id} has already started")
        self.home.ensure()
        self.dir.mkdir(parents=True)
        config = self._config_record()
        now = time.time()
        write_json_atomic(
            self.dir / "spec.json",
            {
                "id": self.id,
                "kind": "train",
                "device": str(self.device),
                "workload": self.config.name,
                "params": {"config": config, "role": self.role, "recommendation_id": self.recommendation_id},
                "created_at": now,
                "home": str(self.home.root),
                "locks": [],
                "launcher": TRACKED,
            },
        )
        self._spool = Spool(self.dir)
        self._spool.status(
            state=RUNNING,
            pid=os.getpid(),
            pid_started=_create_time(os.getpid()),
            phase="training (your code)",
            progress=None,
            started_at=now,
        )
        devices.reset_peak_memory(self.device)
        self._spool.emit(events.START, kind="train", pid=os.getpid())
        self._spool.emit(
            events.RUN_START,
            config=config,
            workload=self.config.name,
            device=devices.device_info(self.device).to_dict(),
            versions=versions(),
            launcher=TRACKED,
            role=self.role,
            recommendation_id=self.recommendation_id,
            primary_metric=self.config.primary_metric,
            primary_metric_mode=self.config.primary_metric_mode,
            epochs=self.config.epochs,
            total_steps=self.config.total_steps,
            micro_batch=self.config.micro_batch,
            world_size=self.config.world_size,
        )
        self._spool.flush()
        self._sampler = telemetry.Sampler(devices.device_info(self.device), interval_s=telemetry.RUN_INTERVAL_S).start()
        self._start = time.perf_counter()
        self._beat = threading.Thread(target=self._heartbeat, name=f"largestep-{self.id}", daemon=True)
        self._beat.start()
        atexit.register(self._at_exit)
        return self

    def finish(self, exc: BaseException | None = None, steps: int | None = None) -> str:
        """End the run: FINISHED, or the state ``exc`` stands for (FAILED with its one-line message).

        ``steps``: the optimizer steps taken, where a framework knows more than the last logged step.
        Idempotent: a run ends once.
        """
        if self._spool is None or self._state is not None:
            return self._state or FAILED
        done = exc is None or isinstance(exc, SystemExit) and exc.code in (None, 0)  # sys.exit(0): the program is done
        state, error = (FINISHED, None) if done else outcome_of(exc)
        self._end(state, error, steps)
        return state

    def _end(self, state: str, error: str | None, steps: int | None = None) -> None:
        from ..measure import devices, telemetry

        self._state = state
        self._stop.set()
        self._wake.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5 * HEARTBEAT_S)
        atexit.unregister(self._at_exit)
        wall = time.perf_counter() - self._start
        self._sampler.stop()
        self._hand_over()
        self._spool.emit(
            events.RUN_END,
            steps=max(steps or 0, self._last_step or 0),
            samples=self._last_samples[1] if self._last_samples else None,
            epochs=self._last_epoch,
            wall_time_s=wall,
            train_time_s=wall - self._paused_s,
            final_val_loss=self._final_val_loss,
            best_val_loss=self._best_val_loss,
            final_metrics=dict(self._final_metrics),
            reached_target=None,
            time_to_target_s=None,
            peak_memory_bytes=devices.peak_memory(self.device),
            stop_reason="finished" if state == FINISHED else state.lower(),
            **telemetry.background_load(self._sampler.samples),
        )
        self._spool.emit(events.EXIT, state=state, error=error)
        self._spool.status(state=state, phase="done", ended_at=time.time(), error=error)
        self._spool.close()

    def _at_exit(self) -> None:
        """The interpreter is exiting with the run still open (a framework that never said it ended)."""
        if os.getpid() != self._owner_pid or self._state is not None:
            return  # a forked child (a DataLoader worker) inherited this hook: the run is not its own
        last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)  # an uncaught exception
        if last is not None:
            self.finish(last)
        else:
            self._end(FAILED, "the process exited before the run was finished")

    # -- logging --------------------------------------------------------------------------------

    def log(self, step: int, **metrics: Any) -> None:
        """Record metrics at optimizer step ``step`` (steps never go backwards).

        Names: ``train_loss``, ``lr``, ``samples_per_s``, ``val_loss``, ``val_<metric>``, ``epoch``,
        ``samples`` (default ``step x batch_size``; samples/s follows from it), or any other name,
        kept as a metric of its own. A value that is not a finite number is recorded as missing,
        with one warning per name; it never raises into the training loop. The rows wait in
        memory: the heartbeat thread writes them, so the loop never waits on the disk.
        """
        if not self.running:
            raise UsageError(f"run {self.id} is not running: log inside the `with largestep.track(...)` block")
        step = self._check_step(step)
        now = time.perf_counter()
        index = {
            "step": step,
            "epoch": None,
            "samples": None,
            "wall_time_s": now - self._start,
            "train_time_s": now - self._start - self._paused_s,
        }
        train: dict[str, float | None] = {}
        validation: dict[str, float | None] = {}
        others: dict[str, float | None] = {}
        for name, value in metrics.items():
            number = self._number(name, value, step)
            if name in _TRAIN:
                train[name] = number
            elif name in _INDEX:
                index[name] = number
            elif name.startswith("val_"):
                validation[name] = number
            elif name in RESERVED:
                raise UsageError(f"log: {name} is measured by the run itself; log under another name")
            else:
                others[name] = number
        if index["samples"] is None:
            index["samples"] = step * self.config.batch_size
        if train and "samples_per_s" not in train:
            train["samples_per_s"] = self._throughput(now, index["samples"])
        self._last_samples = (now, index["samples"])
        if index["epoch"] is not None:
            self._last_epoch = index["epoch"]
        if train.get("train_loss") is not None:
            self._last_loss = train["train_loss"]
        with self._lock:
            if train:
                self._rows.append({**index, **train})
            if "val_loss" in validation:
                self._add_evaluation(index, validation)
            else:
                others.update(validation)
            if others:
                self._values.extend({**index, "name": name, "value": value} for name, value in others.items())
            pending = len(self._rows) + len(self._values)
        if pending >= ROWS_PER_EVENT:
            self._wake.set()  # the heartbeat thread writes them now rather than at its next beat

    def paused(self) -> "_Paused":
        """``with run.paused():`` evaluation or checkpointing that must not count as training time."""
        return _Paused(self)

    def _check_step(self, step: Any) -> int:
        if type(step) is not int and (isinstance(step, bool) or not isinstance(step, numbers.Integral)) or step < 0:
            raise UsageError(f"log: step must be a non-negative integer (the optimizer step), not {step!r}")
        step = int(step)
        if self._last_step is not None and step < self._last_step:
            raise UsageError(
                f"log: step {step} comes after step {self._last_step}; steps must not go backwards "
                "(log the global optimizer step, not a step within an epoch)"
            )
        self._last_step = step
        return step

    def _number(self, name: str, value: Any, step: int) -> float | None:
        """``value`` as a finite float, or None with one warning per metric name."""
        if type(value) is float or type(value) is int:  # the common case first: a loop calls this every step
            number = float(value)
        else:
            number = _as_float(value)
        if number is not None and math.isfinite(number):
            return number
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"largestep: {name}={value!r} at step {step} is not a finite number; recorded as missing "
                f"(this warning is shown once per metric)",
                RuntimeWarning,
                stacklevel=3,
            )
        return None

    def _throughput(self, now: float, samples: float | None) -> float | None:
        if samples is None:
            return None
        then, before = self._last_samples if self._last_samples else (self._start, 0.0)
        elapsed = now - then
        return (samples - before) / elapsed if elapsed > 0 and samples > before else None

    def _add_evaluation(self, index: dict, validation: dict) -> None:
        val_loss = validation.pop("val_loss")
        metrics = {name[len("val_") :]: value for name, value in validation.items()}
        self._evals.append({**index, "val_loss": val_loss, "metrics": metrics})
        if val_loss is not None:
            self._final_val_loss = val_loss
            self._best_val_loss = val_loss if self._best_val_loss is None else min(self._best_val_loss, val_loss)
        self._final_metrics.update({k: v for k, v in metrics.items() if v is not None})

    def _hand_over(self) -> None:
        """Move the pending rows to the spool, as few events as there are kinds of row."""
        with self._lock:
            rows, values, evals = self._rows, self._values, self._evals
            self._rows, self._values, self._evals = [], [], []
        if rows:
            self._spool.emit(events.METRICS, rows=rows)
        if values:
            self._spool.emit(events.METRIC_VALUES, rows=values)
        for evaluation in evals:
            self._spool.emit(events.EVAL, **evaluation)

    def _heartbeat(self) -> None:
        """Write pending rows every second (sooner when ``log`` has a full batch) and beat."""
        last_beat = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()
            if self._stop.is_set():
                return  # the run is ending: _end writes what is left
            try:
                self._hand_over()
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    self._spool.status(phase=self._status_phase(), progress=self._progress())
                    self._spool.flush()
                    last_beat = time.monotonic()
            except (OSError, ValueError):  # the spool closed while the run was ending
                return

    def _status_phase(self) -> str:
        if self._last_step is None:
            return "training (your code)"
        loss = f", train loss {self._last_loss:.4g}" if self._last_loss is not None else ""
        return f"step {self._last_step}{loss}"

    def _progress(self) -> float | None:
        if not self.config.total_steps:
            return None
        return min(1.0, (self._last_step or 0) / self.config.total_steps)

    def _config_record(self) -> dict:
        config = asdict(self.config)
        config["tags"] = list(self.config.tags)
        config["micro_batch"] = self.config.micro_batch
        return config


class _Paused:
    """Stops a tracked run's training clock for the duration of a block."""

    def __init__(self, run: TrackedRun):
        self.run = run

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc) -> bool:
        self.run._paused_s += time.perf_counter() - self.started
        return False


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: Any) -> float | None:
    """A number, a NumPy scalar or a one-element tensor as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if _is_real(value):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()  # a tensor on a GPU synchronises here, as .item() in the caller's loop would
        except (ValueError, RuntimeError):  # more than one element
            return None
        return float(value) if _is_real(value) else None
    return None
