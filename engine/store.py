"""All of largestep's SQL: the schema and its migrations, ingest of job spools, and queries.

DuckDB lets one process write a database file, or several read it, never both. Every reader
and writer here opens a short-lived connection under a cross-process file lock, retries on
DuckDB's own lock error (another program holding the file), and closes it again. Values are
always bound parameters; bulk rows go in as DataFrames, never row by row.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import orjson
import pandas as pd
from filelock import FileLock, Timeout

from engine import jobs as jobs_mod
from engine.errors import StoreError
from engine.home import Home

__all__ = [
    "MIGRATIONS", "connect", "migrate", "applied_migrations", "check_database_file", "ingest",
    "IngestReport", "list_profiles", "load_profile", "profile_points", "profile_telemetry",
    "list_jobs", "get_job", "list_devices", "register_event_handler", "load_noise", "list_noise_estimates", "load_stability",
    "save_recommendation", "load_recommendation", "list_recommendations", "list_runs", "get_run", "runs_in",
    "run_evaluations", "run_metrics", "load_autopilot",
]

DUCKDB_MAGIC = b"DUCK"          # bytes 8..12 of every DuckDB database file
LOCK_TIMEOUT_S = 120.0          # how long to wait for another largestep process to finish
OPEN_RETRIES = 40               # how often to retry DuckDB's own lock error (another program)

# -- schema --------------------------------------------------------------------------------------

MIGRATIONS: list[tuple[str, str]] = [
    ("001_devices_and_jobs", """
        CREATE TABLE devices (
            id VARCHAR PRIMARY KEY,          -- "cpu", "cuda:<uuid>", "mps"
            kind VARCHAR NOT NULL,           -- cpu | cuda | mps
            name VARCHAR,
            total_memory_bytes BIGINT,
            compute_capability VARCHAR,
            uuid VARCHAR,
            cores INTEGER,
            host VARCHAR,
            first_seen TIMESTAMPTZ,
            last_seen TIMESTAMPTZ
        );
        CREATE TABLE jobs (
            id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,           -- profile | train | noise | autopilot ...
            state VARCHAR NOT NULL,          -- PENDING RUNNING FINISHED FAILED KILLED DIVERGED CRASHED
            workload VARCHAR,
            device VARCHAR,
            created_at TIMESTAMPTZ,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            heartbeat_at TIMESTAMPTZ,
            pid INTEGER,
            phase VARCHAR,
            progress DOUBLE,
            error VARCHAR,
            spec JSON,
            spool_offset BIGINT NOT NULL DEFAULT 0   -- bytes of events.jsonl already ingested
        );
    """),
    ("002_profiles", """
        CREATE TABLE profiles (
            id VARCHAR PRIMARY KEY,          -- the job id of the profiling job
            job_id VARCHAR NOT NULL,
            workload VARCHAR NOT NULL,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            device_name VARCHAR,
            device_kind VARCHAR,
            dtype VARCHAR,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            stop_reason VARCHAR,             -- max | list | dataset | oom | over_budget | plateau | error
            saturation_batch INTEGER,        -- smallest batch reaching 90% of the best throughput
            memory_fit_intercept_bytes DOUBLE,
            memory_fit_slope_bytes DOUBLE,   -- peak memory ~ intercept + slope * batch
            memory_budget_bytes BIGINT,
            baseline_batch_size INTEGER,
            baseline_lr DOUBLE,
            optimizer VARCHAR,
            epochs INTEGER,
            n_train BIGINT,
            telemetry_source VARCHAR,        -- nvml | psutil
            telemetry_reason VARCHAR,        -- why not nvml
            config JSON,
            versions JSON
        );
        CREATE TABLE profile_points (
            profile_id VARCHAR NOT NULL,
            batch_size INTEGER NOT NULL,
            status VARCHAR NOT NULL,         -- ok | oom | over_budget | error
            step_times_s DOUBLE[],           -- raw timed steps
            median_s DOUBLE,
            p25_s DOUBLE,
            p75_s DOUBLE,
            n INTEGER,
            noisy BOOLEAN,
            samples_per_s DOUBLE,
            peak_memory_bytes BIGINT,
            memory_is_estimate BOOLEAN,      -- CPU: parameters + grads + optimizer state + activations
            predicted_memory_bytes BIGINT,
            flops_per_step DOUBLE,
            flops_per_s DOUBLE,
            mean_power_w DOUBLE,
            energy_per_sample_j DOUBLE,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            error VARCHAR,
            PRIMARY KEY (profile_id, batch_size)
        );
        CREATE TABLE telemetry (
            job_id VARCHAR NOT NULL,
            t TIMESTAMPTZ NOT NULL,
            batch_size INTEGER,              -- the batch being timed when sampled, if any
            source VARCHAR,                  -- nvml | psutil
            gpu_util_pct DOUBLE,
            mem_used_bytes BIGINT,
            power_w DOUBLE,
            sm_clock_mhz DOUBLE,
            temp_c DOUBLE,
            cpu_util_pct DOUBLE,
            rss_bytes BIGINT
        );
        CREATE INDEX telemetry_job ON telemetry (job_id);
    """),
    ("003_noise_and_recommendations", """
        ALTER TABLE profiles ADD COLUMN warmup_samples BIGINT;
        ALTER TABLE profiles ADD COLUMN weight_decay DOUBLE;
        CREATE TABLE noise_estimates (
            id VARCHAR PRIMARY KEY,          -- the job id of the estimating job
            workload VARCHAR,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            created_at TIMESTAMPTZ,
            b_simple DOUBLE,                 -- tr(Sigma) / |G|^2; NULL when unreliable
            ci_low DOUBLE,
            ci_high DOUBLE,
            g2 DOUBLE,                       -- the |G|^2 estimate
            trace_sigma DOUBLE,              -- the tr(Sigma) estimate
            g_small_sq DOUBLE,
            g_big_sq DOUBLE,
            batch_small INTEGER,
            batch_big INTEGER,
            batches INTEGER,
            warm_steps INTEGER,
            unreliable BOOLEAN,
            reason VARCHAR,
            elapsed_s DOUBLE,
            step_equivalents DOUBLE
        );
        CREATE TABLE stability_checks (
            id VARCHAR PRIMARY KEY,          -- the job id
            batch_size INTEGER,
            recommended_lr DOUBLE,
            diverged_at_lr DOUBLE,
            max_stable_lr DOUBLE,
            stable BOOLEAN,
            lrs DOUBLE[],
            losses DOUBLE[]
        );
        CREATE TABLE recommendations (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ,
            profile_id VARCHAR,
            noise_id VARCHAR,
            stability_id VARCHAR,
            workload VARCHAR,
            device_id VARCHAR,
            batch_size INTEGER,
            learning_rate DOUBLE,
            warmup_steps INTEGER,
            rule VARCHAR,                    -- linear | sqrt
            baseline_batch_size INTEGER,
            baseline_lr DOUBLE,
            noise_scale DOUBLE,
            speedup_throughput DOUBLE,       -- predicted, from throughput alone
            speedup_time_to_target DOUBLE,   -- predicted, with the noise scale (or perfect scaling)
            experiments_per_day_baseline DOUBLE,
            experiments_per_day_recommended DOUBLE,
            document JSON                    -- the whole recommendation, as exported
        );
        CREATE TABLE recommendation_candidates (
            recommendation_id VARCHAR NOT NULL,
            batch_size INTEGER NOT NULL,
            learning_rate DOUBLE,
            step_time_s DOUBLE,
            samples_per_s DOUBLE,
            peak_memory_bytes BIGINT,
            time_ratio DOUBLE,               -- predicted T(B) / T(baseline)
            speedup_time_to_target DOUBLE,
            speedup_throughput DOUBLE,
            run_time_s DOUBLE,
            eligible BOOLEAN,
            excluded VARCHAR,
            rank INTEGER,
            PRIMARY KEY (recommendation_id, batch_size)
        );
    """),
    ("004_runs", """
        CREATE TABLE runs (
            id VARCHAR PRIMARY KEY,          -- the job id of the training job; its state is jobs.state
            group_id VARCHAR,                -- repeats of one config (other seeds) share a group
            role VARCHAR,                    -- baseline | recommended | NULL
            recommendation_id VARCHAR,
            workload VARCHAR,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            device_name VARCHAR,
            batch_size INTEGER,              -- global batch: micro_batch_size x accumulate
            micro_batch_size INTEGER,
            accumulate INTEGER,
            lr DOUBLE,
            warmup_samples BIGINT,
            epochs DOUBLE,
            schedule VARCHAR,
            dtype VARCHAR,
            seed INTEGER,
            target_val_loss DOUBLE,
            tags VARCHAR[],
            primary_metric VARCHAR,          -- the validation metric compared between runs
            primary_metric_mode VARCHAR,     -- max | min
            n_params BIGINT,
            total_steps BIGINT,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            steps BIGINT,
            samples BIGINT,
            wall_time_s DOUBLE,              -- evaluation included
            train_time_s DOUBLE,             -- evaluation excluded
            final_val_loss DOUBLE,
            best_val_loss DOUBLE,
            final_metrics JSON,
            final_primary_metric DOUBLE,
            reached_target BOOLEAN,
            time_to_target_s DOUBLE,
            peak_memory_bytes BIGINT,
            stop_reason VARCHAR,
            config JSON,
            versions JSON
        );
        CREATE TABLE metrics (
            run_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            epoch DOUBLE,
            samples BIGINT,
            wall_time_s DOUBLE,
            train_time_s DOUBLE,
            name VARCHAR NOT NULL,           -- train_loss, lr, samples_per_s, val_loss, val_<metric>
            value DOUBLE
        );
        CREATE INDEX metrics_run ON metrics (run_id);
    """),
    ("005_autopilots", """
        CREATE TABLE autopilots (
            id VARCHAR PRIMARY KEY,          -- the job id of the orchestrating job
            workload VARCHAR,
            phase VARCHAR,                   -- profile, noise scale, recommendation, baseline runs, ...
            profile_id VARCHAR,
            noise_id VARCHAR,
            recommendation_id VARCHAR,
            baseline_runs VARCHAR[],
            recommended_runs VARCHAR[],
            headline JSON,                   -- measured and predicted speedup, metric difference, p-value
            comparison JSON,
            updated_at TIMESTAMPTZ
        );
    """),
]


# -- connections ---------------------------------------------------------------------------------


def check_database_file(path: Path) -> None:
    """Refuse a file at the database path that is not a DuckDB database; never overwrite it."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a DuckDB database; choose another --home")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, "rb") as fh:
            header = fh.read(12)
    except OSError as exc:
        raise StoreError(f"cannot read database {path}: {exc.strerror or exc}") from None
    if header[8:12] != DUCKDB_MAGIC:
        raise StoreError(f"{path} is not a DuckDB database; refusing to touch it (move it away or choose another --home)")


