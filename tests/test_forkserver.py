"""The warm launcher (largestep.jobs.forkserver): jobs forked from a process that has already imported torch
run exactly as fresh ones do, can be cancelled, never start twice, and fall back when it is gone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from helpers import run_cli, wait_finished, wait_for

from largestep import jobs
from largestep.home import Home
from largestep.jobs import events, forkserver, runner
from largestep.jobs import start as starts
from largestep.measure.profiler import ProfileConfig
from largestep.measure.train import TrainConfig

QUICK = TrainConfig(batch_size=32, lr=1e-2, max_steps=3, log_every_steps=1)
LONG = ProfileConfig(batch_sizes=(8, 16, 32, 64, 128), min_steps=3, min_seconds=3.0, warmup_steps=1)

# A workload whose model factory, called in the job, writes down the process it runs in.
SEEN_WORKLOAD = """
import json, os, sys
from pathlib import Path

import torch

from largestep import Workload


def make():
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    y = (x.sum(dim=1) > 0).long()

    def model():
        seen = {"cwd": os.getcwd(), "marker": os.environ.get("WARM_MARKER"), "ppid": os.getppid(),
                "sys_path": sys.path, "argv": sys.argv, "stdin": os.readlink("/proc/self/fd/0"),
                "session": os.getsid(0), "group": os.getpgid(0), "threads": torch.get_num_threads(),
                "unbuffered": os.environ.get("PYTHONUNBUFFERED"), "safe_path": os.environ.get("PYTHONSAFEPATH")}
        Path(__file__).with_name(f"seen-{os.getpid()}.json").write_text(json.dumps(seen))
        return torch.nn.Linear(4, 2)

    return Workload(name="seen", model=model, train=(x[:192], y[:192]), val=(x[192:], y[192:]),
                    loss=torch.nn.functional.cross_entropy, baseline_batch_size=32, baseline_lr=1e-2)
"""


def _launcher(home, not_pid: int | None = None) -> dict:
    """The home's one launcher (other than ``not_pid``), once it serves (it imports torch first)."""

    def serving() -> dict | None:
        return next((r for r in forkserver.running(home) if r["serving_since"] and r["pid"] != not_pid), None)

    assert wait_for(serving, 120), "no launcher started for the next job"
    return serving()


def _train(home, workload: str) -> tuple[str, int]:
    [job_id] = starts.start_train(home, workload, {}, "cpu", QUICK)
    return job_id, jobs.read_status(home.job_dir(job_id))["pid"]


def _event_types(home, job_id: str) -> list[str]:
    return [e["type"] for e in events.read_all(home.job_dir(job_id))]


@pytest.mark.slow
def test_a_forked_job_finishes_with_the_events_of_a_fresh_one_and_leaves_no_zombie(warm_home, tiny_spec, capsys):
    fresh, fresh_pid = _train(warm_home, tiny_spec)  # no launcher yet: a fresh process, and one starts
    wait_finished(warm_home, fresh, 120)
    launcher = _launcher(warm_home)
    code, out, _ = run_cli(capsys, "doctor", "--json")
    [check] = [c for c in json.loads(out)["checks"] if c["name"] == "warm launcher"]
    assert (
        code == 0
        and check["summary"].startswith("1 running")
        and f"pid {launcher['pid']}: serving" in check["details"][0]
    )
    forked, forked_pid = _train(warm_home, tiny_spec)
    assert psutil.Process(forked_pid).ppid() == launcher["pid"] != fresh_pid
    wait_finished(warm_home, forked, 120)
    assert _event_types(warm_home, forked) == _event_types(warm_home, fresh)
    [fresh_metrics, forked_metrics] = (events.last(warm_home.job_dir(j), events.METRICS) for j in (fresh, forked))
    assert fresh_metrics["rows"][0].keys() == forked_metrics["rows"][0].keys()
    # the launcher collects its ended jobs: none lingers as a zombie
    assert wait_for(lambda: not psutil.Process(launcher["pid"]).children(), 5)
    assert forkserver.stop(warm_home) == 1 and not forkserver.running(warm_home)
    assert wait_for(lambda: _ended(launcher["pid"]), 5)


