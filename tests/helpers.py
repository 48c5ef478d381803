"""What the tests share: the tiny workload's spec, running the CLI in-process, waiting for real job
processes, copying a prepared home, opening a dashboard page in an AppTest, and a scripted clock
that sets the step times the profiler sees."""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, NoReturn

import pytest

import torch
from streamlit.testing.v1 import AppTest

from largestep import jobs
from largestep.home import HOME_ENV, Home

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
APP = ROOT / "app" / "main.py"
TINY = f"{TESTS / 'tiny_workload.py'}:make"  # the tiny workload: seconds to profile or train
TINY_OOM = f"{TESTS / 'tiny_workload.py'}:make_oom"  # ... whose model runs out of memory above 64 samples


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``largestep ARGV`` in this process: (exit code, stdout, stderr)."""
    from largestep.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def unavailable(what: str) -> NoReturn:
    """A test that cannot run here: skipped on a developer's machine, saying what is missing; a failure in CI
    (``CI`` set, as ``.ci/run`` sets it), where ``./dev test`` installs every test dependency, so a test that
    cannot run never passes as one that ran."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run this test, not skip it")
    pytest.skip(what)


def required(module: str, install: str) -> ModuleType:
    """``import module`` for a test, or :func:`unavailable` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed ({install})")


def copy_home(template: Home, root: Path) -> Home:
    """A private copy of a prepared home (its database and job folders), for a test that changes it."""
    shutil.copytree(template.root, root, ignore=shutil.ignore_patterns("*.lock"))
    return Home(root)


def accept_load_if_asked(at: AppTest) -> AppTest:
    """Tick the Recommend page's "Accept the load" where its profile is untrusted (a real profile measured on a
    machine others share may be): for tests about what the page does with a recommendation."""
    if any(c.key == "recommend.accept_load" for c in at.checkbox):
        at.checkbox(key="recommend.accept_load").check().run()
    return at


def open_page(monkeypatch, home: Home, page: str, timeout: float = 60, cwd: Path | None = None) -> AppTest:
    """The app on ``home``, switched to ``sections/<page>.py``, asserted to render without an exception."""
    monkeypatch.setenv(HOME_ENV, str(home.root))
    if cwd is not None:
        monkeypatch.chdir(cwd)
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    at.switch_page(f"sections/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_finished(home: Home, job_id: str, timeout_s: float) -> None:
    """Wait for a real job process; fail with the tail of its log unless it FINISHED."""
    state = jobs.wait(home, job_id, timeout_s=timeout_s)
    log = (home.job_dir(job_id) / "output.log").read_text(errors="replace")
    assert state == jobs.FINISHED, f"job {job_id} ended {state}:\n{log[-3000:]}"


def wait_for(predicate: Callable[[], object], timeout: float = 90.0, poll_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def recommend_stored(home: Home, profile_id: str | None, config) -> dict:
    """The recommendation for a stored profile, as `largestep recommend --accept-load` makes it (not saved): a
    real profile measured on a machine others share may be untrusted, and the tests using this are about what
    follows from a recommendation, whatever the load was."""
    import dataclasses

    from largestep import store
    from largestep.plan.recommend import recommend

    with store.connect(home) as con:
        profile, noise = store.recommendation_inputs(con, profile_id, stored_noise=config.noise_scale is None)
    return recommend(profile, dataclasses.replace(config, accept_load=True), noise)


def first_time_at_or_below(evals, run_id: str, target: float) -> float | None:
    """Training time at a run's first evaluation (a row of store.run_evaluations) with a validation
    loss at or below ``target``; None if it never got there. Written apart from largestep.plan.compare,
    so tests can check that module's answers against it."""
    reached = evals[(evals["run_id"] == run_id) & (evals["val_loss"] <= target)].sort_values("step")
    return None if reached.empty else float(reached["train_time_s"].iloc[0])


def metric_rows_in_spool(home: Home, job_id: str) -> int:
    """The rows of the metrics table a job's spool should become: one per logged value of a
    metrics event, and per evaluation one for val_loss plus one per workload metric."""
    from largestep.jobs import events

    rows = 0
    for event in events.read_all(home.job_dir(job_id)):
        if event["type"] == "metrics":
            rows += sum(
                sum(1 for k in ("train_loss", "lr", "samples_per_s") if r.get(k) is not None) for r in event["rows"]
            )
        elif event["type"] == "eval":
            rows += 1 + len(event["metrics"])
    return rows


