"""The store: the one DuckDB file every reader and writer shares, and all of largestep's SQL.

``connection`` opens short-lived connections under a cross-process lock; ``migrations`` holds
the schema's history; ``ingest`` turns job spools into rows; ``queries`` reads them back; ``outcomes``
reads what a job left once it ended, for the CLI and the Python API alike. Values
are always bound parameters.
"""

from ..home import check_database_file
from .connection import _migrated, connect, connect_empty  # noqa: F401  _migrated: the tests reset it
from .ingest import IngestReport, ingest, record_comparison, save_recommendation, save_verification
from .migrations import MIGRATIONS, applied_migrations, migrate
from .outcomes import *  # noqa: F401,F403  what a job left, read back once it ended
from .outcomes import __all__ as _outcomes
from .queries import *  # noqa: F401,F403  the queries are the store's public surface
from .queries import __all__ as _queries

__all__ = [
    "connect",
    "connect_empty",
    "check_database_file",
    "ingest",
    "IngestReport",
    "save_recommendation",
    "save_verification",
    "record_comparison",
    "MIGRATIONS",
    "migrate",
    "applied_migrations",
    *_queries,
    *_outcomes,
]
