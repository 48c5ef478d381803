"""The ``largestep`` command line: every step headless, a table for people, ``--json`` for machines.

``group`` holds the click group; ``measure``, ``plan``, ``runs``, ``calibration`` and ``dashboard`` add their
commands to it; ``options`` and ``output`` are what the commands share. Bad input of any kind ends
with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

import click

from . import cache, calibration, dashboard, doctor, measure, plan, runs  # noqa: F401  each adds its commands to the group
from .group import cli
from ..errors import LargestepError

__all__ = ["main", "run", "cli"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    try:
        result = cli.main(args=argv, prog_name="largestep", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return _fail(exc.format_message())
    except click.ClickException as exc:
        return _fail(exc.format_message())
    except LargestepError as exc:
        return _fail(str(exc))
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _fail(message: str) -> int:
    click.echo(f"largestep: error: {' '.join(str(message).split())}", err=True)
    return EXIT_USAGE


def run() -> NoReturn:
    """The ``largestep`` executable: :func:`main`, then the process ends as soon as what it said is out.

    The exit functions run (logging, temporary folders, a DataLoader's workers), then ``os._exit`` skips the
    interpreter's teardown of every module, which once pandas, DuckDB and rich are loaded costs a command 0.1
    to 0.25 s on a 2-core machine, and leaves nothing to do: each command closes its own files and database
    connections. A thread still running that is not a daemon keeps the ordinary exit, which waits for it.
    """
    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`largestep runs | head`), a closed stream
            pass
    os._exit(code)
