"""Where largestep keeps its database and job spools.

Default ``./.largestep``; overridden by ``--home`` or the ``LARGESTEP_HOME`` variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError, UsageError

__all__ = ["Home", "resolve_home", "check_database_file", "is_job_id", "DEFAULT_HOME", "HOME_ENV"]

DEFAULT_HOME = ".largestep"
HOME_ENV = "LARGESTEP_HOME"
DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file


def is_job_id(text: object) -> bool:
    """Could ``text`` name a folder inside the jobs folder (and nothing outside it)?

    Any folder name a user may have made there (``X.bak``, ``X copy``) passes; a path does not.
    """
    return (
        isinstance(text, str)
        and 0 < len(text) <= 255
        and text not in (".", "..")
        and not any(c in text for c in ("/", "\\", "\0"))
    )


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
    def recommendations(self) -> Path:
        """Saved recommendations, one JSON file each: the database is rebuilt from these and the jobs."""
        return self.root / "recommendations"

    @property
    def verifications(self) -> Path:
        """Verifications `largestep compare` made of a recommendation's runs, one JSON file each (an autopilot's are
        in its spool): the database is rebuilt from these and the jobs, and the autopilot reads them."""
        return self.root / "verifications"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def launchers(self) -> Path:
        """The warm launchers' records and logs (largestep.jobs.forkserver)."""
        return self.root / "launchers"

    def job_dir(self, job_id: str) -> Path:
        """The folder of job ``job_id``; an id that could name a path elsewhere is refused."""
        if not is_job_id(job_id):
            raise UsageError(f"{job_id!r} is not a job id; see `largestep runs`")
        return self.jobs / job_id

    def find_job(self, job_id: str) -> Path | None:
        """The folder of an existing job called exactly ``job_id``, else None (never a path outside jobs/)."""
        if not is_job_id(job_id):
            return None
        folder = self.jobs / job_id
        return folder if folder.is_dir() else None

    def holds_anything(self) -> bool:
        """Is there a database or a job to read? (Read-only commands create neither.)"""
        return self.database.exists() or any(
            folder.is_dir() and any(folder.iterdir())
            for folder in (self.jobs, self.recommendations, self.verifications)
        )

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
        raise StoreError(
            f"{path} is not a DuckDB database; refusing to touch it (move it away or choose another --home)"
        )


def resolve_home(path: str | os.PathLike | None = None) -> Home:
    """The home from an explicit path, else ``$LARGESTEP_HOME``, else ``./.largestep``.

    An empty ``LARGESTEP_HOME`` counts as unset (as a shell's ``${VAR:-default}`` does); an empty or blank
    path given explicitly (``--home "$UNSET"``, a variable of spaces) is refused, never read as ``.``."""
    if path is not None and not str(path).strip():
        raise UsageError(
            f"the home {str(path)!r} is empty: give a folder with --home or LARGESTEP_HOME, or leave "
            f"both out for ./{DEFAULT_HOME}"
        )
    chosen = path or os.environ.get(HOME_ENV) or DEFAULT_HOME
    if not str(chosen).strip():
        raise UsageError(f"LARGESTEP_HOME {chosen!r} is blank: give a folder, or unset it for ./{DEFAULT_HOME}")
    return Home(Path(chosen).expanduser().resolve())
