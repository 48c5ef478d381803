"""`doctor`: check a home (database, spools, set-aside jobs, processes, size) and say what to do."""

from __future__ import annotations

from pathlib import Path

import click

from .group import cli
from .options import home_of, json_option
from .output import console, emit_json, table, write_atomic

DEFAULT_REPORT = "largestep-selfcheck.json"


@cli.command()
@json_option
@click.option(
    "--devices",
    "check_devices",
    is_flag=True,
    help="Also check every device: the profiler's timing against CUDA events (torch.utils.benchmark on "
    "the CPU), NVML, an induced out-of-memory error, bf16/fp16, and NCCL with several GPUs. Takes "
    "seconds; writes a JSON report to attach to a bug report.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Also repair what can be repaired without losing anything: a damaged database is moved aside "
    "and rebuilt from the home's files (the jobs' spools, the saved recommendations), and jobs set "
    "aside are read again.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=DEFAULT_REPORT,
    show_default=True,
    help="Where --devices writes its JSON report.",
)
@click.pass_context
def doctor(ctx, as_json, check_devices, repair, report_path):
    """Check the home: the database readable and migrated, spools consistent, jobs set aside, orphaned
    processes, its size, each finding with what to do; --repair also repairs what it safely can; with
    --devices, the devices too. Exit code 1 when a problem needs fixing by hand."""
    if check_devices:
        return _device_section(home_of(ctx), as_json, Path(report_path))
    from dataclasses import asdict

    from ..store.doctor import PROBLEM, diagnose

    home = home_of(ctx)
    checks = diagnose(home, repair=repair) if home.holds_anything() else []  # an empty home is not created by looking
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


def _device_section(home, as_json: bool, report_path: Path) -> int:
    """Run the device self-check: a table (or JSON) on stdout, the full report written to ``report_path``.

    It holds every device's job lock while it checks: a profile or a run beside it would skew its timings, and
    it theirs."""
    import json

    from .output import jsonable
    from ..format import format_math
    from ..jobs.runner import holding_devices
    from ..measure import devices, selfcheck

    def waiting(name: str) -> None:
        click.echo(f"waiting for the job on {name} to end (the check must not share a device with it) ...", err=True)

    with holding_devices(home, [d.id for d in devices.discover()], on_wait=waiting):
        if not as_json:
            click.echo("checking devices (each timing takes a few seconds) ...", err=True)
        checks = selfcheck.check_devices()
    document = selfcheck.report(checks)
    write_atomic(report_path, json.dumps(jsonable(document), indent=2, default=str, allow_nan=False) + "\n")
    if as_json:
        emit_json(
            {
                "report": str(report_path),
                "checks": document["checks"],
                "math_settings": document["math_settings"],
                "versions": document["versions"],
            }
        )
    else:
        rows = [[c.device, c.name, c.verdict, c.summary] for c in checks]
        console().print(table("devices", ["device", "check", "verdict", "finding"], rows))
        click.echo(
            f"float32 math by default: {format_math(document['math_settings'])} (a workload's tf32 field or "
            f"--tf32 sets it for its jobs)"
        )
        click.echo(f"report written to {report_path}: attach it to a bug report")
    return 1 if any(c.verdict == selfcheck.PROBLEM for c in checks) else 0
