"""Runs sent to a real Ray cluster (a local ``ray.init(num_cpus=2)``), relayed into the local spool.

The job processes connect to this module's cluster as drivers, as they would to a remote one.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from helpers import metric_rows_in_spool, required, wait_for

from largestep import jobs, store
from largestep.errors import UsageError
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig

pytestmark = [pytest.mark.ray]

RAY = ("ray", "pip install 'largestep[ray]'")  # an optional extra; the test extra installs it


@pytest.fixture
def ray_installed():
    """Ray, or a skip saying how to install it (in CI, a failure: see helpers.unavailable)."""
    return required(*RAY)


needs_ray = pytest.mark.usefixtures("ray_installed")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 2 CPUs, no dashboard."""
    ray = required(*RAY)
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield {"kind": "ray", "address": context.address_info["gcs_address"]}
    finally:
        ray.shutdown()


def _worker_pid(home, job_id) -> int | None:
    return (jobs.read_status(home.job_dir(job_id)) or {}).get("worker_pid")


def _log(home, job_id) -> str:
    return (home.job_dir(job_id) / "output.log").read_text()[-3000:]


@needs_ray
def test_two_runs_on_the_cluster_side_by_side_are_ingested_as_local_ones(home, tiny_spec, cluster):
    config = TrainConfig(batch_size=64, lr=1e-2, epochs=1)
    run_ids = starts.start_train(home, tiny_spec, {}, "cpu", config, repeats=2, launcher=cluster)
    states = [jobs.wait(home, run_id, timeout_s=120) for run_id in run_ids]
    assert states == [jobs.FINISHED] * 2, _log(home, run_ids[0])
    for run_id in run_ids:  # the work ran in a Ray worker, not in the job process
        assert _worker_pid(home, run_id) not in (None, jobs.read_status(home.job_dir(run_id))["pid"])
    store.ingest(home)
    with store.connect(home) as con:
        runs = [store.get_run(con, run_id) for run_id in run_ids]
        metrics = store.run_metrics(con, run_ids, ["train_loss", "val_loss"])
    assert [r["state"] for r in runs] == ["FINISHED", "FINISHED"]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["group_id"] == runs[1]["group_id"]
    assert all(r["final_val_loss"] is not None and r["steps"] == 2048 // 64 for r in runs)
    assert set(metrics["run_id"]) == set(run_ids) and (metrics["name"] == "val_loss").sum() == 2


def _long_run_logging_on_ray(home, tiny_spec, cluster) -> str:
    """A run on the cluster far from its end, once it has logged metrics."""
    config = TrainConfig(batch_size=32, lr=1e-2, epochs=10_000)
    [run_id] = starts.start_train(home, tiny_spec, {}, "cpu", config, launcher=cluster)
    job_dir = home.job_dir(run_id)
    assert wait_for(lambda: '"type": "metrics"' in (job_dir / "events.jsonl").read_text()), _log(home, run_id)
    return run_id


@needs_ray
def test_cancel_stops_the_ray_task_and_the_run_is_killed(home, tiny_spec, cluster):
    run_id = _long_run_logging_on_ray(home, tiny_spec, cluster)
    worker = _worker_pid(home, run_id)
    assert jobs.cancel(home, run_id)
    assert jobs.wait(home, run_id, timeout_s=30) == jobs.KILLED
    assert wait_for(lambda: not psutil.pid_exists(worker), 30), "the Ray worker still runs the cancelled task"
    store.ingest(home)
    with store.connect(home) as con:
        assert store.get_job(con, run_id)["state"] == "KILLED"


@needs_ray
def test_a_ray_task_that_dies_is_crashed(home, tiny_spec, cluster):
    run_id = _long_run_logging_on_ray(home, tiny_spec, cluster)
    os.kill(_worker_pid(home, run_id), signal.SIGKILL)
    assert jobs.wait(home, run_id, timeout_s=60) == jobs.CRASHED, _log(home, run_id)
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, run_id)
        run = store.get_run(con, run_id)
        stored = con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [run_id]).fetchone()[0]
    assert job["state"] == "CRASHED" and "died" in job["error"]
    # what the task reported before it died was kept: the run as started, and every metric spooled
    assert (run["state"], run["batch_size"], run["lr"], run["seed"]) == ("CRASHED", 32, 1e-2, 0)
    assert stored == metric_rows_in_spool(home, run_id) > 0


def test_without_ray_the_launcher_says_how_to_install_it(home, capsys, monkeypatch):
    import sys

    from largestep.cli import main
    from largestep.jobs.ray import check_launcher

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(UsageError, match=r"install it with: pip install 'largestep\[ray\]'"):
        check_launcher({"kind": "ray"}, "auto")
    assert main(["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--launcher", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "largestep: error: --launcher ray needs Ray, which is not installed; install it with: "
        "pip install 'largestep[ray]'"
    )


@needs_ray
def test_ray_refuses_what_it_cannot_run(home, tiny_spec):
    with pytest.raises(UsageError, match="do not combine"):
        starts.start_train(
            home, tiny_spec, {}, "cpu", TrainConfig(batch_size=64, lr=1e-2, nproc=2), launcher={"kind": "ray"}
        )
    with pytest.raises(UsageError, match="auto, cpu or cuda"):
        starts.start_train(home, tiny_spec, {}, "cuda:1", TrainConfig(batch_size=64, lr=1e-2), launcher={"kind": "ray"})
