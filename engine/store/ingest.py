"""What enters the database: job spools, ingested idempotently, and the recommendations the CLI saves.

Ingest reads each spool from its saved byte offset to the last full line (with the one reader of
:mod:`largestep.jobs.events`), bulk-inserts (one statement a table, never row by row: a column a NumPy array
through DuckDB's NumPy scan where a statement has many values, a bound list where it has few; no pandas,
whose import alone would double a command's start), and records the new offset in the
same transaction, so running it again, or from several processes in turn, never
duplicates or loses a row. Each event becomes rows through the same ``*_row`` functions the
autopilot uses to read its children's spools.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from .. import jobs
from ..home import Home
from ..jobs import events as ev
from ..jobs.spool import write_json_atomic
from .connection import connect
from .rows import insert_row as _insert_row, insert_verification, update_row as _update_row

__all__ = [
    "ingest",
    "IngestReport",
    "SpoolUnreadable",
    "save_recommendation",
    "save_verification",
    "insert_verification",
    "record_comparison",
]


@dataclass
class IngestReport:
    jobs_seen: int = 0
    events: int = 0
    skipped_lines: int = 0
    set_aside: list[str] = field(default_factory=list)  # jobs whose spool could not be ingested
    unreadable_files: list[str] = field(default_factory=list)  # saved recommendations that could not be read
    rows: dict[str, int] = field(default_factory=dict)

    def add_rows(self, table: str, n: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + n


def ingest(home: Home) -> IngestReport:
    """Read every job's spool from its saved offset to the last full line, insert, record the offset.

    Idempotent: the offset moves in the same transaction as the rows, so running it again, or
    from several processes in turn, never duplicates or loses a row. Each job is its own
    transaction: a job whose spool cannot be ingested is set aside (FAILED, "spool unreadable:
    ...") and every other job carries on.
    """
    report = IngestReport()
    home.ensure()
    job_dirs = sorted(p for p in home.jobs.iterdir() if p.is_dir())
    with connect(home) as con:
        known = {
            row[0]: _Known(*row[1:])
            for row in con.execute("SELECT id, state, spool_offset, set_aside FROM jobs").fetchall()
        }
        for job_dir in job_dirs:
            report.jobs_seen += 1
            try:
                _ingest_job(con, job_dir, known.get(job_dir.name), report)
            except SpoolUnreadable as exc:
                _set_aside(con, job_dir, str(exc))
                report.set_aside.append(job_dir.name)
        _ingest_saved_files(
            con, home.recommendations, "recommendations", "recommendation_id", save_recommendation_row, report
        )
        _ingest_saved_files(con, home.verifications, "verifications", "id", insert_verification, report)
    return report


def _ingest_saved_files(con, folder: Path, table: str, id_key: str, save, report: IngestReport) -> None:
    """Documents saved as files in ``folder`` (recommendations by the CLI and the dashboard, verifications by
    `largestep compare`) that ``table`` lacks: after the database was deleted, or a save that stopped between the
    file and the row. Each is ``save``d in its own transaction; a file that cannot be read is left for
    `largestep doctor`."""
    if not folder.is_dir():
        return
    stored = {row[0] for row in con.execute(f"SELECT id FROM {table}").fetchall()}
    for path in sorted(folder.glob("*.json")):
        if path.stem in stored:
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get(id_key) != path.stem:
                raise ValueError(f"not the {table.removesuffix('s')} {path.stem}")
            save(con, document)
        except _DATABASE_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never fatal
            report.unreadable_files.append(f"{path}: {' '.join(str(exc).split())[:200]}")
            continue
        report.add_rows(table, 1)


@dataclass(frozen=True)
class _Known:
    """What the database already holds of a job."""

    state: str
    offset: int
    set_aside: bool | None


class SpoolUnreadable(Exception):
    """A job's spool (or spec) that cannot become rows; the job is set aside."""


# Failures of the database itself, not of a job's content: these stop the ingest, never set a job aside.
_DATABASE_ERRORS = (duckdb.IOException, duckdb.FatalException, duckdb.InternalException)
_ENVIRONMENT_ERRORS = (*_DATABASE_ERRORS, OSError)


def _ingest_job(con, job_dir: Path, known: _Known | None, report: IngestReport) -> None:
    if known is not None:
        if known.set_aside:
            return  # `largestep doctor` lists it; its folder must be fixed or removed by hand
        try:
            size = (job_dir / ev.EVENTS_FILE).stat().st_size
        except OSError:
            size = 0
        if known.state in jobs.FINAL_STATES and known.offset >= size:
            return  # finished and fully ingested: nothing to do
    spec = jobs.read_spec(job_dir)
    if spec is None:
        return  # still being created
    _check_spec(spec, job_dir)
    batch = ev.read(job_dir, known.offset if known else 0)
    report.skipped_lines += batch.skipped
    state = jobs.derive_state(job_dir)
    status = jobs.read_status(job_dir) or {}
    con.execute("BEGIN TRANSACTION")
    try:
        _write_job(con, job_dir, spec, known is None, batch.events, state, status, batch.offset, report)
        con.execute("COMMIT")
    except _ENVIRONMENT_ERRORS:
        con.execute("ROLLBACK")
        raise
    except Exception as exc:  # the spool's content, whatever it is, did not fit the tables
        con.execute("ROLLBACK")
        raise SpoolUnreadable(_why_unreadable(con, job_dir, spec, known is None, batch, exc)) from None
    report.events += len(batch.events)


def _check_spec(spec: object, job_dir: Path) -> None:
    """A job is known by its folder's name: a spec naming another job is a copy (``cp -r X X.bak``)."""
    if not isinstance(spec, dict):
        raise SpoolUnreadable("spec.json is not a JSON object")
    if spec.get("id") != job_dir.name:
        raise SpoolUnreadable(
            f"spec.json names job {spec.get('id')!r}, not its folder {job_dir.name!r} (a copied or renamed job folder?)"
        )
    if not spec.get("kind") or not isinstance(spec["kind"], str):
        raise SpoolUnreadable("spec.json has no job kind")


def _write_job(
    con,
    job_dir: Path,
    spec: dict,
    new: bool,
    events: list[dict],
    state: str,
    status: dict,
    offset: int,
    report: IngestReport,
) -> None:
    """The job's row, its events' rows and its new offset (inside the caller's transaction)."""
    if new:
        con.execute(
            "INSERT INTO jobs (id, kind, state, workload, device, created_at, spec, spool_offset) "
            "VALUES (?, ?, ?, ?, ?, to_timestamp(?), ?, 0)",
            [
                spec["id"],
                spec["kind"],
                jobs.PENDING,
                spec.get("workload"),
                spec.get("device"),
                spec.get("created_at", time.time()),
                json.dumps(spec),
            ],
        )
    by_type: dict[str, list[dict]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    for type_, typed in by_type.items():
        _HANDLERS[type_](con, spec["id"], typed, report)
    con.execute(
        "UPDATE jobs SET state = ?, spool_offset = ?, pid = ?, phase = ?, progress = ?, "
        "heartbeat_at = to_timestamp(?), "
        "started_at = coalesce(started_at, to_timestamp(?)), "
        "ended_at = coalesce(ended_at, to_timestamp(?)), error = coalesce(?, error) WHERE id = ?",
        [
            state,
            offset,
            status.get("pid"),
            status.get("phase"),
            status.get("progress"),
            status.get("heartbeat"),
            status.get("started_at"),
            status.get("ended_at") if state in jobs.FINAL_STATES else None,
            status.get("error") if state in jobs.FINAL_STATES else None,
            spec["id"],
        ],
    )
    if state == jobs.CRASHED:
        con.execute(
            "UPDATE jobs SET ended_at = coalesce(ended_at, now()), error = coalesce(error, ?) WHERE id = ?",
            [jobs.crash_reason(job_dir), spec["id"]],
        )


def _why_unreadable(con, job_dir: Path, spec: dict, new: bool, batch: ev.Batch, exc: Exception) -> str:
    """The first event that does not fit, found by writing the events one at a time (then rolled back)."""
    culprit, error = None, exc
    con.execute("BEGIN TRANSACTION")
    try:
        if new:
            _write_job(con, job_dir, spec, True, [], jobs.PENDING, {}, 0, IngestReport())
        for i, event in enumerate(batch.events):
            try:
                _HANDLERS[event["type"]](con, spec["id"], [event], IngestReport())
            except Exception as one:  # noqa: BLE001 - the culprit, whatever it raised
                culprit, error = i, one
                break
    finally:
        con.execute("ROLLBACK")
    message = " ".join(str(error).split()) or type(error).__name__
    if culprit is None:
        return f"{type(error).__name__}: {message}"[:500]
    line = ev.line_number(job_dir, batch.event_offsets[culprit])
    return f"line {line} ({batch.events[culprit]['type']} event): {message}"[:500]


def _set_aside(con, job_dir: Path, reason: str) -> None:
    """Record the job as FAILED with the reason, and never read its spool again."""
    spec = jobs.read_spec(job_dir)
    spec = spec if isinstance(spec, dict) else {}
    error = f"spool unreadable: {reason}"
    con.execute(
        "INSERT INTO jobs (id, kind, state, workload, device, created_at, ended_at, error, spec, set_aside) "
        "VALUES (?, ?, ?, ?, ?, to_timestamp(?), now(), ?, ?, true) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, error = excluded.error, set_aside = true, "
        "ended_at = coalesce(jobs.ended_at, now())",
        [
            job_dir.name,
            str(spec.get("kind") or "unknown"),
            jobs.FAILED,
            _text(spec.get("workload")),
            _text(spec.get("device")),
            _unix_time(spec.get("created_at")) or time.time(),
            error,
            json.dumps(spec, default=str),
        ],
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _unix_time(value: object) -> float | None:
    """A plausible unix time (seconds, 1970 to 5138) or None: a set-aside spec is not trusted."""
    plausible = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11
    return float(value) if plausible else None


# -- writing rows --------------------------------------------------------------------------------
# Table and column names below are constants of ours (the keys of the largestep.jobs.events rows),
# never text from a spool; every value is a bound parameter.


def _insert_rows(
    con,
    table: str,
    rows: list[dict],
    columns: list[str] | None = None,
    replace: bool = False,
    timestamps: tuple[str, ...] = (),
) -> int:
    """Insert ``rows`` (dicts; ``columns``, else every key any row has; a key a row lacks is NULL) in one
    statement. Columns in ``timestamps`` hold unix seconds and are stored as TIMESTAMPTZ."""
    if not rows:
        return 0
    columns = columns or list(dict.fromkeys(name for row in rows for name in row))
    with _incoming(con, {name: [row.get(name) for row in rows] for name in columns}) as (source, params):
        selects = ", ".join(f'to_timestamp("{name}")' if name in timestamps else f'"{name}"' for name in columns)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        con.execute(f"{verb} INTO {table} ({', '.join(columns)}) SELECT {selects} FROM {source}", params)
    return len(rows)


#: From this many values, columns go to DuckDB as NumPy arrays through its NumPy scan (each column converted in
#: C, four to five times faster than DuckDB binding a list's values one by one); below it as bound lists,
#: unnested: there the time saved is less than importing NumPy costs a command following a small job (the two
#: cross at 100,000 to 150,000 values). Not Arrow: pyarrow imports pandas to build an array from a list.
#: bench/bench_ingest.py --candidates measures them.
NUMPY_FROM_VALUES = 100_000
_INCOMING = "_largestep_incoming"


@contextmanager
def _incoming(con, columns: dict[str, list]) -> Iterator[tuple[str, list]]:
    """The columns (a name to its values, all as long) as a relation to select from, for the statements run
    inside the ``with``: (its FROM clause, the parameters that clause binds, which come first)."""
    n = len(next(iter(columns.values()), []))
    arrays = _arrays(columns) if n * len(columns) >= NUMPY_FROM_VALUES else None
    if arrays is None:
        unnested = ", ".join(f'unnest(${k}) AS "{name}"' for k, name in enumerate(columns, start=1))
        yield f"(SELECT {unnested})", list(columns.values())
        return
    con.register(_INCOMING, arrays)
    try:
        yield _INCOMING, []
    finally:
        con.unregister(_INCOMING)


def _arrays(columns: dict[str, list]) -> dict | None:
    """The columns as one-dimensional NumPy arrays (of Python objects where values are text, missing or of mixed
    types), or None where DuckDB's NumPy scan would read a value otherwise than it reads a bound list: NaN
    (the scan reads it as NULL) and lists or objects in a cell."""
    import numpy as np

    arrays = {}
    for name, values in columns.items():
        try:
            array = np.array(values)
        except (ValueError, OverflowError):  # ragged lists
            return None
        if array.ndim != 1:
            return None
        if array.dtype.kind in "US":  # fixed-width text, which DuckDB reads far slower than the str objects
            array = np.array(values, dtype=object)
        if array.dtype.kind == "f" and np.isnan(array).any():
            return None
        if array.dtype.kind == "O" and any(value != value or isinstance(value, (list, dict)) for value in values):
            return None
        arrays[name] = array
    return arrays


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _upsert_device(con, device: dict, host: str | None) -> None:
    if not device.get("id"):
        return
    con.execute(
        "INSERT INTO devices (id, kind, name, total_memory_bytes, compute_capability, uuid, cores, host, first_seen, "
        "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), now()) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, total_memory_bytes = excluded.total_memory_bytes, "
        "last_seen = now()",
        [
            device["id"],
            device.get("kind"),
            device.get("name"),
            device.get("total_memory_bytes"),
            device.get("compute_capability"),
            device.get("uuid"),
            device.get("cores"),
            host,
        ],
    )


# -- one handler per event type ------------------------------------------------------------------


def _on_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    con.execute(
        "UPDATE jobs SET started_at = coalesce(started_at, to_timestamp(?)) WHERE id = ?", [events[0]["t"], job_id]
    )


def _on_exit(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    con.execute("UPDATE jobs SET ended_at = to_timestamp(?), error = ? WHERE id = ?", [e["t"], e.get("error"), job_id])


def _on_profile_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _upsert_device(con, e.get("device") or {}, (e.get("versions") or {}).get("host"))
        _insert_row(con, "profiles", {**ev.profile_start_row(e), "job_id": job_id}, replace=True)
        report.add_rows("profiles", 1)


_POINT_COLUMNS = ["profile_id", *ev.POINT_FIELDS, *ev.BACKGROUND_FIELDS, "n"]


def _on_points(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    # a batch size's later point (its rounds done, re-measured, flagged) replaces the earlier; within one
    # statement INSERT OR REPLACE would keep the first of two rows with the same key
    latest = {(row["profile_id"], row["batch_size"]): row for row in map(ev.point_row, events)}
    report.add_rows(
        "profile_points",
        _insert_rows(
            con,
            "profile_points",
            list(latest.values()),
            _POINT_COLUMNS,
            replace=True,
            timestamps=("started_at", "ended_at"),
        ),
    )


def _on_profile_end(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _update_row(con, "profiles", ev.profile_end_row(e), "id", e["profile_id"])


_TELEMETRY_COLUMNS = [
    "t",
    "batch_size",
    "source",
    "gpu_util_pct",
    "mem_used_bytes",
    "power_w",
    "sm_clock_mhz",
    "temp_c",
    "cpu_util_pct",
    "rss_bytes",
    "other_cpu_pct",
    "other_gpu_processes",
    "other_gpu_mem_bytes",
]


def _on_telemetry(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = [{**sample, "job_id": job_id} for e in events for sample in e.get("samples") or []]
    report.add_rows(
        "telemetry", _insert_rows(con, "telemetry", rows, ["job_id", *_TELEMETRY_COLUMNS], timestamps=("t",))
    )


def _on_noise_estimate(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _upsert_device(con, e.get("device") or {}, None)
        _insert_row(con, "noise_estimates", {"id": job_id, **ev.noise_row(e)}, replace=True)
        report.add_rows("noise_estimates", 1)


def _on_noise_curve_point(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _upsert_device(con, e.get("device") or {}, None)
        _insert_row(con, "noise_curve_points", ev.noise_curve_row(e, job_id), replace=True)
        report.add_rows("noise_curve_points", 1)


def _on_stability(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        con.execute(
            "INSERT OR REPLACE INTO stability_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                job_id,
                e["batch_size"],
                e["recommended_lr"],
                e.get("diverged_at_lr"),
                e["max_stable_lr"],
                e["stable"],
                list(e["lrs"]),
                [x if x is not None else float("nan") for x in e["losses"]],
            ],
        )
        report.add_rows("stability_checks", 1)


def _on_run_start(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        _upsert_device(con, e.get("device") or {}, (e.get("versions") or {}).get("host"))
        _insert_row(con, "runs", ev.run_start_row(e, job_id), replace=True)
        report.add_rows("runs", 1)


def _on_metrics(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = [row for e in events for row in e.get("rows") or []]
    # the wide rows go in as they are, and each metric becomes long rows in SQL (metric by metric, as they are
    # read back), the missing (null, NaN) left out: a long run's rows are converted once, not once a metric
    metrics = [name for name in ev.TRAIN_METRICS if any(row.get(name) is not None for row in rows)]
    if not metrics:
        return
    wide = {name: [row.get(name) for row in rows] for name in (*ev.METRIC_INDEX, *metrics)}
    index = ", ".join(f'"{name}"' for name in ev.METRIC_INDEX)
    with _incoming(con, wide) as (source, params):
        for name in metrics:
            k = len(params)
            value = f'CAST("{name}" AS DOUBLE)'  # as the value column would cast it, before the NaN test
            [(inserted,)] = con.execute(
                f"INSERT INTO metrics (run_id, {index}, name, value) SELECT ${k + 1}, {index}, ${k + 2}, {value} "
                f"FROM {source} WHERE NOT isnan({value})",
                [*params, job_id, name],
            ).fetchall()
            report.add_rows("metrics", inserted)


def _on_metric_values(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    """Rows already in long form ({step, epoch, samples, wall_time_s, train_time_s, name, value}), e.g.
    ``noise_scale`` from a data-parallel run."""
    rows = [
        {"run_id": job_id, **row} for e in events for row in e.get("rows") or [] if not _is_missing(row.get("value"))
    ]
    report.add_rows("metrics", _insert_rows(con, "metrics", rows, ["run_id", *ev.METRIC_INDEX, "name", "value"]))


def _on_eval(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    rows = [{"run_id": job_id, **row} for e in events for row in ev.eval_rows(e)]
    report.add_rows("metrics", _insert_rows(con, "metrics", rows))


def _on_run_end(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    row = con.execute("SELECT primary_metric FROM runs WHERE id = ?", [job_id]).fetchone()
    _update_row(con, "runs", ev.run_end_row(events[-1], row[0] if row else None), "id", job_id)


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
    for e in events:  # it stopped on a profile that could not be trusted: why, and which profile
        if e.get("untrusted"):
            _upsert_autopilot(con, job_id, e["t"], untrusted=e["untrusted"], profile_id=e.get("profile_id"))


def _on_autopilot_result(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    e = events[-1]
    _upsert_autopilot(
        con,
        job_id,
        e["t"],
        phase="done",
        profile_id=e.get("profile_id"),
        noise_id=e.get("noise_id"),
        recommendation_id=e.get("recommendation_id"),
        baseline_runs=e.get("baseline_runs"),
        recommended_runs=e.get("recommended_runs"),
        headline=e.get("headline"),
        comparison=e.get("comparison"),
    )


def _on_verification(con, job_id: str, events: list[dict], report: IngestReport) -> None:
    for e in events:
        insert_verification(con, ev.verification_row(e))
        report.add_rows("verifications", 1)


def _upsert_autopilot(con, job_id: str, t: float, **fields) -> None:
    con.execute(
        "INSERT INTO autopilots (id, workload, updated_at) SELECT id, workload, to_timestamp(?) FROM jobs "
        "WHERE id = ? ON CONFLICT (id) DO NOTHING",
        [t, job_id],
    )
    given = {name: value for name, value in fields.items() if value is not None}
    if given:
        _update_row(con, "autopilots", given, "id", job_id)
        con.execute("UPDATE autopilots SET updated_at = to_timestamp(?) WHERE id = ?", [t, job_id])


EventHandler = Callable[[duckdb.DuckDBPyConnection, str, list[dict], IngestReport], None]
_HANDLERS: dict[str, EventHandler] = {
    ev.START: _on_start,
    ev.EXIT: _on_exit,
    ev.PROFILE_START: _on_profile_start,
    ev.POINT: _on_points,
    ev.PROFILE_END: _on_profile_end,
    ev.TELEMETRY: _on_telemetry,
    ev.NOISE_ESTIMATE: _on_noise_estimate,
    ev.NOISE_CURVE_POINT: _on_noise_curve_point,
    ev.STABILITY: _on_stability,
    ev.RUN_START: _on_run_start,
    ev.METRICS: _on_metrics,
    ev.METRIC_VALUES: _on_metric_values,
    ev.EVAL: _on_eval,
    ev.RUN_END: _on_run_end,
    ev.RECOMMENDATION: _on_recommendation,
    ev.AUTOPILOT_PHASE: _on_autopilot_phase,
    ev.AUTOPILOT_RESULT: _on_autopilot_result,
    ev.VERIFICATION: _on_verification,
}
assert set(_HANDLERS) == set(ev.CATALOGUE), "every catalogued event has its handler"


# -- recommendations the CLI and the dashboard save ----------------------------------------------


def save_recommendation(home: Home, con, rec: dict) -> None:
    """The recommendation as a file in the home (so a lost database rebuilds it, as it rebuilds
    jobs from their spools), then its row and its candidates' in one transaction."""
    home.recommendations.mkdir(parents=True, exist_ok=True)
    write_json_atomic(home.recommendations / f"{rec['recommendation_id']}.json", rec)
    save_recommendation_row(con, rec)


def save_recommendation_row(con, rec: dict) -> None:
    """The recommendation's row and its candidates', in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        _insert_recommendation(con, rec)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def save_verification(home: Home, con, row: dict) -> None:
    """A verification `largestep compare` made: as a file in the home (the database is rebuilt from it, and an
    autopilot, which never opens the database, reads it), then its row."""
    home.verifications.mkdir(parents=True, exist_ok=True)
    write_json_atomic(home.verifications / f"{row['id']}.json", row)
    insert_verification(con, row)


def record_comparison(home: Home, con, groups: list[tuple[str, list[dict]]], result: dict) -> dict | None:
    """A comparison of a recommendation's baseline runs (the first group) and recommended runs (the second) is a
    verification: saved (:func:`save_verification`) and returned. None when the groups are not such a pair, the
    recommendation is unknown, or an autopilot already verified these very runs (its point stands)."""
    import time

    from ..plan.calibration import verification_id, verification_point
    from .queries import load_recommendation

    if len(groups) < 2 or len(result.get("groups") or []) < 2:
        return None
    (_, base), (_, other) = groups[0], groups[1]
    ids = {r.get("recommendation_id") for r in [*base, *other]}
    if (
        len(ids) != 1
        or None in ids
        or {r.get("role") for r in base} != {"baseline"}
        or {r.get("role") for r in other} != {"recommended"}
    ):
        return None
    rec = load_recommendation(con, ids.pop())
    if rec is None:
        return None
    known = con.execute(
        "SELECT source FROM verifications WHERE id = ?",
        [verification_id([r["id"] for r in base], [r["id"] for r in other])],
    ).fetchone()
    if known and known[0] == "autopilot":
        return None
    point = verification_point(
        rec,
        {**result, "groups": result["groups"][:2]},
        source="compare",
        created_at=time.time(),
        device_name=(rec.get("device") or {}).get("name"),
    )
    save_verification(home, con, point)
    return point


CANDIDATE_COLUMNS = [
    "batch_size",
    "learning_rate",
    "step_time_s",
    "samples_per_s",
    "peak_memory_bytes",
    "time_ratio",
    "speedup_time_to_target",
    "speedup_throughput",
    "run_time_s",
    "eligible",
    "excluded",
    "rank",
]


def _insert_recommendation(con, rec: dict) -> None:
    con.execute(
        "INSERT INTO recommendations (id, created_at, profile_id, noise_id, stability_id, workload, device_id, "
        "batch_size, learning_rate, warmup_steps, rule, baseline_batch_size, baseline_lr, noise_scale, "
        "speedup_throughput, speedup_time_to_target, experiments_per_day_baseline, experiments_per_day_recommended, "
        "document, accepted_load) VALUES (?, CAST(? AS TIMESTAMPTZ), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?, ?)",
        [
            rec["recommendation_id"],
            rec["created_at"],
            rec["profile_id"],
            rec.get("noise_id"),
            (rec.get("stability") or {}).get("id"),
            rec.get("workload"),
            rec["device"].get("id"),
            rec["batch_size"],
            rec["learning_rate"],
            rec["warmup_steps"],
            rec["rule"],
            rec["baseline"]["batch_size"],
            rec["baseline"]["learning_rate"],
            rec.get("noise_scale"),
            rec["predicted_speedup"]["throughput"],
            rec["predicted_speedup"]["time_to_target"],
            rec["experiments_per_gpu_day"]["baseline"],
            rec["experiments_per_gpu_day"]["recommended"],
            json.dumps(rec, default=str),
            rec.get("accepted_load"),
        ],
    )
    _insert_rows(
        con,
        "recommendation_candidates",  # the table's columns; the document keeps the rest
        [{"recommendation_id": rec["recommendation_id"], **c} for c in rec["candidates"]],
        columns=["recommendation_id", *CANDIDATE_COLUMNS],
    )
