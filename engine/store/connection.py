"""Short-lived connections to the one DuckDB file, under a cross-process lock.

DuckDB lets one process write a database file, or several read it, never both. Every reader
and writer opens a connection here under a cross-process file lock, retries on DuckDB's own
lock error (another program holding the file), and closes it again. The schema is migrated
on the first connection of a process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
from filelock import FileLock, Timeout

from ..errors import StoreError
from ..home import Home, check_database_file
from .migrations import migrate

__all__ = ["connect", "connect_empty", "is_damage", "damaged", "DamagedDatabase", "LOCK_TIMEOUT_S"]

LOCK_TIMEOUT_S = 120.0  # how long to wait for another largestep process to finish
OPEN_RETRIES = 40  # how often to retry DuckDB's own lock error (another program)


_migrated: set[Path] = set()


@contextmanager
def connect(home: Home, migrate_schema: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection under the cross-process lock; closed on exit.

    A database that turns out damaged (cut short, a checksum that fails), when it is opened or
    whenever a statement reads the damaged part, is one StoreError pointing at `largestep doctor`,
    never DuckDB's traceback."""
    home.ensure()
    check_database_file(home.database)
    lock = FileLock(str(home.lock), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(
            f"database {home.database} stayed locked for {LOCK_TIMEOUT_S:.0f}s; is a largestep command stuck?"
        ) from None
    try:
        _drop_empty_file(home)
        # a database file deleted under a long-running process (the dashboard) is re-created whole
        if not home.database.exists():
            _migrated.discard(home.database)
        con = _open(home.database)
        try:
            if migrate_schema and home.database not in _migrated:
                migrate(con)
                _migrated.add(home.database)
            yield con
        except duckdb.Error as exc:
            if is_damage(exc):
                raise damaged(home.database, exc) from None
            raise
        finally:
            con.close()
    finally:
        lock.release()


def is_damage(exc: BaseException) -> bool:
    """Whether a DuckDB error says the file itself cannot be used (cut short, corrupt, a failed write),
    rather than that a statement was wrong."""
    return isinstance(exc, _DAMAGE) or (isinstance(exc, duckdb.Error) and "corrupt" in str(exc).lower())


class DamagedDatabase(StoreError):
    """A database file DuckDB cannot use; ``reason``: DuckDB's first line."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"database {path} cannot be used ({reason}): run `largestep doctor`, which says what to do")
        self.reason = reason


def damaged(path: Path, exc: BaseException) -> DamagedDatabase:
    """The one line every command says about a database it cannot use (DuckDB's first line, the path once)."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return DamagedDatabase(path, first.replace(f' from file "{path}"', "").replace(f'"{path}"', "the file"))


# The errors of the file, not of a statement: a read past its end, a checksum, the database invalidated
_DAMAGE = (duckdb.IOException, duckdb.FatalException, duckdb.InternalException, duckdb.SerializationException)


def _drop_empty_file(home: Home) -> None:
    """A zero-byte database (a crash while it was first created, a `touch`) holds nothing: it is removed, with
    a write-ahead log beside it, so DuckDB creates it afresh and the next ingest rebuilds it from the spools."""
    try:
        if home.database.stat().st_size != 0:
            return
    except FileNotFoundError:
        return
    home.database.unlink()
    home.database.with_name(home.database.name + ".wal").unlink(missing_ok=True)


@contextmanager
def connect_empty() -> Iterator[duckdb.DuckDBPyConnection]:
    """An empty store in memory, with the whole schema: what a read-only command sees in a home that
    holds nothing yet, so reading never creates a home or a database file."""
    con = duckdb.connect(":memory:")
    try:
        migrate(con)
        yield con
    finally:
        con.close()


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    delay = 0.05
    for _ in range(OPEN_RETRIES):
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            # Another program (a user's duckdb shell, say) holds DuckDB's own lock: wait and retry.
            if "lock" not in str(exc).lower():
                raise damaged(path, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except duckdb.Error as exc:
            raise damaged(path, exc) from None
    raise StoreError(f"database {path} is locked by another program; close it and try again")
