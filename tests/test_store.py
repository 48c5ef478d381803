"""The DuckDB store: migrations, refusing foreign files, and idempotent ingest of spools."""

from __future__ import annotations

import json
import os
import time

import duckdb
import pytest

from largestep import jobs, store
from largestep.errors import StoreError


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def test_migrating_an_empty_database_creates_every_table(home):
    with store.connect(home) as con:
        assert {"devices", "jobs", "profiles", "profile_points", "telemetry"} <= _tables(con)
        assert store.applied_migrations(con) == [name for name, _ in store.MIGRATIONS]
        assert store.migrate(con) == []  # a second run has nothing to do


def test_migrating_an_old_database_keeps_its_rows(home):
    home.ensure()
    con = duckdb.connect(str(home.database))
    store.migrate(con, store.MIGRATIONS[:1])  # a database from before profiles existed
    con.execute("INSERT INTO jobs (id, kind, state) VALUES ('prof-old', 'profile', 'FINISHED')")
    con.close()
    store._migrated.discard(home.database)
    with store.connect(home) as con:
        assert "profile_points" in _tables(con)
        assert con.execute("SELECT id, state FROM jobs").fetchall() == [("prof-old", "FINISHED")]
        assert len(store.applied_migrations(con)) == len(store.MIGRATIONS)


def test_a_file_that_is_not_duckdb_is_refused_and_left_alone(home):
    home.ensure()
    home.database.write_text("my precious notes\n")
    with pytest.raises(StoreError, match="not a DuckDB database"):
        with store.connect(home):
            pass
    assert home.database.read_text() == "my precious notes\n"


def _fake_job(home, job_id="prof-test0001", pid=None):
    """A job folder as a real job leaves it, written through the real Spool."""
    home.ensure()
    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps({"id": job_id, "kind": "profile", "device": "cpu",
                                                    "workload": "tiny", "params": {}, "created_at": time.time(),
                                                    "home": str(home.root)}))
    (job_dir / "status.json").write_text(json.dumps({"state": "RUNNING", "pid": pid, "heartbeat": time.time()}))
    return job_dir, jobs.Spool(job_dir)


def _point(profile_id, b):
    return dict(profile_id=profile_id, batch_size=b, status="ok", step_times_s=[0.01, 0.011, 0.012],
                median_s=0.011, p25_s=0.0105, p75_s=0.0115, samples_per_s=b / 0.011, peak_memory_bytes=1000 + b)


def test_ingest_is_idempotent_and_resumes_from_its_offset(home):
    job_dir, spool = _fake_job(home)
    spool.emit("profile_start", profile_id="prof-test0001", workload="tiny", device={"id": "cpu", "kind": "cpu",
               "name": "CPU"}, config={"dtype": "fp32"})
    spool.emit("point", **_point("prof-test0001", 8))
    spool.emit("telemetry", samples=[{"t": time.time(), "cpu_util_pct": 50.0, "batch_size": 8}])
    spool.flush()
    store.ingest(home)
    store.ingest(home)  # again: nothing new, nothing doubled
    spool.emit("point", **_point("prof-test0001", 16))
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    report = store.ingest(home)
    assert report.rows == {"profile_points": 1}
    store.ingest(home)
    with store.connect(home) as con:
        points = store.profile_points(con, "prof-test0001")
        assert list(points.batch_size) == [8, 16]
        assert list(points.step_times_s.iloc[0]) == [0.01, 0.011, 0.012]
        assert con.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 1
        job = store.get_job(con, "prof-test0001")
        assert job["state"] == "FINISHED"
        assert job["spool_offset"] == (job_dir / "events.jsonl").stat().st_size


def test_a_batch_sizes_later_point_replaces_the_earlier_even_in_one_ingest(home):
    """An interleaved profile spools each size's first-pass point, then the point its rounds make of it."""
    _, spool = _fake_job(home)
    spool.emit("profile_start", profile_id="prof-test0003", workload="tiny", device={}, config={})
    spool.emit("point", **_point("prof-test0003", 8))
    spool.emit("point", **{**_point("prof-test0003", 8), "median_s": 0.02, "visits": 3})
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    store.ingest(home)
    with store.connect(home) as con:
        [point] = store.profile_points(con, "prof-test0003").to_dict("records")
    assert (point["median_s"], point["visits"]) == (0.02, 3)


