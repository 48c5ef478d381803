"""What the tests share: the tiny workload's spec, running the CLI in-process, waiting for real job
processes, copying a prepared home, and opening a dashboard page in an AppTest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.home import HOME_ENV, Home

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
APP = ROOT / "app" / "main.py"
TINY = f"{TESTS / 'tiny_workload.py'}:make"            # the tiny workload: seconds to profile or train
TINY_OOM = f"{TESTS / 'tiny_workload.py'}:make_oom"    # ... whose model runs out of memory above 64 samples


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``largestep ARGV`` in this process: (exit code, stdout, stderr)."""
    from engine.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def copy_home(template: Home, root: Path) -> Home:
    """A private copy of a prepared home (its database and job folders), for a test that changes it."""
    shutil.copytree(template.root, root, ignore=shutil.ignore_patterns("*.lock"))
    return Home(root)


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
    """The recommendation for a stored profile, as `largestep recommend` makes it (not saved)."""
    from engine import store
    from engine.plan.recommend import recommend

    with store.connect(home) as con:
        profile, noise = store.recommendation_inputs(con, profile_id, stored_noise=config.noise_scale is None)
    return recommend(profile, config, noise)


def first_time_at_or_below(evals, run_id: str, target: float) -> float | None:
    """Training time at a run's first evaluation (a row of store.run_evaluations) with a validation
    loss at or below ``target``; None if it never got there. Written apart from engine.plan.compare,
    so tests can check that module's answers against it."""
    reached = evals[(evals["run_id"] == run_id) & (evals["val_loss"] <= target)].sort_values("step")
    return None if reached.empty else float(reached["train_time_s"].iloc[0])


def metric_rows_in_spool(home: Home, job_id: str) -> int:
    """The rows of the metrics table a job's spool should become: one per logged value of a
    metrics event, and per evaluation one for val_loss plus one per workload metric."""
    import json

    rows = 0
    for line in (home.job_dir(job_id) / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "metrics":
            rows += sum(sum(1 for k in ("train_loss", "lr", "samples_per_s") if r.get(k) is not None)
                        for r in event["rows"])
        elif event["type"] == "eval":
            rows += 1 + len(event["metrics"])
    return rows
