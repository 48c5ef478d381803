"""Where largestep keeps its database and job spools.

Default ``./.largestep``; overridden by ``--home`` or the ``LARGESTEP_HOME`` variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StoreError

__all__ = ["Home", "resolve_home", "check_database_file", "DEFAULT_HOME", "HOME_ENV"]

DEFAULT_HOME = ".largestep"
HOME_ENV = "LARGESTEP_HOME"
DUCKDB_MAGIC = b"DUCK"          # bytes 8..12 of every DuckDB database file


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "largestep.duckdb"

    @property
    def lock(self) -> Path:
        return self.root / "largestep.duckdb.lock"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def check(self) -> "Home":
        """Refuse an unusable home before anything is written to it."""
        if self.root.exists():
            if not self.root.is_dir():
                raise StoreError(f"home {self.root} is a file, not a folder; choose another --home")
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise StoreError(f"home {self.root} is not readable and writable; choose another --home")
            return self
        ancestor = self.root.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise StoreError(f"cannot create home {self.root}: {ancestor} is not writable; choose another --home")
        return self

    def ensure(self) -> "Home":
        """Create the folders; a home that cannot be created or written is a clear error."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"home {self.root} is a file, not a folder; choose another --home")
        try:
            for folder in (self.root, self.jobs, self.locks):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create home {self.root}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"home {self.root} is not writable; choose another --home")
        return self


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


def resolve_home(path: str | os.PathLike | None = None) -> Home:
    """The home from an explicit path, else ``$LARGESTEP_HOME``, else ``./.largestep``."""
    chosen = path or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Home(Path(chosen).expanduser().resolve())