_migrated: set[Path] = set()


@contextmanager
def connect(home: Home, migrate_schema: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection under the cross-process lock; closed on exit."""
    home.ensure()
    check_database_file(home.database)
    lock = FileLock(str(home.lock), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(f"database {home.database} stayed locked for {LOCK_TIMEOUT_S:.0f}s; is a largestep command stuck?") from None
    try:
        con = _open(home.database)
        try:
            if migrate_schema and home.database not in _migrated:
                migrate(con)
                _migrated.add(home.database)
            yield con
        finally:
            con.close()
    finally:
        lock.release()


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    delay = 0.05
    for _ in range(OPEN_RETRIES):
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            # Another program (a user's duckdb shell, say) holds DuckDB's own lock: wait and retry.
            if "lock" not in str(exc).lower():
                raise StoreError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None
    raise StoreError(f"database {path} is locked by another program; close it and try again")


def migrate(con: duckdb.DuckDBPyConnection, migrations: list[tuple[str, str]] | None = None) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
    done = set(applied_migrations(con))
    applied = []
    for name, sql in migrations if migrations is not None else MIGRATIONS:
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]


# -- ingest --------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    jobs_seen: int = 0
    events: int = 0
    skipped_lines: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    def add_rows(self, table: str, n: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + n


EventHandler = Callable[[duckdb.DuckDBPyConnection, str, list[dict], IngestReport], None]
_HANDLERS: dict[str, EventHandler] = {}


def register_event_handler(event_type: str, handler: EventHandler) -> None:
    """Later parts of the engine (training, noise) add the event types they spool."""
    _HANDLERS[event_type] = handler


def ingest(home: Home) -> IngestReport:
    """Read every job's spool from its saved offset to the last full line, insert, record the offset.

    Idempotent: the offset moves in the same transaction as the rows, so running it again, or
    from several processes in turn, never duplicates or loses a row.
    """
    report = IngestReport()
    home.ensure()
    job_dirs = sorted(p for p in home.jobs.iterdir() if p.is_dir())
    with connect(home) as con:
        known = {row[0]: (row[1], row[2]) for row in con.execute("SELECT id, state, spool_offset FROM jobs").fetchall()}
        for job_dir in job_dirs:
            report.jobs_seen += 1
            _ingest_job(con, job_dir, known.get(job_dir.name), report)
    return report


def _ingest_job(con, job_dir: Path, known: tuple[str, int] | None, report: IngestReport) -> None:
    events_path = job_dir / "events.jsonl"
    if known is not None:
        state, offset = known
        try:
            size = events_path.stat().st_size
        except OSError:
            size = 0
        if state in jobs_mod.FINAL_STATES and offset >= size:
            return  # finished and fully ingested: nothing to do
    spec = jobs_mod.read_spec(job_dir)
    if spec is None:
        return  # still being created
    offset = known[1] if known else 0
    chunk, new_offset = _read_complete_lines(events_path, offset)
    lines = [line for line in chunk.splitlines() if line.strip()]
    events = [event for event in map(_parse_event, lines) if event is not None]
    report.skipped_lines += len(lines) - len(events)
    state = jobs_mod.derive_state(job_dir)
    status = jobs_mod.read_status(job_dir) or {}
    con.execute("BEGIN TRANSACTION")
    try:
        if known is None:
            con.execute(
                "INSERT INTO jobs (id, kind, state, workload, device, created_at, spec, spool_offset) "
                "VALUES (?, ?, ?, ?, ?, to_timestamp(?), ?, 0)",
                [spec["id"], spec["kind"], jobs_mod.PENDING, spec.get("workload"), spec.get("device"),
                 spec.get("created_at", time.time()), json.dumps(spec)],
            )
        by_type: dict[str, list[dict]] = {}
        for event in events:
            by_type.setdefault(event.get("type", "?"), []).append(event)
        for type_, batch in by_type.items():
            handler = _HANDLERS.get(type_)
            if handler is not None:
                handler(con, spec["id"], batch, report)
        report.events += len(events)
        con.execute(
            "UPDATE jobs SET state = ?, spool_offset = ?, pid = ?, phase = ?, progress = ?, "
            "heartbeat_at = to_timestamp(?), "
            "started_at = coalesce(started_at, to_timestamp(?)), "
            "ended_at = coalesce(ended_at, to_timestamp(?)), error = coalesce(?, error) WHERE id = ?",
            [state, new_offset, status.get("pid"), status.get("phase"), status.get("progress"),
             status.get("heartbeat"), status.get("started_at"),
             status.get("ended_at") if state in jobs_mod.FINAL_STATES else None,
             status.get("error") if state in jobs_mod.FINAL_STATES else None, spec["id"]],
        )
        if state == jobs_mod.CRASHED:
            con.execute("UPDATE jobs SET ended_at = coalesce(ended_at, now()), "
                        "error = coalesce(error, 'process ended without an exit record') WHERE id = ?", [spec["id"]])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _parse_event(line: str) -> dict | None:
    """One spool line; None for an unreadable one. orjson first (several times faster); the json
    module for what orjson refuses: NaN and Infinity, which a diverging loss writes."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except ValueError:
        return None


def _read_complete_lines(path: Path, offset: int) -> tuple[str, int]:
    """The text from ``offset`` up to the last newline, and the offset after it."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return "", offset
    end = data.rfind(b"\n")
    if end < 0:
        return "", offset
    return data[: end + 1].decode("utf-8", "replace"), offset + end + 1


def _insert_frame(con, table: str, frame: pd.DataFrame, replace: bool = False) -> int:
    if frame.empty:
        return 0
    con.register("_incoming", frame)
    try:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM _incoming")  # table: a constant of ours
    finally:
        con.unregister("_incoming")
    return len(frame)


def _timestamps(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame


def _on_profile_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        device = e.get("device") or {}
        _upsert_device(con, device, (e.get("versions") or {}).get("host"))
        config = e.get("config") or {}
        con.execute(
            "INSERT OR REPLACE INTO profiles (id, job_id, workload, workload_spec, options, device_id, device_name, "
            "device_kind, dtype, started_at, memory_budget_bytes, baseline_batch_size, baseline_lr, optimizer, "
            "epochs, n_train, telemetry_source, telemetry_reason, config, versions, warmup_samples, weight_decay) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [e["profile_id"], job_id, e.get("workload"), e.get("workload_spec"), json.dumps(e.get("options") or {}),
             device.get("id"), device.get("name"), device.get("kind"), config.get("dtype"), e["t"],
             config.get("memory_budget_bytes"), e.get("baseline_batch_size"), e.get("baseline_lr"),
             e.get("optimizer"), e.get("epochs"), e.get("n_train"), e.get("telemetry_source"),
             e.get("telemetry_reason"), json.dumps(config), json.dumps(e.get("versions") or {}),
             e.get("warmup_samples"), e.get("weight_decay")],
        )
        report.add_rows("profiles", 1)


def _upsert_device(con, device: dict, host: str | None) -> None:
    if not device.get("id"):
        return
    con.execute(
        "INSERT INTO devices (id, kind, name, total_memory_bytes, compute_capability, uuid, cores, host, first_seen, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), now()) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, total_memory_bytes = excluded.total_memory_bytes, "
        "last_seen = now()",
        [device["id"], device.get("kind"), device.get("name"), device.get("total_memory_bytes"),
         device.get("compute_capability"), device.get("uuid"), device.get("cores"), host],
    )


_POINT_COLUMNS = ["profile_id", "batch_size", "status", "step_times_s", "median_s", "p25_s", "p75_s", "n", "noisy",
                  "samples_per_s", "peak_memory_bytes", "memory_is_estimate", "predicted_memory_bytes",
                  "flops_per_step", "flops_per_s", "mean_power_w", "energy_per_sample_j", "started_at",
                  "ended_at", "error"]


def _on_points(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = []
    for e in events:
        row = {c: e.get(c) for c in _POINT_COLUMNS}
        row["step_times_s"] = [float(x) for x in (e.get("step_times_s") or [])]
        row["n"] = len(row["step_times_s"])
        rows.append(row)
    frame = _timestamps(pd.DataFrame(rows, columns=_POINT_COLUMNS), "started_at", "ended_at")
    report.add_rows("profile_points", _insert_frame(con, "profile_points", frame, replace=True))


def _on_profile_end(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        con.execute(
            "UPDATE profiles SET ended_at = to_timestamp(?), stop_reason = ?, saturation_batch = ?, "
            "memory_fit_intercept_bytes = ?, memory_fit_slope_bytes = ? WHERE id = ?",
            [e["t"], e.get("stop_reason"), e.get("saturation_batch"), e.get("memory_fit_intercept_bytes"),
             e.get("memory_fit_slope_bytes"), e["profile_id"]],
        )


_TELEMETRY_COLUMNS = ["t", "batch_size", "source", "gpu_util_pct", "mem_used_bytes", "power_w", "sm_clock_mhz",
                      "temp_c", "cpu_util_pct", "rss_bytes"]


def _on_telemetry(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = [{c: s.get(c) for c in _TELEMETRY_COLUMNS} for e in events for s in e.get("samples") or []]
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=_TELEMETRY_COLUMNS)
    frame.insert(0, "job_id", job_id)
    report.add_rows("telemetry", _insert_frame(con, "telemetry", _timestamps(frame, "t")))


def _on_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    con.execute("UPDATE jobs SET started_at = coalesce(started_at, to_timestamp(?)) WHERE id = ?", [events[0]["t"], job_id])


def _on_exit(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    con.execute("UPDATE jobs SET ended_at = to_timestamp(?), error = ? WHERE id = ?", [e["t"], e.get("error"), job_id])


_NOISE_COLUMNS = ["b_simple", "ci_low", "ci_high", "g2", "trace_sigma", "g_small_sq", "g_big_sq", "batch_small",
                  "batch_big", "batches", "warm_steps", "unreliable", "reason", "elapsed_s", "step_equivalents"]


def _on_noise_estimate(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _upsert_device(con, e.get("device") or {}, None)
        values = [e.get(c) for c in _NOISE_COLUMNS]
        con.execute(
            f"INSERT OR REPLACE INTO noise_estimates (id, workload, workload_spec, options, device_id, created_at, "
            f"{', '.join(_NOISE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, to_timestamp(?), {', '.join('?' * len(values))})",
            [job_id, e.get("workload"), e.get("workload_spec"), json.dumps(e.get("options") or {}),
             (e.get("device") or {}).get("id"), e["t"], *values],
        )
        report.add_rows("noise_estimates", 1)


def _on_stability(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        con.execute(
            "INSERT OR REPLACE INTO stability_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [job_id, e["batch_size"], e["recommended_lr"], e.get("diverged_at_lr"), e["max_stable_lr"], e["stable"],
             list(e["lrs"]), [x if x is not None else float("nan") for x in e["losses"]]],
        )
        report.add_rows("stability_checks", 1)


def _on_run_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        config = e.get("config") or {}
        device = e.get("device") or {}
        _upsert_device(con, device, (e.get("versions") or {}).get("host"))
        con.execute(
            "INSERT OR REPLACE INTO runs (id, group_id, role, recommendation_id, workload, workload_spec, options, "
            "device_id, device_name, batch_size, micro_batch_size, accumulate, lr, warmup_samples, epochs, schedule, "
            "dtype, seed, target_val_loss, tags, primary_metric, primary_metric_mode, n_params, total_steps, "
            "started_at, config, versions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, to_timestamp(?), ?, ?)",
            [job_id, config.get("group") or job_id, e.get("role"), e.get("recommendation_id"), e.get("workload"),
             e.get("workload_spec"), json.dumps(e.get("options") or {}), device.get("id"), device.get("name"),
             config.get("batch_size"), e.get("micro_batch"), config.get("accumulate"), config.get("lr"),
             e.get("warmup_samples"), e.get("epochs"), config.get("schedule"), config.get("dtype"), config.get("seed"),
             config.get("target_val_loss"), list(config.get("tags") or []), e.get("primary_metric"),
             e.get("primary_metric_mode"), e.get("n_params"), e.get("total_steps"), e["t"], json.dumps(config),
             json.dumps(e.get("versions") or {})],
        )
        report.add_rows("runs", 1)


_METRIC_INDEX = ["step", "epoch", "samples", "wall_time_s", "train_time_s"]


def _on_metrics(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = [row for e in events for row in e.get("rows") or []]
    if not rows:
        return
    wide = pd.DataFrame(rows)
    values = [c for c in ("train_loss", "lr", "samples_per_s") if c in wide]
    frame = wide.melt(id_vars=_METRIC_INDEX, value_vars=values, var_name="name", value_name="value")
    frame = frame[frame["value"].notna()]
    frame.insert(0, "run_id", job_id)
    report.add_rows("metrics", _insert_frame(con, "metrics", frame))


def _on_eval(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = []
    for e in events:
        base = {k: e.get(k) for k in _METRIC_INDEX}
        rows.append({**base, "name": "val_loss", "value": e.get("val_loss")})
        rows += [{**base, "name": f"val_{name}", "value": value} for name, value in (e.get("metrics") or {}).items()]
    frame = pd.DataFrame(rows)
    frame.insert(0, "run_id", job_id)
    report.add_rows("metrics", _insert_frame(con, "metrics", frame))


def _on_run_end(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    metrics = e.get("final_metrics") or {}
    row = con.execute("SELECT primary_metric FROM runs WHERE id = ?", [job_id]).fetchone()
    primary = metrics.get(row[0]) if row and row[0] else None  # a workload may have no validation metric
    con.execute(
        "UPDATE runs SET ended_at = to_timestamp(?), steps = ?, samples = ?, wall_time_s = ?, train_time_s = ?, "
        "final_val_loss = ?, best_val_loss = ?, final_metrics = ?, final_primary_metric = ?, "
        "reached_target = ?, time_to_target_s = ?, peak_memory_bytes = ?, stop_reason = ? WHERE id = ?",
        [e["t"], e.get("steps"), e.get("samples"), e.get("wall_time_s"), e.get("train_time_s"), e.get("final_val_loss"),
         e.get("best_val_loss"), json.dumps(metrics), primary, e.get("reached_target"), e.get("time_to_target_s"),
         e.get("peak_memory_bytes"), e.get("stop_reason"), job_id],
    )


def _on_recommendation(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        rec = e["document"]
        if not con.execute("SELECT 1 FROM recommendations WHERE id = ?", [rec["recommendation_id"]]).fetchone():
            _insert_recommendation(con, rec)
            report.add_rows("recommendations", 1)
        _upsert_autopilot(con, job_id, e["t"], recommendation_id=rec["recommendation_id"])


def _on_autopilot_phase(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    _upsert_autopilot(con, job_id, e["t"], phase=e.get("phase"))


def _on_autopilot_result(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    _upsert_autopilot(con, job_id, e["t"], phase="done", profile_id=e.get("profile_id"), noise_id=e.get("noise_id"),
                      recommendation_id=e.get("recommendation_id"), baseline_runs=e.get("baseline_runs"),
                      recommended_runs=e.get("recommended_runs"), headline=json.dumps(e.get("headline")),
                      comparison=json.dumps(e.get("comparison")))


_AUTOPILOT_FIELDS = ("phase", "profile_id", "noise_id", "recommendation_id", "baseline_runs", "recommended_runs",
                     "headline", "comparison")


def _upsert_autopilot(con, job_id: str, t: float, **fields) -> None:
    con.execute("INSERT INTO autopilots (id, workload, updated_at) SELECT id, workload, to_timestamp(?) FROM jobs "
                "WHERE id = ? ON CONFLICT (id) DO NOTHING", [t, job_id])
    for name, value in fields.items():
        if name in _AUTOPILOT_FIELDS and value is not None:  # name: one of our constants, never user text
            con.execute(f"UPDATE autopilots SET {name} = ?, updated_at = to_timestamp(?) WHERE id = ?",
                        [value, t, job_id])


for _type, _handler in {"start": _on_start, "exit": _on_exit, "profile_start": _on_profile_start,
                        "point": _on_points, "profile_end": _on_profile_end, "telemetry": _on_telemetry,
                        "noise_estimate": _on_noise_estimate, "stability": _on_stability,
                        "run_start": _on_run_start, "metrics": _on_metrics, "eval": _on_eval,
                        "run_end": _on_run_end, "recommendation": _on_recommendation,
                        "autopilot_phase": _on_autopilot_phase, "autopilot_result": _on_autopilot_result}.items():
    register_event_handler(_type, _handler)


# -- queries ---------------------------------------------------------------------------------------


def list_profiles(con) -> pd.DataFrame:
    return con.execute(
        "SELECT p.id, p.workload, p.device_name, p.device_kind, p.dtype, p.started_at, p.ended_at, p.stop_reason, "
        "p.saturation_batch, j.state, "
        "(SELECT count(*) FROM profile_points pp WHERE pp.profile_id = p.id AND pp.status = 'ok') AS ok_points, "
        "(SELECT max(batch_size) FROM profile_points pp WHERE pp.profile_id = p.id AND pp.status = 'ok') AS max_ok_batch "
        "FROM profiles p LEFT JOIN jobs j ON j.id = p.job_id ORDER BY p.started_at DESC"
    ).df()


def resolve_profile_id(con, profile_id: str | None) -> str | None:
    """An explicit id if it exists; ``latest`` or None: the newest profile with measured points."""
    if profile_id and profile_id != "latest":
        row = con.execute("SELECT id FROM profiles WHERE id = ?", [profile_id]).fetchone()
        return row[0] if row else None
    row = con.execute(
        "SELECT p.id FROM profiles p WHERE EXISTS (SELECT 1 FROM profile_points pp WHERE pp.profile_id = p.id "
        "AND pp.status = 'ok') ORDER BY p.started_at DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def load_profile(con, profile_id: str | None = "latest") -> dict | None:
    """One profile with its points (as dicts, increasing batch), or None."""
    resolved = resolve_profile_id(con, profile_id)
    if resolved is None:
        return None
    frame = con.execute(
        "SELECT p.*, j.state, d.total_memory_bytes AS device_total_memory_bytes FROM profiles p "
        "LEFT JOIN jobs j ON j.id = p.job_id LEFT JOIN devices d ON d.id = p.device_id WHERE p.id = ?", [resolved]
    ).df()
    profile = frame_records(frame)[0]
    for key in ("config", "versions", "options"):
        if isinstance(profile.get(key), str):
            profile[key] = json.loads(profile[key])
    profile["points"] = frame_records(profile_points(con, resolved))
    return profile


def profile_points(con, profile_id: str) -> pd.DataFrame:
    return con.execute("SELECT * FROM profile_points WHERE profile_id = ? ORDER BY batch_size", [profile_id]).df()


def profile_telemetry(con, profile_id: str) -> pd.DataFrame:
    return con.execute(
        "SELECT t.* FROM telemetry t JOIN profiles p ON p.job_id = t.job_id WHERE p.id = ? ORDER BY t.t",
        [profile_id],
    ).df()


def list_jobs(con, kind: str | None = None, states: list[str] | None = None) -> pd.DataFrame:
    return con.execute(
        "SELECT id, kind, state, workload, device, created_at, started_at, ended_at, phase, progress, error "
        "FROM jobs WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR list_contains(?, state)) ORDER BY created_at DESC",
        [kind, kind, states, states],
    ).df()


def get_job(con, job_id: str) -> dict | None:
    records = frame_records(con.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).df())
    return records[0] if records else None


def load_noise(con, noise_id: str | None = None, workload: str | None = None) -> dict | None:
    """One noise estimate by id, or the newest reliable one (for ``workload`` if given)."""
    if noise_id and noise_id != "latest":
        frame = con.execute("SELECT * FROM noise_estimates WHERE id = ?", [noise_id]).df()
    else:
        frame = con.execute(
            "SELECT * FROM noise_estimates WHERE b_simple IS NOT NULL AND (? IS NULL OR workload = ?) "
            "ORDER BY created_at DESC LIMIT 1", [workload, workload]).df()
    records = frame_records(frame)
    return records[0] if records else None


def load_stability(con, check_id: str) -> dict | None:
    records = frame_records(con.execute("SELECT * FROM stability_checks WHERE id = ?", [check_id]).df())
    if not records:
        return None
    check = records[0]
    check["losses"] = [None if x is None or x != x else x for x in check["losses"]]
    return check


def list_noise_estimates(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM noise_estimates ORDER BY created_at DESC").df()


def save_recommendation(con, rec: dict) -> None:
    """The recommendation, its candidates, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        _insert_recommendation(con, rec)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _insert_recommendation(con, rec: dict) -> None:
    con.execute(
        "INSERT INTO recommendations VALUES (?, CAST(? AS TIMESTAMPTZ), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?)",
        [rec["recommendation_id"], rec["created_at"], rec["profile_id"], rec.get("noise_id"),
         (rec.get("stability") or {}).get("id"), rec.get("workload"), rec["device"].get("id"), rec["batch_size"],
         rec["learning_rate"], rec["warmup_steps"], rec["rule"], rec["baseline"]["batch_size"],
         rec["baseline"]["learning_rate"], rec.get("noise_scale"), rec["predicted_speedup"]["throughput"],
         rec["predicted_speedup"]["time_to_target"], rec["experiments_per_gpu_day"]["baseline"],
         rec["experiments_per_gpu_day"]["recommended"], json.dumps(rec, default=str)],
    )
    frame = pd.DataFrame(rec["candidates"])
    frame.insert(0, "recommendation_id", rec["recommendation_id"])
    _insert_frame(con, "recommendation_candidates", frame)


def load_recommendation(con, rec_id: str | None = "latest") -> dict | None:
    if rec_id and rec_id != "latest":
        row = con.execute("SELECT document FROM recommendations WHERE id = ?", [rec_id]).fetchone()
    else:
        row = con.execute("SELECT document FROM recommendations ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    return json.loads(row[0]) if row else None


def list_recommendations(con) -> pd.DataFrame:
    return con.execute(
        "SELECT id, created_at, workload, profile_id, noise_id, batch_size, learning_rate, warmup_steps, rule, "
        "baseline_batch_size, baseline_lr, speedup_throughput, speedup_time_to_target FROM recommendations "
        "ORDER BY created_at DESC").df()


_RUN_COLUMNS = ("coalesce(r.id, j.id) AS id, r.group_id, r.role, j.state, coalesce(r.workload, j.workload) AS workload, "
                "r.device_name, r.batch_size, r.micro_batch_size, "
                "r.accumulate, r.lr, r.seed, r.epochs, r.tags, r.started_at, coalesce(r.ended_at, j.ended_at) AS ended_at, r.steps, r.wall_time_s, "
                "r.train_time_s, r.final_val_loss, r.best_val_loss, r.final_primary_metric, r.primary_metric, "
                "r.primary_metric_mode, r.reached_target, r.time_to_target_s, r.peak_memory_bytes, r.stop_reason, "
                "r.recommendation_id, j.error, j.progress, j.phase, j.created_at")


def list_runs(con, states: list[str] | None = None, group: str | None = None, workload: str | None = None) -> pd.DataFrame:
    """Training runs with their job state, newest first. Jobs not yet started appear with their spec."""
    return con.execute(
        f"SELECT {_RUN_COLUMNS} FROM jobs j LEFT JOIN runs r ON r.id = j.id WHERE j.kind = 'train' "
        "AND (? IS NULL OR list_contains(?, j.state)) AND (? IS NULL OR r.group_id = ? OR j.id = ?) "
        "AND (? IS NULL OR r.workload = ?) ORDER BY j.created_at DESC",
        [states, states, group, group, group, workload, workload],
    ).df()


def get_run(con, run_id: str) -> dict | None:
    records = frame_records(con.execute(
        f"SELECT {_RUN_COLUMNS}, r.config, r.versions, r.final_metrics, r.options, r.workload_spec, "
        "r.warmup_samples, r.schedule, r.dtype, r.target_val_loss, r.n_params, r.samples "
        "FROM runs r JOIN jobs j ON j.id = r.id WHERE r.id = ?", [run_id]).df())
    if not records:
        return None
    run = records[0]
    for key in ("config", "versions", "final_metrics", "options"):
        if isinstance(run.get(key), str):
            run[key] = json.loads(run[key])
    return run


def runs_in(con, run_or_group: str) -> list[str]:
    """The run ids an argument names: one run, or every run of a group."""
    rows = con.execute("SELECT id FROM runs WHERE id = ? OR group_id = ? ORDER BY seed, id",
                       [run_or_group, run_or_group]).fetchall()
    return [r[0] for r in rows]


def run_evaluations(con, run_ids: list[str]) -> pd.DataFrame:
    """Validation loss at each evaluation, with the training and wall time it was reached at."""
    return con.execute(
        "SELECT run_id, step, epoch, samples, wall_time_s, train_time_s, value AS val_loss FROM metrics "
        "WHERE list_contains(?, run_id) AND name = 'val_loss' ORDER BY run_id, step", [run_ids]).df()


def run_metrics(con, run_ids: list[str], names: list[str] | None = None) -> pd.DataFrame:
    return con.execute(
        "SELECT * FROM metrics WHERE list_contains(?, run_id) AND (? IS NULL OR list_contains(?, name)) "
        "ORDER BY run_id, name, step", [run_ids, names, names]).df()


def load_autopilot(con, autopilot_id: str | None = "latest") -> dict | None:
    """One autopilot with its job state, or the newest."""
    sql = ("SELECT a.*, j.state, j.progress, j.error, j.created_at FROM autopilots a JOIN jobs j ON j.id = a.id "
           "WHERE (? IS NULL OR a.id = ?) ORDER BY j.created_at DESC LIMIT 1")
    wanted = None if autopilot_id in (None, "latest") else autopilot_id
    records = frame_records(con.execute(sql, [wanted, wanted]).df())
    if not records:
        return None
    record = records[0]
    for key in ("headline", "comparison"):
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    return record


def list_devices(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM devices ORDER BY last_seen DESC").df()


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as plain dicts: NaN/NaT -> None, numpy scalars and arrays -> Python values."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "tolist"):
                value = value.tolist()
            elif isinstance(value, pd.Timestamp):
                value = value.isoformat()
            elif value is pd.NaT:
                value = None
            if isinstance(value, float) and value != value:
                value = None
            clean[key] = value
        out.append(clean)
    return out


# -- run curves (the Runs page) ---------------------------------------------------------------------

RUN_CURVE_AXES = ("step", "epoch", "samples", "wall_time_s", "train_time_s")   # metrics columns usable as x
RUN_CURVE_BUCKETS = 1000        # at most this many points per run and metric reach the browser


def run_metric_names(con, run_ids: list[str]) -> list[str]:
    """The metric names recorded for any of ``run_ids``, sorted."""
    if not run_ids:
        return []
    rows = con.execute("SELECT DISTINCT name FROM metrics WHERE run_id IN (SELECT unnest(?)) ORDER BY name",
                       [list(run_ids)]).fetchall()
    return [r[0] for r in rows]


def run_curves(con, run_ids: list[str], name: str, x: str = "step", buckets: int = RUN_CURVE_BUCKETS,
               log_x: bool = False) -> pd.DataFrame:
    """One metric of several runs, downsampled in DuckDB to at most ``buckets`` points per run.

    Each run's x range is cut into ``buckets`` equal slices (of log10(x) with ``log_x``, for a log
    axis; points at x <= 0 are then left out, a log axis cannot show them). Each slice keeps its
    lowest and highest value and its last point (by step), so a spike survives as a slice's
    ``y_max`` however far the series is thinned. Columns: run_id, bucket, n, x_last, y_min,
    y_max, y_last; ordered by run and x.
    """
    if x not in RUN_CURVE_AXES:
        raise StoreError(f"cannot chart against {x!r}; choose one of {', '.join(RUN_CURVE_AXES)}")
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "bucket", "n", "x_last", "y_min", "y_max", "y_last"])
    position = f"log10({x})" if log_x else x   # x: one of our constant column names, never user text
    return con.execute(
        f"""
        WITH points AS (
            SELECT run_id, step, {x} AS x, {position} AS pos, value AS y FROM metrics
            WHERE run_id IN (SELECT unnest($runs)) AND name = $name AND {x} IS NOT NULL
              AND value IS NOT NULL AND isfinite(value) AND ({'' if log_x else 'TRUE OR '}{x} > 0)
        ), bounds AS (
            SELECT run_id, min(pos) AS lo, max(pos) - min(pos) AS span FROM points GROUP BY run_id
        )
        SELECT p.run_id,
               CAST(least(floor(coalesce((p.pos - b.lo) / nullif(b.span, 0), 0) * $buckets), $buckets - 1)
                    AS INTEGER) AS bucket,
               count(*) AS n, arg_max(p.x, p.step) AS x_last, min(p.y) AS y_min, max(p.y) AS y_max,
               arg_max(p.y, p.step) AS y_last
        FROM points p JOIN bounds b USING (run_id)
        GROUP BY p.run_id, bucket ORDER BY p.run_id, bucket
        """,
        {"runs": list(run_ids), "name": name, "buckets": int(buckets)},
    ).df()


# -- recommendation pages and the HTML report (Recommend, Planner, Export) ----------------------


def recommendation_runs(con, recommendation_id: str) -> pd.DataFrame:
    """The training runs made for a recommendation (role baseline or recommended), oldest first."""
    return con.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs r JOIN jobs j ON j.id = r.id WHERE r.recommendation_id = ? "
        "AND r.role IN ('baseline', 'recommended') ORDER BY j.created_at, r.seed, r.id", [recommendation_id]).df()