def spool_job(
    home: Home,
    job_id: str,
    kind: str,
    events: list[tuple[str, dict]],
    state: str | None = "FINISHED",
    spec: dict | None = None,
) -> Path:
    """A job folder written by the real spool writer, as a job process leaves it, without running one.

    ``events``: (type, fields) in order; ``state``: the exit record appended last (None: no exit, as
    a job still running or killed). For faults the process cannot produce on purpose (a bad line,
    a value the store refuses, a copied folder).
    """
    from largestep.jobs.spool import Spool, write_json_atomic

    home.ensure()
    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    write_json_atomic(
        job_dir / "spec.json",
        spec
        or {
            "id": job_id,
            "kind": kind,
            "device": "cpu",
            "workload": "tiny",
            "params": {},
            "created_at": time.time(),
            "home": str(home.root),
        },
    )
    spool = Spool(job_dir)
    spool.emit("start", kind=kind, pid=12345)
    for type_, fields in events:
        spool.emit(type_, **fields)
    if state is not None:
        spool.emit("exit", state=state, error=None)
        spool.status(state=state, pid=12345, phase="done", started_at=time.time(), ended_at=time.time())
    spool.close()
    return job_dir


def train_events(seed: int = 0, val_loss: float = 0.5) -> list[tuple[str, dict]]:
    """The events of a short, finished training run (run_start, one evaluation, run_end)."""
    config = {"batch_size": 32, "lr": 1e-3, "seed": seed, "accumulate": 1, "schedule": "constant", "dtype": "fp32"}
    return [
        (
            "run_start",
            {
                "config": config,
                "workload": "tiny",
                "device": {"id": "cpu", "kind": "cpu"},
                "epochs": 1.0,
                "primary_metric": "accuracy",
            },
        ),
        (
            "eval",
            {
                "step": 10,
                "epoch": 1.0,
                "samples": 320,
                "wall_time_s": 1.0,
                "train_time_s": 0.8,
                "val_loss": val_loss,
                "metrics": {"accuracy": 0.9},
            },
        ),
        (
            "run_end",
            {
                "steps": 10,
                "samples": 320,
                "epochs": 1.0,
                "wall_time_s": 1.0,
                "train_time_s": 0.8,
                "final_val_loss": val_loss,
                "best_val_loss": val_loss,
                "final_metrics": {"accuracy": 0.9},
            },
        ),
    ]


def profile_events(profile_id: str) -> list[tuple[str, dict]]:
    """The events of a finished profile of the tiny workload: step time flat up to batch 64, then linear."""
    device = {"id": "cpu", "kind": "cpu", "name": "test cpu", "total_memory_bytes": 8 * 2**30}
    start = (
        "profile_start",
        {
            "profile_id": profile_id,
            "workload": "tiny",
            "workload_spec": "tiny_workload.py:make",
            "device": device,
            "config": {"dtype": "fp32"},
            "baseline_batch_size": 32,
            "baseline_lr": 1e-3,
            "optimizer": "adam",
            "n_train": 2048,
            "epochs": 3,
        },
    )
    points = [
        (
            "point",
            {
                "profile_id": profile_id,
                "batch_size": b,
                "status": "ok",
                "step_times_s": [t] * 10,
                "median_s": t,
                "p25_s": t,
                "p75_s": t,
                "noisy": False,
                "samples_per_s": b / t,
                "peak_memory_bytes": 10_000 * b,
                "memory_is_estimate": True,
            },
        )
        for b, t in ((16, 0.010), (32, 0.010), (64, 0.011), (128, 0.021))
    ]
    end = ("profile_end", {"profile_id": profile_id, "stop_reason": "max_batch", "saturation_batch": 64})
    return [start, *points, end]


# -- a scripted clock for the profiler --------------------------------------------------------------------------


class ScriptedClock:
    """The profiler's clock, moved on only by a model's forward passes: the k-th step at a batch size
    (from 1) takes ``step_s(batch_size, k)`` seconds. So a test sets the step times the profiler's
    decisions see, exactly, whatever else runs on the machine. Pass :meth:`tag` as the profiler's
    ``telemetry_tag``: ``untimed`` then holds, for each visit, the steps its size had taken when its
    clock started."""

    def __init__(self, step_s: Callable[[int, int], float]):
        self.step_s, self.now = step_s, 0.0
        self.steps: dict[int, int] = {}
        self.untimed: list[int] = []

    def perf_counter(self) -> float:
        return self.now

    def forward_of(self, batch_size: int) -> None:
        self.steps[batch_size] = self.steps.get(batch_size, 0) + 1
        self.now += self.step_s(batch_size, self.steps[batch_size])

    def tag(self, batch_size: int | None) -> None:
        if batch_size is not None:  # the clock starts: every step so far at this size was untimed
            self.untimed.append(self.steps.get(batch_size, 0))


class _Clocked(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, clock: ScriptedClock):
        super().__init__()
        self.inner, self.clock = inner, clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.forward_of(x.shape[0])
        return self.inner(x)


def clocked(monkeypatch, step_s: Callable[[int, int], float], workload) -> tuple:
    """(``workload`` whose model's steps take ``step_s(batch size, k)`` on the profiler's clock, that clock)."""
    import dataclasses
    import types

    import largestep.measure.profiler as profiler

    clock = ScriptedClock(step_s)
    monkeypatch.setattr(profiler, "time", types.SimpleNamespace(perf_counter=clock.perf_counter, time=time.time))
    inner = workload.model
    return dataclasses.replace(workload, model=lambda: _Clocked(inner(), clock)), clock