def test_a_cut_off_last_line_is_ingested_once_it_is_complete(home):
    job_dir, spool = _fake_job(home, pid=None)
    spool.emit("profile_start", profile_id="prof-test0001", workload="tiny", device={}, config={})
    spool.emit("point", **_point("prof-test0001", 8))
    spool.close()
    whole = json.dumps({"type": "point", "t": time.time(), **_point("prof-test0001", 16)}) + "\n"
    with open(job_dir / "events.jsonl", "a") as fh:
        fh.write(whole[:40])  # a job died mid-write, a minute ago (beyond the grace period of a job without a pid)
    a_minute_ago = time.time() - 60
    (job_dir / "status.json").write_text(json.dumps({"state": "RUNNING", "pid": None, "heartbeat": a_minute_ago}))
    for path in job_dir.iterdir():
        os.utime(path, (a_minute_ago, a_minute_ago))
    store.ingest(home)
    with store.connect(home) as con:
        assert list(store.profile_points(con, "prof-test0001").batch_size) == [8]
        assert store.get_job(con, "prof-test0001")["state"] == "CRASHED"  # no live pid, no exit record
    with open(job_dir / "events.jsonl", "a") as fh:
        fh.write(whole[40:])
    store.ingest(home)
    with store.connect(home) as con:
        assert list(store.profile_points(con, "prof-test0001").batch_size) == [8, 16]


def test_connections_wait_for_each_other_instead_of_failing(home):
    import threading

    with store.connect(home):
        pass
    errors, counts = [], []
    connected = threading.Event()

    def reader():
        try:
            with store.connect(home) as con:
                connected.set()
                counts.append(con.execute("SELECT count(*) FROM jobs").fetchone()[0])
        except Exception as exc:  # the test fails on any error, lock errors above all
            errors.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    with store.connect(home) as con:
        thread.start()
        assert not connected.wait(0.5), "a second connection opened while the first held the database"
        con.execute("INSERT INTO jobs (id, kind, state) VALUES ('x', 'profile', 'FINISHED')")
    thread.join(10)
    assert not thread.is_alive(), "the waiting reader never got the database"
    assert not errors, errors
    assert counts == [1]  # it waited for the writer, then saw the committed row


@pytest.mark.parametrize("primary, metrics, expected", [("accuracy", {"accuracy": 0.75}, 0.75), (None, {}, None)])
def test_a_finished_run_keeps_its_primary_metric_or_none_when_the_workload_has_no_metric(home, primary, metrics,
                                                                                           expected):
    job_dir, spool = _fake_job(home, job_id="train-test0001")
    spool.emit("run_start", workload="tiny", config={"batch_size": 8, "lr": 0.1, "seed": 0},
               device={"id": "cpu", "kind": "cpu", "name": "CPU"}, primary_metric=primary)
    spool.emit("metrics", rows=[{"step": 1, "epoch": 0.1, "samples": 8, "wall_time_s": 0.1, "train_time_s": 0.1,
                                 "train_loss": float("nan"), "lr": 0.1, "samples_per_s": None}])
    spool.emit("run_end", steps=1, samples=8, wall_time_s=0.2, train_time_s=0.1, final_val_loss=0.5,
               best_val_loss=0.5, final_metrics=metrics, stop_reason="epochs")
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    report = store.ingest(home)
    assert report.skipped_lines == 0  # a NaN loss (which orjson refuses) is a readable line
    with store.connect(home) as con:
        run = store.get_run(con, "train-test0001")
        assert run["state"] == "FINISHED" and run["final_primary_metric"] == expected
        assert run["final_val_loss"] == 0.5
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", ["train-test0001"]).fetchone()[0] == 1


def test_the_background_load_of_a_run_a_point_and_each_sample_is_stored(home):
    """What a job measured of other processes lands beside the run, the point and the telemetry."""
    load = {"background_cpu_pct": 45.5, "background_cpu_p90_pct": 61.0, "background_gpu_processes": 2,
            "background_gpu_mem_bytes": 3 * 2**30}
    job_dir, spool = _fake_job(home, job_id="train-test0002")
    spool.emit("run_start", workload="tiny", config={"batch_size": 8, "lr": 0.1, "seed": 0},
               device={"id": "cpu", "kind": "cpu", "name": "CPU"})
    spool.emit("run_end", steps=1, samples=8, wall_time_s=0.2, train_time_s=0.1, final_val_loss=0.5,
               best_val_loss=0.5, final_metrics={}, stop_reason="epochs", **load)
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    job_dir, spool = _fake_job(home, job_id="prof-test0002")
    spool.emit("profile_start", profile_id="prof-test0002", workload="tiny", device={"id": "cpu", "kind": "cpu"},
               config={"dtype": "fp32"})
    spool.emit("point", **_point("prof-test0002", 8), **load)
    spool.emit("telemetry", samples=[{"t": time.time(), "cpu_util_pct": 80.0, "other_cpu_pct": 45.5,
                                      "other_gpu_processes": 2, "other_gpu_mem_bytes": 3 * 2**30}])
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    store.ingest(home)
    with store.connect(home) as con:
        [run] = store.runs_by_id(con, ["train-test0002"])
        assert {k: run[k] for k in load} == load
        [point] = store.frame_records(store.profile_points(con, "prof-test0002"))
        assert {k: point[k] for k in load} == load
        assert con.execute("SELECT other_cpu_pct, other_gpu_processes, other_gpu_mem_bytes FROM telemetry "
                           "WHERE job_id = 'prof-test0002'").fetchone() == (45.5, 2, 3 * 2**30)
