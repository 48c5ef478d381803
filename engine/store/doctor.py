"""`largestep doctor`: what is wrong with a home, each finding with what to do about it.

It reads, and ingests as every command does. ``repair=True`` (``doctor --repair``) also does the two
repairs that lose nothing: a damaged database is moved aside (kept beside it) and rebuilt from the
home's files (every job's spool, every saved recommendation), and jobs set aside are given another
try (after their folder was fixed). Everything else (removing a job folder, killing a process) is
the user's call: doctor says what to do.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from .. import jobs
from ..errors import StoreError
from ..format import format_bytes, plural
from ..home import Home, check_database_file
from ..jobs import events as ev
from ..jobs import forkserver
from .connection import LOCK_TIMEOUT_S, DamagedDatabase, connect
from .ingest import ingest
from .migrations import MIGRATIONS, applied_migrations
from ..workloads.cache import cache_of

__all__ = ["Check", "diagnose", "OK", "WARN", "PROBLEM"]

OK, WARN, PROBLEM = "ok", "warn", "problem"
DAMAGED_SUFFIX = ".damaged-"  # a damaged database moved aside by --repair: largestep.duckdb.damaged-<time>


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | problem
    summary: str
    details: tuple[str, ...] = field(default=())  # one line per finding, with what to do


def diagnose(home: Home, repair: bool = False) -> list[Check]:
    """Every check of the home, in the order a person reads them; ``repair``: see the module."""
    database, damage = _database(home)
    rebuilt = None
    if damage is not None and repair:
        rebuilt = _rebuild(home, damage)
    elif database.verdict == PROBLEM:
        return [database, _spools(home), _orphans(home), _launchers(home), _size(home)]
    retried = _retry_set_aside(home) if repair else 0
    report = ingest(home)  # as every command does: it creates a missing database, migrates an old one
    database = rebuilt or _database(home)[0]
    return [
        database,
        _set_aside(home, retried),
        _spools(home),
        _recommendation_files(report.unreadable_files),
        _orphans(home),
        _launchers(home),
        _size(home),
    ]


def _database(home: Home) -> tuple[Check, str | None]:
    """The database's check, and what is wrong with it when the file is DuckDB's but cannot be read whole
    (cut short, a checksum that fails): what ``--repair`` rebuilds."""
    if not home.database.exists():
        return Check(
            "database", WARN, f"no database at {home.database} yet; the next command creates it from the home's files"
        ), None
    try:
        check_database_file(home.database)
    except StoreError as exc:  # a folder, or a file of another program: never touched, not even by --repair
        return Check("database", PROBLEM, str(exc), ("move it away, or choose another --home",)), None
    try:
        with connect(home, migrate_schema=False) as con:
            applied = set(applied_migrations(con))
            _read_whole(con)
    except Exception as exc:  # noqa: BLE001 - whatever stops it being read is the finding
        first = exc.reason if isinstance(exc, DamagedDatabase) else (str(exc).splitlines() or [type(exc).__name__])[0]
        return Check(
            "database",
            PROBLEM,
            f"cannot read {home.database}: {first}",
            (
                "run `largestep doctor --repair`: it moves the file aside and rebuilds the database from "
                "the home's files (every job's spool, every saved recommendation)",
            ),
        ), first
    missing = [name for name, _ in MIGRATIONS if name not in applied]
    if missing:
        return Check(
            "database",
            WARN,
            f"readable; {len(missing)} migration(s) not applied yet: {', '.join(missing)}",
            ("any largestep command applies them",),
        ), None
    return Check("database", OK, f"readable and migrated ({len(MIGRATIONS)} migrations)"), None


def _read_whole(con) -> None:
    """Read every row of every table, so damage anywhere in the file shows now, not in some later command
    (hashing whole rows makes DuckDB read every column's blocks). Table names come from the catalogue."""
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT internal").fetchall():
        quoted = '"' + table.replace('"', '""') + '"'
        con.execute(f"SELECT bit_xor(hash(t)) FROM {quoted} AS t").fetchall()


def _rebuild(home: Home, damage: str) -> Check:
    """Move the damaged database (and its write-ahead log) aside, under the store's lock; the ingest that
    follows rebuilds it from the home's files."""
    aside = home.database.with_name(f"{home.database.name}{DAMAGED_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}")
    with FileLock(str(home.lock), timeout=LOCK_TIMEOUT_S):
        os.replace(home.database, aside)
        wal = home.database.with_name(home.database.name + ".wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + ".wal"))
    return Check(
        "database",
        WARN,
        f"was damaged ({damage}); rebuilt from the home's files",
        (f"the damaged file is kept as {aside}: remove it once the rebuilt database has what you need",),
    )


def _retry_set_aside(home: Home) -> int:
    """Forget that jobs were set aside, so this ingest reads their spools again (a folder fixed since);
    one still unreadable is set aside again. Their rows were never written: only the job's own row goes."""
    with connect(home) as con:
        (n,) = con.execute("SELECT count(*) FROM jobs WHERE set_aside").fetchone()
        con.execute("DELETE FROM jobs WHERE set_aside")
    return n


def _set_aside(home: Home, retried: int = 0) -> Check:
    with connect(home) as con:
        rows = con.execute("SELECT id, error FROM jobs WHERE set_aside ORDER BY id").fetchall()
    again = f" ({plural(retried, 'job')} read again, {retried - len(rows)} now ingested)" if retried else ""
    if not rows:
        return Check("set-aside jobs", OK, f"none: every job's spool was ingested{again}")
    details = tuple(
        f"{job_id}: {error}; fix or remove {home.job_dir(job_id)}, then `largestep doctor --repair` reads it again"
        for job_id, error in rows
    )
    return Check("set-aside jobs", PROBLEM, f"{len(rows)} job(s) whose spool cannot be ingested{again}", details)


def _spools(home: Home) -> Check:
    """Every job folder: a readable spec naming it, and how many of its lines are skipped."""
    details = []
    folders = sorted(p for p in home.jobs.iterdir() if p.is_dir()) if home.jobs.is_dir() else []
    for folder in folders:
        spec = jobs.read_spec(folder)
        if not isinstance(spec, dict):
            details.append(f"{folder.name}: no readable spec.json (a job being created, or a stray folder)")
        elif spec.get("id") != folder.name:
            details.append(f"{folder.name}: spec.json names job {spec.get('id')!r} (a copy? remove it)")
        bad = ev.read(folder).bad_lines
        if bad:
            where = ", ".join(f"line {ev.line_number(folder, offset)} ({why})" for offset, why in bad[:3])
            details.append(f"{folder.name}: {len(bad)} unreadable line(s) skipped: {where}")
    verdict = WARN if details else OK
    return Check("spools", verdict, f"{len(folders)} job folder(s), {len(details)} finding(s)", tuple(details))


def _recommendation_files(unreadable: list[str]) -> Check:
    if not unreadable:
        return Check("recommendation files", OK, "every saved recommendation is in the database")
    return Check(
        "recommendation files", WARN, f"{len(unreadable)} saved recommendation(s) cannot be read", tuple(unreadable)
    )


def _orphans(home: Home) -> Check:
    """Processes still running a job that has ended (its exit record written, or cancelled)."""
    details = []
    folders = sorted(p for p in home.jobs.iterdir() if p.is_dir()) if home.jobs.is_dir() else []
    for folder in folders:
        if jobs.exit_record(folder) is None:
            continue
        proc = jobs.job_process(folder)
        if proc is not None:
            details.append(
                f"{folder.name} has ended but its process {proc.pid} still runs; stop it with `kill {proc.pid}`"
            )
    if details:
        return Check("processes", WARN, f"{len(details)} orphaned job process(es)", tuple(details))
    return Check("processes", OK, "no process outlives its job")


def _launchers(home: Home) -> Check:
    """Whether jobs start warm: the home's warm launchers (largestep.jobs.forkserver), and whether they are current."""
    if not forkserver.enabled(dict(os.environ)):
        return Check("warm launcher", OK, f"turned off ({forkserver.WARM_ENV}=0): every job starts as a fresh process")
    launchers = forkserver.running(home)
    if not launchers:
        return Check("warm launcher", OK, "none running: the next job starts as a fresh process, and starts one")
    version = forkserver.source_version()
    details = tuple(
        f"pid {r['pid']}: "
        + (f"serving for {time.time() - r['serving_since']:.0f} s" if r.get("serving_since") else "importing")
        + ("" if r.get("version") == version else "; started from older engine code: it exits by itself")
        + f"; stop it with `kill {r['pid']}`"
        for r in launchers
    )
    return Check("warm launcher", OK, f"{len(launchers)} running: jobs start with torch already imported", details)


def _size(home: Home) -> Check:
    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0

    kept = sorted(home.root.glob(f"{home.database.name}{DAMAGED_SUFFIX}*")) if home.root.is_dir() else []
    parts = {
        "database": size(home.database),
        "jobs": size(home.jobs),
        "recommendations": size(home.recommendations),
        "workload cache": cache_of(home).usage().bytes,
        "damaged databases kept": sum(size(path) for path in kept),
    }
    summary = ", ".join(
        f"{name} {format_bytes(n)}" for name, n in parts.items() if n or name != "damaged databases kept"
    )
    details = tuple(
        f"{path} was moved aside by `largestep doctor --repair`: remove it once the rebuilt database has what you need"
        for path in kept
        if not path.name.endswith(".wal")
    )
    return Check("size", OK, f"{format_bytes(sum(parts.values()))} in {home.root} ({summary})", details)
