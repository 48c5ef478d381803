"""`largestep calibration`: every verification's predicted and measured speedup and factors, and the correction."""

from __future__ import annotations

import click

from .group import cli
from .options import home_of, json_option
from .output import console, emit_json, table


@cli.command()
@click.option("--workload", metavar="NAME", help="Only this workload's verifications.")
@click.option("--device", metavar="ID|NAME", help="Only those on this device (its id, e.g. cpu, or its name).")
@json_option
@click.pass_context
def calibration(ctx, workload, device, as_json):
    """Every verification (an autopilot, or `compare` of a recommendation's baseline and recommended runs):
    predicted against measured speedup, steps factor and time per step, each with its interval; the critical
    batch each measured steps factor implies; and the correction of the noise model a later recommendation on
    the same workload and device ranks on."""
    from ..ui.calibration import load_calibration

    home = home_of(ctx)
    if not home.holds_anything():
        view = None
    else:
        view = load_calibration(home, workload, device)
    if as_json:
        emit_json(
            {
                "verifications": [{k: v for k, v in p.items() if k != "comparison"} for p in view.points]
                if view
                else [],
                "corrections": view.corrections if view else [],
            }
        )
        return
    if view is None or view.empty:
        click.echo(
            "no verifications yet: run `largestep autopilot --workload W` (or `largestep compare` a "
            "recommendation's baseline and recommended runs)"
        )
        return
    rows = view.table.to_dict(orient="records")
    shown = [
        "verification",
        "workload",
        "device",
        "batch",
        "speedup predicted",
        "speedup raw model",
        "speedup measured",
        "steps predicted",
        "steps measured",
        "time/step predicted",
        "time/step measured",
        "B_crit implied",
        "verified",
    ]
    console().print(
        table(
            "Verifications: predicted against measured (90% intervals)",
            shown,
            [[row[c] for c in shown] for row in rows],
        )
    )
    for correction in view.corrections:
        console().print(f"[bold]{correction['text']}[/bold]")
