"""Shared fixtures: an empty home per test, one profiled home and one autopilot for the whole session,
the markers that let the fast tests run alone, and a guard that no test leaves a job process behind.

Markers (pyproject.toml): ``slow`` for anything that starts a real job process or takes more than about a
second; ``e2e``, ``browser``, ``distributed``, ``ray``, ``integration`` say why. ``./dev test -m "not slow"``
runs the fast tests alone. A test that is not marked slow may not start a job (the guard below fails it),
and a test that uses one of the prepared homes is slow by construction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from helpers import ROOT, TINY, TINY_OOM, copy_home, wait_finished  # noqa: F401  (TINY_OOM: for test modules)

# Jobs start afresh in the tests, as they always could: a warm launcher per test home would import torch
# once more for every test that starts a job. The tests of the launcher turn it on (``warm_home``).
os.environ.setdefault("LARGESTEP_WARM_LAUNCHER", "0")

# Fixtures that run real jobs: any test using one is slow.
SLOW_FIXTURES = {
    "warm_home",
    "profiled_template",
    "profiled_home",
    "autopilot_run",
    "autopilot_home",
    "rec_home",
    "verified_home",
    "runs_home",
    "two_rank_run",
    "cluster",
    "dashboard",
}
WHY_SLOW = ("e2e", "browser", "distributed", "ray", "integration")
PROFILED_BATCHES = (8, 32, 128, 512)  # the session's profile of the tiny workload (baseline 32)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or any(item.get_closest_marker(m) for m in WHY_SLOW):
            item.add_marker(pytest.mark.slow)


# -- homes -----------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home in a temporary folder, also set as $LARGESTEP_HOME for subprocesses."""
    from largestep.home import Home

    root = tmp_path / "home"
    monkeypatch.setenv("LARGESTEP_HOME", str(root))
    return Home(root)


@pytest.fixture
def warm_home(home, monkeypatch):
    """An empty home whose jobs start through a warm launcher; every launcher started for it is ended, by
    the pid its record names, when the test ends."""
    from largestep.jobs import forkserver

    monkeypatch.setenv(forkserver.WARM_ENV, "1")
    yield home
    forkserver.stop(home)


@pytest.fixture
def tiny_spec() -> str:
    return TINY


@pytest.fixture(scope="session")
def profiled_template(tmp_path_factory):
    """One real profile of the tiny workload at PROFILED_BATCHES, measured once for the session by a
    real job process. Tests get a private copy (``profiled_home``): never change this one."""
    from largestep import store
    from largestep.home import Home
    from largestep.jobs.start import start_profile
    from largestep.measure.profiler import ProfileConfig

    home = Home(tmp_path_factory.mktemp("profiled") / "home")
    config = ProfileConfig(batch_sizes=PROFILED_BATCHES, min_steps=3, min_seconds=0.05, warmup_steps=1)
    job_id = start_profile(home, TINY, {}, "cpu", config)
    wait_finished(home, job_id, timeout_s=180)
    store.ingest(home)
    return home, job_id


@pytest.fixture
def profiled_home(profiled_template, tmp_path, monkeypatch):
    """(home, profile id): a private copy of the session's profiled home, also $LARGESTEP_HOME."""
    template, profile_id = profiled_template
    home = copy_home(template, tmp_path / "home")
    monkeypatch.setenv("LARGESTEP_HOME", str(home.root))
    return home, profile_id


@pytest.fixture(scope="session")
def autopilot_run(tmp_path_factory):
    """One whole `largestep autopilot --json` of the tiny workload (2 seeds an arm, 2 epochs), run once for
    the session from the command line: (home, exit code, the JSON document, stderr). Both arms are trained
    whatever is recommended (--arms), and from the profile even if it was measured under load (--accept-load:
    the wait for a quiet window is tests/test_trust.py's), so the outcome does not hang on how busy the machine
    was."""
    from largestep import store
    from largestep.home import Home

    home = Home(tmp_path_factory.mktemp("autopilot") / "home")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "largestep.cli",
            "--home",
            str(home.root),
            "autopilot",
            "--workload",
            TINY,
            "--repeats",
            "2",
            "--epochs",
            "2",
            "--arms",
            "baseline,recommended",
            "--accept-load",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    store.ingest(home)
    document = json.loads(proc.stdout) if proc.returncode == 0 else None
    return home, proc.returncode, document, proc.stderr


@pytest.fixture
def autopilot_home(autopilot_run, tmp_path, monkeypatch):
    """(home, autopilot id): a private copy of the session's finished autopilot, also $LARGESTEP_HOME."""
    template, code, document, stderr = autopilot_run
    assert code == 0, stderr[-3000:]
    home = copy_home(template, tmp_path / "home")
    monkeypatch.setenv("LARGESTEP_HOME", str(home.root))
    return home, document["autopilot_id"]


# -- guards ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_tests_start_no_job(request, monkeypatch):
    """A test not marked slow must not start a job process: it would not be fast, and it would load the
    machine the other tests measure on. (Everything before the process starts, the checks included, runs.)"""
    if request.node.get_closest_marker("slow"):
        return
    import subprocess
    import types

    from largestep.jobs import forkserver, runner

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a job process: mark it @pytest.mark.slow")

    no_processes = types.SimpleNamespace(
        **{name: getattr(subprocess, name) for name in dir(subprocess) if not name.startswith("__")}
    )
    no_processes.Popen = refuse
    monkeypatch.setattr(runner, "subprocess", no_processes)
    monkeypatch.setattr(forkserver, "subprocess", no_processes)  # nor a warm launcher,
    monkeypatch.setattr(forkserver, "fork_job", refuse)  # nor ask a running one for a job


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(tmp_path):
    """Whatever a test leaves running under its folder (a job it did not wait for, a test stopped by its
    timeout) is killed with its whole process group, so it cannot go on loading the machine."""
    yield
    _kill_jobs_under(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _no_job_outlives_the_session(tmp_path_factory):
    yield
    _kill_jobs_under(tmp_path_factory.getbasetemp())


def _kill_jobs_under(folder: Path) -> None:
    marker = str(folder)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        # (a job forked by a warm launcher shows its command line as one title: split it at its spaces)
        cmdline = " ".join(proc.info.get("cmdline") or []).split()
        if proc.info["pid"] == os.getpid() or not any(marker in part for part in cmdline):
            continue
        if not (
            any(part in ("largestep.jobs", "largestep.jobs.torchrun") for part in cmdline)
            or any("largestep.jobs.forkserver" in part for part in cmdline)
        ):  # a job, or a warm launcher
            continue
        try:
            os.killpg(proc.info["pid"], signal.SIGKILL)  # a job leads its own session: its ranks go too
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except psutil.Error:
                pass
