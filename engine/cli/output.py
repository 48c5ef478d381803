"""How commands speak: rich tables for people, strict JSON for machines, a job followed to its end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import UsageError
from ..home import Home

__all__ = ["console", "emit_json", "jsonable", "table", "detached", "follow_job", "finish_job", "write_atomic"]


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a CI log): wide enough that tables do not wrap every cell.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def jsonable(value: Any) -> Any:
    """NaN and infinities become null so that --json output is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def emit_json(data: Any) -> None:
    click.echo(json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) if data is not None else "null")


def table(title: str, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    out = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*["-" if v is None else str(v) for v in row])
    return out


def detached(as_json: bool, document: dict, message: str) -> int:
    """What a --detach command says once its jobs are queued: the document for machines, a line for people."""
    if as_json:
        emit_json(document)
    else:
        click.echo(message)
    return 0


def follow_job(home: Home, job_id: str, describe: Callable[[dict], str | None], quiet: bool = False) -> str:
    """Show a job's progress until it ends; Ctrl-C cancels it. Returns the final state."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..jobs.follow import Update, watch

    interactive = sys.stderr.isatty() and not quiet
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        disable=not interactive,
        transient=False,
    )

    def show(update: Update) -> None:
        for event in update.events:
            text = describe(event)
            if text and not quiet:
                if interactive:
                    progress.console.print(text)
                else:
                    click.echo(text, err=True)
        progress.update(task, completed=update.progress, description=f"{job_id}: {update.phase}")

    try:
        with progress:
            task = progress.add_task(f"{job_id}: starting", total=1.0)
            return watch(home, job_id, show)
    except KeyboardInterrupt:
        click.echo(f"cancelled {job_id}", err=True)
        raise


def finish_job(
    home: Home, job_id: str, what: str, quiet: bool, describe: Callable[[dict], str | None] = lambda e: None
) -> str:
    """Follow a job to its end, ingest its spool, and turn a failure into a one-line error."""
    from .. import store

    state = follow_job(home, job_id, describe=describe, quiet=quiet)
    store.ended(home, job_id, state, what)
    return state


def write_atomic(path: Path, text: str) -> None:
    """Write all or nothing: a temporary file beside the target, then a rename."""
    import tempfile

    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
