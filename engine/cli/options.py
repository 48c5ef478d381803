"""What the commands share: the home, the store preamble, option stacks, and parsing typed values."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from ..errors import UsageError
from ..home import Home, resolve_home
from ..units import parse_count, parse_float  # noqa: F401  (the commands' parsers, shared with the Python API)

__all__ = [
    "State",
    "home_of",
    "open_store",
    "json_option",
    "device_option",
    "nproc_option",
    "launch_options",
    "workload_options",
    "workload_settings",
    "parse_float",
    "parse_count",
    "parse_nproc",
]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."


class State:
    """The group's context object: the ``--home`` given, resolved and checked when first needed."""

    def __init__(self, home: str | None):
        self._home_arg = home

    @property
    def home(self) -> Home:
        return resolve_home(self._home_arg).check()


def home_of(ctx: click.Context) -> Home:
    return ctx.find_object(State).home


@contextmanager
def open_store(ctx: click.Context, ingest: bool = True) -> Iterator[tuple[Home, Any]]:
    """The preamble of every command that reads the database: check the file is a DuckDB database
    (never touch anything else), ingest what the jobs have spooled since, open a short connection."""
    from .. import store

    home = home_of(ctx)
    with store.reading(home, ingest=ingest) as con:
        yield home, con


# -- option stacks ------------------------------------------------------------------------------


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def device_option(help: str = DEVICE_HELP) -> Callable[[Callable], Callable]:
    return click.option("--device", "-d", default="auto", show_default=True, help=help)


def compile_option(fn: Callable) -> Callable:
    return click.option(
        "--compile",
        "compile_model",
        is_flag=True,
        help="torch.compile the model; compiling happens before the clock starts and its time is "
        "recorded apart (each new batch size recompiles, untimed).",
    )(fn)


def tf32_option(fn: Callable) -> Callable:
    return click.option(
        "--tf32/--no-tf32",
        "tf32",
        default=None,
        help="TF32 in float32 matmuls and convolutions (Ampere and newer GPUs: several times faster, "
        "less precise), for the profile and the runs alike. Default: the workload's tf32 field, "
        "else torch's defaults. Recorded with every profile and run.",
    )(fn)


def threads_option(fn: Callable) -> Callable:
    return click.option(
        "--threads",
        metavar="N",
        help="torch's intra-op threads on the CPU (default: torch's, one a core). On a machine others "
        "keep busy, fewer threads than cores leave a core to them, so a step does not wait "
        "for a thread that lost its core; the runs trained from a profile use its threads.",
    )(fn)


def nproc_option(help: str) -> Callable[[Callable], Callable]:
    return click.option("--nproc", default="1", show_default=True, metavar="N", help=help)


def launch_options(fn: Callable) -> Callable:
    """--launcher, --ray-address: where the job's work runs (here, or as tasks on a Ray cluster)."""
    fn = click.option(
        "--ray-address",
        metavar="ADDR",
        help="The Ray cluster, e.g. ray://head:10001 or head:6379 (default: $RAY_ADDRESS, else the "
        "cluster started on this machine, else a new local one).",
    )(fn)
    fn = click.option(
        "--launcher",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: processes on this machine; ray: tasks on a Ray cluster, one GPU (or CPU) each "
        "(pip install 'largestep[ray]').",
    )(fn)
    return fn


def workload_options(fn: Callable) -> Callable:
    """--workload, --set KEY=VALUE, --data, --label: shared by every command that loads a workload."""
    fn = click.option("--label", metavar="COLUMN", help="The label column, for --workload table.")(fn)
    fn = click.option("--data", metavar="FILE", help="A Parquet or CSV file, for --workload table.")(fn)
    fn = click.option(
        "--set",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="An argument of the workload function, e.g. --set samples=4000 (repeatable).",
    )(fn)
    fn = click.option(
        "--workload",
        "-w",
        required=True,
        metavar="W",
        help="A built-in (fraud-gru, fraud-mlp, table), package.module:function, "
        "path/to/file.py:function, or an entry point in group largestep.workloads.",
    )(fn)
    return fn


# -- typed values -------------------------------------------------------------------------------


def workload_settings(pairs: tuple[str, ...], data: str | None, label: str | None) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs (and ``--data``, ``--label``) as the workload function's options."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, not {pair!r}")
        options[key.strip()] = value
    if data is not None:
        options["path"] = data
    if label is not None:
        options["label"] = label
    return options


def parse_nproc(text: str) -> int:
    from ..units import parse_positive_int

    return parse_positive_int(text, "--nproc")
