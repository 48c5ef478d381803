"""`largestep doctor`: what is wrong with a home, each finding with what to do about it.

It reads, and ingests as every command does; it repairs nothing by itself, since each fix (removing
a job folder, killing a process) is the user's call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import jobs
from ..format import format_bytes
from ..home import Home
from ..jobs import events as ev
from ..jobs import forkserver
from .connection import connect
from .ingest import ingest
from .migrations import MIGRATIONS, applied_migrations
from ..workloads.cache import cache_of

__all__ = ["Check", "diagnose", "OK", "WARN", "PROBLEM"]

OK, WARN, PROBLEM = "ok", "warn", "problem"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str                                   # ok | warn | problem
    summary: str
    details: tuple[str, ...] = field(default=())   # one line per finding, with what to do


def diagnose(home: Home) -> list[Check]:
    """Every check of the home, in the order a person reads them."""
    database = _database(home)
    if database.verdict == PROBLEM:
        return [database, _spools(home), _orphans(home), _launchers(home), _size(home)]
    report = ingest(home)   # as every command does: it creates a missing database, migrates an old one
    return [_database(home), _set_aside(home), _spools(home), _recommendation_files(report.unreadable_files),
            _orphans(home), _launchers(home), _size(home)]


def _database(home: Home) -> Check:
    if not home.database.exists():
        return Check("database", WARN, f"no database at {home.database} yet; the next command creates it "
                                       f"from the home's files")
    try:
        with connect(home, migrate_schema=False) as con:
            applied = set(applied_migrations(con))
    except Exception as exc:  # noqa: BLE001 - whatever stops it opening is the finding
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return Check("database", PROBLEM, f"cannot read {home.database}: {first}",
                     ("move it away: every job and recommendation is rebuilt from the home's files",))
    missing = [name for name, _ in MIGRATIONS if name not in applied]
    if missing:
        return Check("database", WARN, f"readable; {len(missing)} migration(s) not applied yet: "
                                       f"{', '.join(missing)}", ("any largestep command applies them",))
    return Check("database", OK, f"readable and migrated ({len(MIGRATIONS)} migrations)")


def _set_aside(home: Home) -> Check:
    with connect(home) as con:
        rows = con.execute("SELECT id, error FROM jobs WHERE set_aside ORDER BY id").fetchall()
    if not rows:
        return Check("set-aside jobs", OK, "none: every job's spool was ingested")
    details = tuple(f"{job_id}: {error}; fix or remove {home.job_dir(job_id)}" for job_id, error in rows)
    return Check("set-aside jobs", PROBLEM, f"{len(rows)} job(s) whose spool cannot be ingested", details)


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
    return Check("recommendation files", WARN, f"{len(unreadable)} saved recommendation(s) cannot be read",
                 tuple(unreadable))


def _orphans(home: Home) -> Check:
    """Processes still running a job that has ended (its exit record written, or cancelled)."""
    details = []
    folders = sorted(p for p in home.jobs.iterdir() if p.is_dir()) if home.jobs.is_dir() else []
    for folder in folders:
        if jobs.exit_record(folder) is None:
            continue
        proc = jobs.job_process(folder)
        if proc is not None:
            details.append(f"{folder.name} has ended but its process {proc.pid} still runs; "
                           f"stop it with `kill {proc.pid}`")
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
    details = tuple(f"pid {r['pid']}: "
                    + (f"serving for {time.time() - r['serving_since']:.0f} s" if r.get("serving_since") else "importing")
                    + ("" if r.get("version") == version else "; started from older engine code: it exits by itself")
                    + f"; stop it with `kill {r['pid']}`" for r in launchers)
    return Check("warm launcher", OK, f"{len(launchers)} running: jobs start with torch already imported", details)


def _size(home: Home) -> Check:
    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0

    parts = {"database": size(home.database), "jobs": size(home.jobs),
             "recommendations": size(home.recommendations), "workload cache": cache_of(home).usage().bytes}
    summary = ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items())
    return Check("size", OK, f"{format_bytes(sum(parts.values()))} in {home.root} ({summary})")
