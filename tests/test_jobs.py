"""Jobs as real processes: SIGKILL leaves a CRASHED job with its flushed rows; cancel; the device queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import wait_for

from largestep import jobs, store
from largestep.jobs import start as starts
from largestep.measure.profiler import ProfileConfig
from largestep.measure.train import TrainConfig

SLOW = ProfileConfig(batch_sizes=(8, 16, 32, 64, 128), min_steps=3, min_seconds=3.0, warmup_steps=1)


def _points_spooled(home, job_id, kind="point"):
    text = (home.job_dir(job_id) / "events.jsonl").read_text()
    return text.count(f'"type": "{kind}"')


@pytest.mark.slow
def test_a_job_killed_with_sigkill_is_crashed_and_keeps_what_it_flushed(home, tiny_spec):
    job_id = starts.start_profile(home, tiny_spec, {}, "cpu", SLOW)
    # a point and a batch of telemetry samples written (the sampler's thread flushes every second: on a busy
    # machine the first point may be spooled before it)
    assert wait_for(lambda: _points_spooled(home, job_id) >= 1 and _points_spooled(home, job_id, "telemetry") >= 1), (
        "the job measured nothing"
    )
    pid = jobs.read_status(home.job_dir(job_id))["pid"]
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: jobs.derive_state(home.job_dir(job_id)) == jobs.CRASHED, 10)
    flushed = _points_spooled(home, job_id)
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, job_id)
        points = store.profile_points(con, job_id)
        telemetry = store.profile_telemetry(con, job_id)
    assert job["state"] == "CRASHED" and job["ended_at"] is not None
    assert len(points) == flushed >= 1
    assert (points.status == "ok").all()
    assert len(telemetry) > 0  # samples flushed before the kill are kept too


@pytest.mark.slow
def test_cancel_stops_a_running_job_as_killed(home, tiny_spec):
    job_id = starts.start_profile(home, tiny_spec, {}, "cpu", SLOW)
    assert wait_for(lambda: (jobs.read_status(home.job_dir(job_id)) or {}).get("state") == jobs.RUNNING)
    assert jobs.cancel(home, job_id)
    assert jobs.wait(home, job_id, timeout_s=20) == jobs.KILLED
    store.ingest(home)
    with store.connect(home) as con:
        assert store.get_job(con, job_id)["state"] == "KILLED"
    assert not jobs.cancel(home, job_id)  # already over


@pytest.mark.slow
def test_one_job_at_a_time_per_device_and_a_cancelled_queued_job_never_starts(home, tiny_spec):
    first = starts.start_profile(home, tiny_spec, {}, "cpu", SLOW)
    assert wait_for(lambda: (jobs.read_status(home.job_dir(first)) or {}).get("state") == jobs.RUNNING)
    second = starts.start_profile(home, tiny_spec, {}, "cpu", SLOW)
    time.sleep(2.0)
    assert jobs.derive_state(home.job_dir(second)) == jobs.PENDING
    assert jobs.cancel(home, second)
    assert jobs.wait(home, second, timeout_s=20) == jobs.KILLED
    assert '"type": "start"' not in (home.job_dir(second) / "events.jsonl").read_text()
    jobs.cancel(home, first)
    jobs.wait(home, first, timeout_s=20)


def _started_at(home, job_id) -> float:
    for line in (home.job_dir(job_id) / "events.jsonl").read_text().splitlines():
        if '"type": "start"' in line:
            return json.loads(line)["t"]
    raise AssertionError(f"{job_id} never started")


@pytest.mark.slow
def test_queued_jobs_on_one_device_start_in_the_order_they_were_submitted(home, tiny_spec):
    quick = ProfileConfig(batch_sizes=(8,), min_steps=2, min_seconds=0.0, warmup_steps=1)
    queued = [starts.start_profile(home, tiny_spec, {}, "cpu", quick) for _ in range(3)]  # all at once
    for job_id in queued:
        assert jobs.wait(home, job_id, timeout_s=120) == jobs.FINISHED
    started = [_started_at(home, job_id) for job_id in queued]
    assert started == sorted(started), "a later job overtook an earlier one in the device's queue"


BROKEN_WORKLOAD = """
import torch
from largestep import Workload


class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        if torch.is_grad_enabled():  # a step of training, not the check before the job is written
            raise RuntimeError("shape mismatch in layer 3 (planted)")
        return self.linear(x)


def make():
    x, y = torch.randn(256, 4), torch.randint(0, 2, (256,))
    return Workload(name="broken", model=Broken, train=(x[:192], y[:192]), val=(x[192:], y[192:]),
                    loss=torch.nn.functional.cross_entropy, baseline_batch_size=32, baseline_lr=1e-2)