@pytest.mark.slow
def test_a_forked_job_runs_in_the_submitters_folder_and_environment(warm_home, tmp_path, monkeypatch):
    (tmp_path / "seen.py").write_text(SEEN_WORKLOAD)
    workload = f"{tmp_path / 'seen.py'}:make"
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "first")
    monkeypatch.setenv("WARM_MARKER", "first")
    fresh, fresh_pid = _train(warm_home, workload)
    wait_finished(warm_home, fresh, 120)
    launcher = _launcher(warm_home)
    # the launcher was started from the first folder and environment; the next job is submitted from others
    monkeypatch.chdir(tmp_path / "second")
    monkeypatch.setenv("WARM_MARKER", "second")
    forked, forked_pid = _train(warm_home, workload)
    wait_finished(warm_home, forked, 120)
    seen = {pid: json.loads((tmp_path / f"seen-{pid}.json").read_text()) for pid in (fresh_pid, forked_pid)}
    assert seen[forked_pid]["ppid"] == launcher["pid"]
    assert (seen[forked_pid]["cwd"], seen[forked_pid]["marker"]) == (str(tmp_path / "second"), "second")
    assert (seen[fresh_pid]["cwd"], seen[fresh_pid]["marker"]) == (str(tmp_path / "first"), "first")
    assert seen[forked_pid]["session"] == seen[forked_pid]["group"] == forked_pid  # its own session and group
    assert str(tmp_path / "second") not in seen[forked_pid]["sys_path"]  # never the user's folder
    assert seen[forked_pid]["argv"] == [seen[fresh_pid]["argv"][0], str(warm_home.job_dir(forked))]
    for same in ("sys_path", "stdin", "threads", "unbuffered", "safe_path"):
        assert seen[forked_pid][same] == seen[fresh_pid][same], same


@pytest.mark.slow
def test_cancel_kills_a_forked_job_and_its_process_group(warm_home, tiny_spec):
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    launcher = _launcher(warm_home)
    job_id = starts.start_profile(warm_home, tiny_spec, {}, "cpu", LONG)
    pid = jobs.read_status(warm_home.job_dir(job_id))["pid"]
    assert psutil.Process(pid).ppid() == launcher["pid"]
    assert wait_for(lambda: (jobs.read_status(warm_home.job_dir(job_id)) or {}).get("state") == jobs.RUNNING)
    assert jobs.job_process(warm_home.job_dir(job_id)).pid == pid  # found by its folder, as a fresh job is
    assert jobs.cancel(warm_home, job_id)
    assert jobs.wait(warm_home, job_id, timeout_s=20) == jobs.KILLED
    assert wait_for(lambda: not any(p.info["pid"] == pid or _in_group(p, pid) for p in psutil.process_iter(["pid"])), 5)
    assert psutil.Process(launcher["pid"]).is_running()  # the launcher serves on