def autopilot_for_recommendation(con, recommendation_id: str) -> dict | None:
    """The newest autopilot that made ``recommendation_id``, with its headline; None if none did."""
    row = con.execute(
        "SELECT a.id FROM autopilots a JOIN jobs j ON j.id = a.id WHERE a.recommendation_id = ? "
        "ORDER BY j.created_at DESC LIMIT 1", [recommendation_id]).fetchone()
    return load_autopilot(con, row[0]) if row else None


def runs_by_id(con, run_ids: list[str]) -> list[dict]:
    """Several started runs (the columns of :func:`list_runs`) in one query, in the order asked."""
    if not run_ids:
        return []
    records = frame_records(con.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs r JOIN jobs j ON j.id = r.id WHERE r.id IN (SELECT unnest(?))",
        [list(run_ids)]).df())
    by_id = {r["id"]: r for r in records}
    return [by_id[i] for i in run_ids if i in by_id]


# -- named metric values (data-parallel runs: the gradient noise scale at every log) ---------------


def _on_metric_values(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    """Rows already in long form ({step, epoch, samples, wall_time_s, train_time_s, name, value}), e.g.
    ``noise_scale`` from a data-parallel run."""
    rows = [row for e in events for row in e.get("rows") or []]
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=[*_METRIC_INDEX, "name", "value"])
    frame = frame[frame["value"].notna()]
    frame.insert(0, "run_id", job_id)
    report.add_rows("metrics", _insert_frame(con, "metrics", frame))


register_event_handler("metric_values", _on_metric_values)
