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
    (job_dir / "spec.json").write_text(
        json.dumps(
            {
                "id": job_id,
                "kind": "profile",
                "device": "cpu",
                "workload": "tiny",
                "params": {},
                "created_at": time.time(),
                "home": str(home.root),
            }
        )
    )
    (job_dir / "status.json").write_text(json.dumps({"state": "RUNNING", "pid": pid, "heartbeat": time.time()}))
    return job_dir, jobs.Spool(job_dir)


def _point(profile_id, b):
    return dict(
        profile_id=profile_id,
        batch_size=b,
        status="ok",
        step_times_s=[0.01, 0.011, 0.012],
        median_s=0.011,
        p25_s=0.0105,
        p75_s=0.0115,
        samples_per_s=b / 0.011,
        peak_memory_bytes=1000 + b,
    )


def test_ingest_is_idempotent_and_resumes_from_its_offset(home):
    job_dir, spool = _fake_job(home)
    spool.emit(
        "profile_start",
        profile_id="prof-test0001",
        workload="tiny",
        device={"id": "cpu", "kind": "cpu", "name": "CPU"},
        config={"dtype": "fp32"},
    )
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
def test_a_finished_run_keeps_its_primary_metric_or_none_when_the_workload_has_no_metric(
    home, primary, metrics, expected
):
    job_dir, spool = _fake_job(home, job_id="train-test0001")
    spool.emit(
        "run_start",
        workload="tiny",
        config={"batch_size": 8, "lr": 0.1, "seed": 0},
        device={"id": "cpu", "kind": "cpu", "name": "CPU"},
        primary_metric=primary,
    )
    spool.emit(
        "metrics",
        rows=[
            {
                "step": 1,
                "epoch": 0.1,
                "samples": 8,
                "wall_time_s": 0.1,
                "train_time_s": 0.1,
                "train_loss": float("nan"),
                "lr": 0.1,
                "samples_per_s": None,
            }
        ],
    )
    spool.emit(
        "run_end",
        steps=1,
        samples=8,
        wall_time_s=0.2,
        train_time_s=0.1,
        final_val_loss=0.5,
        best_val_loss=0.5,
        final_metrics=metrics,
        stop_reason="epochs",
    )
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
    load = {
        "background_cpu_pct": 45.5,
        "background_cpu_p90_pct": 61.0,
        "background_gpu_processes": 2,
        "background_gpu_mem_bytes": 3 * 2**30,
    }
    job_dir, spool = _fake_job(home, job_id="train-test0002")
    spool.emit(
        "run_start",
        workload="tiny",
        config={"batch_size": 8, "lr": 0.1, "seed": 0},
        device={"id": "cpu", "kind": "cpu", "name": "CPU"},
    )
    spool.emit(
        "run_end",
        steps=1,
        samples=8,
        wall_time_s=0.2,
        train_time_s=0.1,
        final_val_loss=0.5,
        best_val_loss=0.5,
        final_metrics={},
        stop_reason="epochs",
        **load,
    )
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    job_dir, spool = _fake_job(home, job_id="prof-test0002")
    spool.emit(
        "profile_start",
        profile_id="prof-test0002",
        workload="tiny",
        device={"id": "cpu", "kind": "cpu"},
        config={"dtype": "fp32"},
    )
    spool.emit("point", **_point("prof-test0002", 8), **load)
    spool.emit(
        "telemetry",
        samples=[
            {
                "t": time.time(),
                "cpu_util_pct": 80.0,
                "other_cpu_pct": 45.5,
                "other_gpu_processes": 2,
                "other_gpu_mem_bytes": 3 * 2**30,
            }
        ],
    )
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    store.ingest(home)
    with store.connect(home) as con:
        [run] = store.runs_by_id(con, ["train-test0002"])
        assert {k: run[k] for k in load} == load
        [point] = store.frame_records(store.profile_points(con, "prof-test0002"))
        assert {k: point[k] for k in load} == load
        assert con.execute(
            "SELECT other_cpu_pct, other_gpu_processes, other_gpu_mem_bytes FROM telemetry "
            "WHERE job_id = 'prof-test0002'"
        ).fetchone() == (45.5, 2, 3 * 2**30)