def _in_group(proc: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False


@pytest.mark.slow
def test_a_job_falls_back_to_a_fresh_process_when_the_launcher_was_killed(warm_home, tiny_spec):
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    killed = _launcher(warm_home)
    os.kill(killed["pid"], signal.SIGKILL)
    assert wait_for(lambda: not forkserver.running(warm_home), 5)
    started = time.monotonic()
    job_id, pid = _train(warm_home, tiny_spec)
    assert time.monotonic() - started < forkserver.ANSWER_S  # a dead launcher is not waited for
    assert psutil.Process(pid).ppid() == os.getpid()  # started afresh, by this process
    wait_finished(warm_home, job_id, 120)
    assert _launcher(warm_home, not_pid=killed["pid"])  # and a new launcher serves the next job


@pytest.mark.slow
def test_a_launcher_of_another_engine_version_is_not_used_and_exits(warm_home, tiny_spec, monkeypatch):
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    launcher = _launcher(warm_home)
    real_version = forkserver.source_version()
    # the engine's source changed since the launcher started: the submitter's key differs
    monkeypatch.setattr(forkserver, "source_version", lambda: "0ther-version")
    assert forkserver.fork_job(warm_home, warm_home.job_dir("x"), runner.job_environment(), os.getcwd()) is None
    assert psutil.Process(launcher["pid"]).status() != psutil.STATUS_ZOMBIE  # not even asked
    # and a launcher asked under its own key by a submitter of another version refuses and exits
    real_key = forkserver.launcher_key
    monkeypatch.setattr(forkserver, "launcher_key", lambda home, env, version=None: real_key(home, env, real_version))
    assert forkserver.fork_job(warm_home, warm_home.job_dir("x"), runner.job_environment(), os.getcwd()) is None
    assert wait_for(lambda: _ended(launcher["pid"]), 10)
    assert not forkserver.running(warm_home)


@pytest.mark.slow
def test_no_launcher_is_started_or_used_when_turned_off(home, tiny_spec, monkeypatch):
    monkeypatch.setenv(forkserver.WARM_ENV, "0")
    for _ in range(2):
        job_id, pid = _train(home, tiny_spec)
        assert psutil.Process(pid).ppid() == os.getpid()
        wait_finished(home, job_id, 120)
    assert not home.launchers.exists()
    assert not any(
        "largestep.jobs.forkserver" in " ".join(p.info["cmdline"] or [])
        and str(home.root) in " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["cmdline"])
    )


@pytest.mark.slow
def test_a_job_is_never_started_twice_when_its_submitter_gives_up(warm_home, tiny_spec, monkeypatch):
    """A child forked for a submitter that never says "go" (it timed out, or failed to record the pid) runs
    nothing and exits, so the fresh process the submitter falls back to is the job's only one."""
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    _launcher(warm_home)
    job_dir = warm_home.job_dir("abandoned")
    job_dir.mkdir()
    forked = forkserver.fork_job(warm_home, job_dir, runner.job_environment(), os.getcwd())
    assert forked is not None
    forked.abandon()
    assert wait_for(lambda: _ended(forked.pid), 10)
    assert not Path(job_dir / "events.jsonl").exists() and not (job_dir / "status.json").exists()


@pytest.mark.slow
def test_a_job_starts_afresh_when_the_launcher_does_not_answer_and_runs_once_when_it_wakes(warm_home, tiny_spec):
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    launcher = _launcher(warm_home)
    os.kill(launcher["pid"], signal.SIGSTOP)  # hung: it accepts nothing, answers nothing
    try:
        started = time.monotonic()
        job_id, pid = _train(warm_home, tiny_spec)
        assert forkserver.ANSWER_S <= time.monotonic() - started < forkserver.ANSWER_S + 5
        assert psutil.Process(pid).ppid() == os.getpid()  # started afresh
    finally:
        os.kill(launcher["pid"], signal.SIGCONT)
    wait_finished(warm_home, job_id, 120)
    # woken, the launcher forks the request it had queued; that child finds its submitter gone and runs nothing
    time.sleep(2 * forkserver.TICK_S)
    assert _event_types(warm_home, job_id).count(events.START) == 1
    assert jobs.read_status(warm_home.job_dir(job_id))["pid"] == pid
    assert wait_for(lambda: not psutil.Process(launcher["pid"]).children(), 10)


@pytest.mark.distributed
def test_a_forked_data_parallel_job_starts_its_ranks_and_finishes(warm_home, tiny_spec):
    wait_finished(warm_home, _train(warm_home, tiny_spec)[0], 120)
    launcher = _launcher(warm_home)
    config = TrainConfig(batch_size=32, lr=1e-2, max_steps=3, log_every_steps=1, nproc=2)
    [job_id] = starts.start_train(warm_home, tiny_spec, {}, "cpu", config)
    assert psutil.Process(jobs.read_status(warm_home.job_dir(job_id))["pid"]).ppid() == launcher["pid"]
    wait_finished(warm_home, job_id, 180)
    assert events.last(warm_home.job_dir(job_id), events.RUN_START)["world_size"] == 2


# -- what needs no process ---------------------------------------------------------------------------


def test_a_launcher_serves_only_the_environments_that_agree_on_what_is_read_while_importing(home, tmp_path):
    env = {"PATH": "/usr/bin", "PYTHONPATH": "/src", "PYTHONSAFEPATH": "1"}
    key = forkserver.launcher_key(home, env, version="v1")
    # what the child takes from its submitter (any other variable) does not need a launcher of its own
    assert forkserver.launcher_key(home, {**env, "CUDA_VISIBLE_DEVICES": "1", "WARM_MARKER": "x"}, "v1") == key
    # nor what torch writes into its own process's environment (a submitter that built a workload has the
    # inductor's cache folder set; its next command has not, and must find the launcher the first one started)
    assert forkserver.launcher_key(home, {**env, "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_u"}, "v1") == key
    for changed in (
        {"OMP_NUM_THREADS": "1"},
        {"PYTHONPATH": "/elsewhere"},
        {"TORCH_LOGS": "dynamo"},
        {"LD_PRELOAD": "libx.so"},
    ):
        assert forkserver.launcher_key(home, {**env, **changed}, "v1") != key, changed
    assert forkserver.launcher_key(home, env, "v2") != key
    assert forkserver.launcher_key(Home(tmp_path / "other"), env, "v1") != key


def test_a_job_submitting_jobs_gives_them_its_submitters_launcher(home, monkeypatch):
    # the autopilot submits its profile, noise estimate and runs from inside a job: their environment must be
    # the one the command's own jobs get, or its first child would start cold beside a second launcher
    monkeypatch.setenv("PYTHONPATH", "/user/src")
    from_the_command = runner.job_environment()
    assert from_the_command["PYTHONPATH"] == "/user/src" and from_the_command["PYTHONSAFEPATH"] == "1"
    monkeypatch.setattr(os, "environ", dict(from_the_command))  # now inside that job
    from_the_job = runner.job_environment()
    assert from_the_job == from_the_command
    assert forkserver.launcher_key(home, from_the_job, "v1") == forkserver.launcher_key(home, from_the_command, "v1")


def test_the_engine_version_changes_with_any_engine_source_file(tmp_path, monkeypatch):
    engine = tmp_path / "engine"
    (engine / "jobs").mkdir(parents=True)
    (engine / "jobs" / "runner.py").write_text("A = 1\n")
    monkeypatch.setattr(forkserver, "ENGINE_ROOT", engine)
    before = forkserver.source_version()
    assert forkserver.source_version() == before
    (engine / "jobs" / "runner.py").write_text("A = 22\n")
    edited = forkserver.source_version()
    assert edited != before
    (engine / "new.py").write_text("")
    assert forkserver.source_version() != edited


def test_a_forked_jobs_title_is_found_as_its_command_line():
    folder = "/tmp/a home/jobs/trai-1"
    assert runner.runs_job_dir(["/venv/bin/python", "-m", "largestep.jobs", folder], folder)  # a fresh job
    assert runner.runs_job_dir([f"/venv/bin/python -m largestep.jobs {folder}", "", ""], folder)  # a title
    assert runner.runs_job_dir(f"/venv/bin/python -m largestep.jobs {folder}".split(), folder)  # split at spaces
    assert not runner.runs_job_dir([f"/venv/bin/python -m largestep.jobs {folder}0"], folder)
    assert not runner.runs_job_dir(["/venv/bin/python", "-c", forkserver.LAUNCHER_MAIN, "/tmp/a home", "k"], folder)


def test_the_launcher_is_on_unless_turned_off():
    assert forkserver.enabled({}) and forkserver.enabled({forkserver.WARM_ENV: "1"})
    assert not forkserver.enabled({forkserver.WARM_ENV: "0"}) and not forkserver.enabled({forkserver.WARM_ENV: " 0"})


def test_a_fast_test_may_neither_ask_a_launcher_for_a_job_nor_start_one(home, monkeypatch):
    monkeypatch.setenv(forkserver.WARM_ENV, "1")
    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        jobs.submit(home, "train", {}, device="cpu")
    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        forkserver.start_in_background(home, runner.job_environment())
    assert not forkserver.running(home)


def _ended(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie its parent has yet to collect)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
