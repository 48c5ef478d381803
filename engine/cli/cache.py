"""`cache`: the workloads built once and kept in the home (`cache` shows it, `cache clear` empties it)."""

from __future__ import annotations

import click

from .group import cli
from .options import home_of, json_option
from .output import emit_json
from ..format import format_bytes, plural


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def cache(ctx, as_json):
    """Built workloads kept in the home, so that later jobs skip building them: `cache clear` empties it."""
    if ctx.invoked_subcommand is not None:
        return
    from ..workloads.cache import cache_of

    home = home_of(ctx)
    workloads = cache_of(home)
    usage = workloads.usage()
    if as_json:
        emit_json({"path": str(workloads.root), "entries": usage.entries, "bytes": usage.bytes})
    else:
        click.echo(f"workload cache {workloads.root}: {usage.summary}")


@cache.command("clear")
@json_option
@click.pass_context
def cache_clear(ctx, as_json):
    """Remove every cached workload (one being built by a running job is left alone)."""
    from ..workloads.cache import cache_of

    freed, busy = cache_of(home_of(ctx)).clear()
    if as_json:
        emit_json({"entries": freed.entries, "bytes": freed.bytes, "busy": busy})
        return
    left = f"; {plural(busy, 'workload')} being written by a running job left alone" if busy else ""
    click.echo(f"freed {format_bytes(freed.bytes)}: removed {plural(freed.entries, 'cached workload')}{left}")