def _long_run(home, job_id: str, steps: int, nan_at: int | None = None) -> None:
    """A run of ``steps`` logged steps, as track() and the training loop write them: some epochs missing, a metric
    left out now and then, an infinite loss; and a profile's telemetry of as many samples."""
    _, spool = _fake_job(home, job_id=job_id)
    spool.emit(
        "run_start",
        workload="tiny",
        config={"batch_size": 8, "lr": 0.1, "seed": 0},
        device={"id": "cpu", "kind": "cpu", "name": "CPU"},
    )
    rows = [
        {
            "step": s,
            "epoch": None if s % 7 == 0 else s / 100,
            "samples": 8 * s,
            "wall_time_s": s * 0.01,
            "train_time_s": s * 0.009,
            "train_loss": float("inf") if s == 5 else 1.0 / s,
            **({} if s % 3 == 0 else {"lr": 0.1}),
            "samples_per_s": None if s % 11 == 0 else 800.0 + s,
        }
        for s in range(1, steps + 1)
    ]
    if nan_at is not None:
        rows[nan_at]["samples_per_s"] = float("nan")
    for start in range(0, steps, 1000):
        spool.emit("metrics", rows=rows[start : start + 1000])
    spool.emit(
        "telemetry",
        samples=[
            {
                "t": 1.7e9 + s / 10,
                "batch_size": 8,
                "source": "psutil",
                "cpu_util_pct": 50.0,
                "rss_bytes": 2**30 + s,
                "gpu_util_pct": None,
            }
            for s in range(steps)
        ],
    )
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()


@pytest.mark.parametrize("nan_at", [None, 1234])
def test_a_long_runs_rows_are_the_same_whichever_way_they_go_to_duckdb(tmp_path, monkeypatch, nan_at):
    """A long run's metrics and telemetry go to DuckDB as NumPy arrays (fast), a short one's as bound lists: the
    rows stored are the same either way (NULL stays NULL, NaN and missing values are left out, infinity kept).
    Here every statement goes one way, then the other."""
    import importlib

    from largestep.home import Home

    ingest_module = importlib.import_module("largestep.store.ingest")
    as_arrays = []
    arrays = ingest_module._arrays
    monkeypatch.setattr(ingest_module, "_arrays", lambda columns: as_arrays.append(arrays(columns)) or as_arrays[-1])
    stored = {}
    for way, threshold in (("arrays", 1), ("lists", 10**12)):
        monkeypatch.setattr(ingest_module, "NUMPY_FROM_VALUES", threshold)
        home = Home(tmp_path / way)
        _long_run(home, "train-long0001", 2_000, nan_at)
        report = store.ingest(home)
        with store.connect(home) as con:
            stored[way] = {
                table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
                for table in ("metrics", "telemetry")
            }
        stored[way]["report"] = report.rows
    assert as_arrays, "the long run was not inserted as arrays"
    assert (nan_at is None) == all(a is not None for a in as_arrays)  # a NaN sends its statement as lists
    assert stored["arrays"] == stored["lists"]
    metrics = stored["arrays"]["metrics"]
    assert stored["arrays"]["report"] == {"runs": 1, "metrics": len(metrics), "telemetry": 2_000}
    assert len(metrics) == 2_000 + (2_000 - 2_000 // 3) + (2_000 - 2_000 // 11) - (nan_at is not None)
    epochs = {row[2] for row in metrics}
    assert None in epochs and not any(e != e for e in epochs if e is not None)  # missing epochs NULL, not NaN
    assert ("train_loss", float("inf")) in {(row[6], row[7]) for row in metrics}