"""


@pytest.mark.slow
def test_a_run_whose_model_raises_ends_failed_with_the_error(home, tmp_path):
    workload = tmp_path / "broken.py"
    workload.write_text(BROKEN_WORKLOAD)
    [run] = starts.start_train(home, f"{workload}:make", {}, "cpu", TrainConfig(batch_size=32, lr=1e-2, epochs=1))
    assert jobs.wait(home, run, timeout_s=60) == jobs.FAILED
    assert "shape mismatch in layer 3" in (home.job_dir(run) / "output.log").read_text()  # the traceback, for the user
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, run)
        listed = store.frame_records(store.list_runs(con))
    assert job["state"] == "FAILED" and job["error"] == "RuntimeError: shape mismatch in layer 3 (planted)"
    assert [(r["id"], r["state"]) for r in listed] == [(run, "FAILED")]


@pytest.mark.slow
def test_a_live_job_whose_heartbeat_went_stale_is_crashed(home, tiny_spec, monkeypatch):
    from largestep.jobs import runner

    job_id = starts.start_profile(home, tiny_spec, {}, "cpu", SLOW)
    job_dir = home.job_dir(job_id)
    assert wait_for(lambda: (jobs.read_status(job_dir) or {}).get("state") == jobs.RUNNING)
    pid = jobs.read_status(job_dir)["pid"]
    os.killpg(pid, signal.SIGSTOP)  # hung: the process lives on, its heartbeat thread stops
    try:
        beat = jobs.read_status(job_dir)["heartbeat"]
        assert jobs.derive_state(job_dir, now=beat + runner.STALE_AFTER_S - 1) == jobs.RUNNING
        assert jobs.derive_state(job_dir, now=beat + runner.STALE_AFTER_S + 1) == jobs.CRASHED
        # ingest, as every command runs it, with a short limit instead of waiting two minutes
        monkeypatch.setattr(runner, "STALE_AFTER_S", 2.0)
        assert wait_for(lambda: time.time() - jobs.read_status(job_dir)["heartbeat"] > 2.5, 10)
        assert os.path.exists(f"/proc/{pid}")  # still there, only silent
        store.ingest(home)
        with store.connect(home) as con:
            assert store.get_job(con, job_id)["state"] == "CRASHED"
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_a_pause_between_looks_at_a_job_ends_as_its_process_does(tmp_path):
    from largestep.jobs.spool import write_json_atomic

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    start = time.monotonic()
    jobs.pause(job_dir, 0.05)  # no status yet: a plain sleep
    assert time.monotonic() - start >= 0.05
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        write_json_atomic(job_dir / "status.json", {"pid": sleeper.pid, "state": jobs.RUNNING})
        start = time.monotonic()
        jobs.pause(job_dir, 30.0)
        assert time.monotonic() - start < 15.0  # it ended with the process, not after its 30 s
        assert sleeper.wait(5) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow  # seconds: it loads and tries the workload for each of seven requests
def test_every_kind_of_job_that_touches_a_gpu_holds_that_gpus_lock(home, tiny_spec, monkeypatch):
    """Each kind of job, submitted for cuda:0, and the locks its runner takes: the GPU's (named by UUID) for every
    job that runs on it, so that none of them times another or runs out of memory beside it; the autopilot alone
    waits on a lock of its own, as it only orchestrates children that each take the GPU's."""
    from fake_nvml import cuda_properties, install_fake_cuda

    from largestep.jobs import forkserver, runner
    from largestep.jobs.autopilot import AutopilotConfig
    from largestep.measure.devices_config import lock_name

    install_fake_cuda(monkeypatch, [cuda_properties("6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")])
    monkeypatch.setattr(forkserver, "enabled", lambda env: False)
    monkeypatch.setattr(runner, "_start_fresh", lambda job_id, job_dir, env: os.getpid())  # written, not started
    gpu = lock_name("cuda:0")
    assert gpu == "cuda:GPU-6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f"
    rec = {"workload_spec": tiny_spec, "workload": "tiny", "batch_size": 64, "learning_rate": 0.01}
    submitted = {
        "profile": starts.start_profile(home, tiny_spec, {}, "cuda:0", ProfileConfig(batch_sizes=(32,))),
        "noise": starts.start_noise(home, tiny_spec, {}, "cuda:0", batch_small=32, batch_big=64, warm_steps=0),
        "noise_curve": starts.start_noise_curve(
            home, tiny_spec, {}, "cuda:0", (0.0, 1.0), batch_small=32, batch_big=64
        ),
        "stability": starts.start_stability(home, rec, "cuda:0"),
        "train": starts.start_train(home, tiny_spec, {}, "cuda:0", TrainConfig(batch_size=64, lr=0.01))[0],
        "train (batch schedule)": starts.start_train(
            home, tiny_spec, {}, "cuda:0", TrainConfig(batch_size=32, lr=0.01, batch_schedule=((32, 0.0), (64, 0.5)))
        )[0],
        "autopilot": starts.start_autopilot(home, tiny_spec, {}, "cuda:0", AutopilotConfig()),
    }
    locks = {kind: runner._lock_names(jobs.read_spec(home.job_dir(job_id))) for kind, job_id in submitted.items()}
    assert set(locks) >= set(runner._KINDS) - {"ray"}  # every kind of job there is (a Ray task takes the cluster's)
    assert locks == {**{kind: {gpu} for kind in submitted}, "autopilot": {"autopilot-cuda:0"}}
