"""`doctor`: check a home (database, spools, set-aside jobs, processes, size) and say what to do."""

from __future__ import annotations

import click

from engine.cli.group import cli
from engine.cli.options import home_of, json_option
from engine.cli.output import emit_json


@cli.command()
@json_option
@click.pass_context
def doctor(ctx, as_json):
    """Check the home: the database readable and migrated, spools consistent, jobs set aside, orphaned
    processes, its size. Exit code 1 when a problem needs fixing by hand."""
    from dataclasses import asdict

    from engine.store.doctor import PROBLEM, diagnose

    home = home_of(ctx)
    checks = diagnose(home) if home.holds_anything() else []   # an empty home is not created by looking
    if as_json:
        emit_json({"home": str(home.root), "checks": [asdict(c) for c in checks]})
    elif not checks:
        click.echo(f"nothing to check: {home.root} holds no database and no job yet")
    else:
        for check in checks:
            click.echo(f"{check.verdict:>7}  {check.name}: {check.summary}")
            for line in check.details:
                click.echo(f"         - {line}")
    return 1 if any(c.verdict == PROBLEM for c in checks) else 0
