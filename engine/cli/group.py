"""The `largestep` click group: every command module adds its commands to it."""

from __future__ import annotations

import click

from ..about import __version__
from .options import State

__all__ = ["cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--home",
    metavar="DIR",
    envvar="LARGESTEP_HOME",
    help="Where the database and job spools live (default ./.largestep, or $LARGESTEP_HOME).",
)
@click.version_option(__version__, prog_name="largestep")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """largestep: train faster with large, precise gradient steps.

    Profile how step time grows with batch size on your hardware, then train the baseline
    and a larger batch with the learning rate scaled, and compare them.
    """
    ctx.obj = State(home)
