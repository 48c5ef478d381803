"""Planning: `recommend`, `recommendations`, `export` and `report`."""

from __future__ import annotations

from pathlib import Path

import click

from .group import cli
from .options import device_option, home_of, json_option, open_store
from .output import console, emit_json, finish_job, table, write_atomic
from ..errors import UsageError
from ..format import format_ms, grouped
from ..plan.verdict import interval_text


@cli.command()
@click.option(
    "--profile", "profile_id", default="latest", show_default=True, metavar="ID", help="The profile to recommend from."
)
@click.option("--baseline-batch", metavar="B0", help="The batch you train with now (default: the workload's).")
@click.option("--baseline-lr", metavar="LR0", help="Its learning rate (default: the workload's).")
@click.option(
    "--rule",
    type=click.Choice(["linear", "sqrt", "noise"]),
    default="linear",
    show_default=True,
    help="linear keeps lr/batch fixed; sqrt scales lr with sqrt(B/B0); noise is McCandlish et al.'s "
    "lr0·(1 + B_noise/B0)/(1 + B_noise/B), which stops growing near the noise scale (needs one).",
)
@click.option("--noise-scale", metavar="X", help="Use this gradient noise scale instead of a stored estimate.")
@click.option("--estimate-noise", is_flag=True, help="Estimate the noise scale now (runs a job).")
@click.option("--noise", "noise_id", metavar="ID", help="Use this stored noise estimate.")
@click.option(
    "--noise-curve",
    "curve_id",
    default="latest",
    show_default=True,
    metavar="ID|latest|none",
    help="Plan a growing batch schedule from this noise curve (`largestep noise --at`); latest: the "
    "workload's newest, if any.",
)
@click.option(
    "--memory-headroom",
    default="0.9",
    show_default=True,
    metavar="SHARE",
    help="Largest share of device memory a candidate may use.",
)
@click.option("--max-lr", metavar="X", help="Never recommend a learning rate above this.")
@click.option("--warmup-samples", metavar="N", help="Warm-up length in samples (default: the workload's).")
@click.option(
    "--check-stability",
    is_flag=True,
    help="Train briefly at the chosen batch with the rate ramped past "
    "the recommendation; back off if it diverges below it.",
)
@click.option(
    "--accept-load",
    is_flag=True,
    help="Use a profile that cannot be trusted (measured under load, or "
    "failing the physics check), which is refused otherwise; the recommendation says so wherever it is "
    "shown and exported.",
)
@device_option("Device for --estimate-noise and --check-stability.")
@json_option
@click.pass_context
def recommend(
    ctx,
    profile_id,
    baseline_batch,
    baseline_lr,
    rule,
    noise_scale,
    estimate_noise,
    noise_id,
    curve_id,
    memory_headroom,
    max_lr,
    warmup_samples,
    check_stability,
    accept_load,
    device,
    as_json,
):
    """Recommend a batch size and learning rate from a profile, predicted to reach the target fastest."""
    from .. import store
    from ..plan.recommend import RecommendConfig

    config = RecommendConfig.from_options(
        baseline_batch, baseline_lr, rule, noise_scale, memory_headroom, max_lr, warmup_samples, accept_load
    )
    home = home_of(ctx)
    rec = store.recommend_and_save(
        home,
        profile_id,
        config,
        noise_id,
        curve_id,
        estimate_noise,
        check_stability,
        device,
        follow=lambda job_id, what: finish_job(home, job_id, what, as_json),
    )
    if as_json:
        emit_json(rec)
    else:
        print_recommendation(rec)


def print_recommendation(rec: dict) -> None:
    from ..plan.recommend import accepted_load_note, model_text  # NumPy with it: not every command's start-up

    out = console()
    base = rec["baseline"]
    rows = []
    corrected = bool((rec.get("predicted_speedup") or {}).get("corrected"))
    for c in rec["candidates"]:
        mark = "->" if c["batch_size"] == rec["batch_size"] else ""
        interval = c.get("speedup_interval")
        raw = (
            [f"{c['raw_speedup']:.2f}x ({interval_text(*c['raw_interval'])})" if c.get("raw_interval") else "-"]
            if corrected
            else []
        )
        rows.append(
            [
                mark,
                c["batch_size"],
                f"{c['learning_rate']:.3g}",
                format_ms(c["step_time_s"]),
                grouped(c["samples_per_s"]),
                f"{c['speedup_throughput']:.2f}x",
                "-" if c["speedup_time_to_target"] is None else f"{c['speedup_time_to_target']:.2f}x",
                interval_text(*interval) if interval else "-",
                *raw,
                c["rank"],
                c["excluded"] or "",
            ]
        )
    speed = rec["predicted_speedup"]
    coverage = f"{speed['coverage']:.0%} " if speed.get("coverage") else ""
    out.print(
        table(
            f"Recommendation {rec['recommendation_id']} from profile {rec['profile_id']} "
            f"({rec['workload']} on {rec['device']['name']})",
            [
                "",
                "batch",
                "lr",
                "step ms",
                "samples/s",
                "throughput",
                "time to target" + (" (corrected)" if corrected else ""),
                f"{coverage}interval",
                *(["raw model"] if corrected else []),
                "rank (by its low end)",
                "excluded",
            ],
            rows,
        )
    )
    if rec.get("accepted_load"):
        out.print(f"[bold yellow]{accepted_load_note(rec['accepted_load'])}[/bold yellow]")
    if rec.get("uncertain"):
        out.print(f"[yellow]{rec['uncertain']}[/yellow]")
    out.print(
        f"[bold]batch {rec['batch_size']}, learning rate {rec['learning_rate']:.4g}, warm-up "
        f"{rec['warmup_steps']} steps ({rec['warmup_samples']} samples), {rec['rule']} rule[/bold]  "
        f"(baseline: batch {base['batch_size']}, lr {base['learning_rate']:.4g})"
    )
    interval = speed.get("time_to_target_interval")
    out.print(
        f"predicted speedup: {speed['throughput']:.2f}x from throughput, "
        f"{speed['time_to_target']:.2f}x in time to target"
        + (
            f" ({coverage}prediction interval {interval_text(*interval)}, resampling {speed['interval_basis']})"
            if interval and speed.get("interval_basis")
            else f" ({interval_text(*interval)})"
            if interval
            else ""
        )
    )
    if speed.get("corrected"):  # ranked on the corrected noise model: the raw one beside it
        raw = speed["raw"]
        out.print(
            f"noise model: {model_text(rec)}; on the raw model {raw['time_to_target']:.2f}x "
            f"({coverage}prediction interval {interval_text(*raw['time_to_target_interval'])})"
        )
    per_day = rec["experiments_per_gpu_day"]
    if per_day["baseline"]:
        out.print(
            f"experiments per GPU-day ({rec['epochs']} epochs each): {per_day['baseline']:,.0f} at the "
            f"baseline, {per_day['recommended']:,.0f} recommended"
        )
    said = {rec.get("uncertain"), accepted_load_note(rec["accepted_load"]) if rec.get("accepted_load") else None}
    for reason in rec["reasons"]:
        if reason not in said:  # said above, where it cannot be missed
            out.print(f"- {reason}")
    if rec.get("batch_schedule"):
        print_batch_schedule(rec["batch_schedule"])
    out.print(f"export it: largestep export --recommendation {rec['recommendation_id']} --format yaml")


def print_batch_schedule(plan: dict) -> None:
    out = console()
    rows = [
        [
            f"{p['start_fraction']:.0%}",
            f"{p['baseline_fraction']:.0%}",
            grouped(p["noise_scale"]),
            p["batch_size"],
            f"{p['learning_rate']:.3g}",
            grouped(p["warmup_samples"]),
            format_ms(p["step_time_s"]),
        ]
        for p in plan["phases"]
    ]
    out.print(
        table(
            f"Batch schedule from noise curve {plan['curve_id']}",
            ["from (samples)", "baseline at", "B_noise", "batch", "lr", "warm-up samples", "step ms"],
            rows,
        )
    )
    speed, fixed = plan["predicted_speedup"], plan["best_fixed"]
    out.print(
        f"[bold]--batch-schedule {plan['spec']}[/bold]: predicted {speed['over_baseline']:.2f}x over the "
        f"baseline{_schedule_interval(speed, 'over_baseline')}, {speed['over_best_fixed']:.2f}x over the best "
        f"fixed batch{_schedule_interval(speed, 'over_best_fixed')} ({fixed['batch_size']}, "
        f"{fixed['speedup_over_baseline']:.2f}x over the baseline, priced on the same curve); "
        f"{plan['samples_ratio']:.2f}x the baseline's samples"
    )
    for reason in plan["reasons"]:
        out.print(f"- {reason}")


def _schedule_interval(speed: dict, key: str) -> str:
    interval = speed.get(f"{key}_interval")
    return f" ({speed.get('coverage', 0.9):.0%} prediction interval {interval_text(*interval)})" if interval else ""


@cli.command()
@json_option
@click.pass_context
def recommendations(ctx, as_json):
    """The stored recommendations, newest first."""
    from .. import store

    with open_store(ctx) as (_home, con):  # ingest: a lost database gets its saved recommendations back
        records = store.frame_records(store.list_recommendations(con))
    if as_json:
        emit_json(records)
        return
    if not records:
        click.echo("no recommendations yet: run `largestep recommend`")
        return
    rows = [
        [
            r["id"],
            str(r["created_at"])[:19],
            r["workload"],
            r["profile_id"],
            r["batch_size"],
            f"{r['learning_rate']:.3g}",
            r["rule"],
            f"{r['speedup_time_to_target']:.2f}x",
            "accepted under load" if r.get("accepted_load") else "",
        ]
        for r in records
    ]
    console().print(
        table(
            "Recommendations",
            ["id", "created", "workload", "profile", "batch", "lr", "rule", "predicted speedup", "flag"],
            rows,
        )
    )


@cli.command()
@click.option("--recommendation", "rec_id", default="latest", show_default=True, metavar="ID")
@click.option(
    "--format", "fmt", required=True, metavar="FORMAT", help="yaml, json, toml, torch, hf, lightning, deepspeed or cli."
)
@click.option("--devices", "n_devices", metavar="N", help="Split the global batch over N devices.")
@click.option("--micro-batch", metavar="M", help="Per-device micro-batch; the rest becomes gradient accumulation.")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")
@click.pass_context
def export(ctx, rec_id, fmt, n_devices, micro_batch, output):
    """Export a recommendation as a config file or a ready snippet."""
    from .. import store
    from ..plan.export import export_config
    from ..units import parse_positive_int

    n = parse_positive_int(n_devices, "--devices") if n_devices is not None else None
    micro = parse_positive_int(micro_batch, "--micro-batch") if micro_batch is not None else None
    with open_store(ctx) as (_home, con):  # ingest: a lost database gets its saved recommendations back
        rec = store.load_recommendation(con, rec_id)
    if rec is None:
        raise UsageError(
            "no recommendation yet: run `largestep recommend` first"
            if rec_id == "latest"
            else f"no recommendation {rec_id!r}; see `largestep recommendations`"
        )
    text = export_config(rec, fmt, devices=n, micro_batch=micro)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    write_atomic(Path(output), text)
    click.echo(f"wrote {output}", err=True)


@cli.command()
@click.option(
    "--recommendation",
    "rec_id",
    metavar="ID|latest",
    help="The recommendation to report (default: the profile's newest, or the newest of all).",
)
@click.option("--profile", "profile_id", metavar="ID", help="The profile to report (default: the recommendation's).")
@click.option(
    "-o",
    "--output",
    default="largestep-report.html",
    show_default=True,
    metavar="FILE",
    help="Where to write the HTML file.",
)
@click.pass_context
def report(ctx, rec_id, profile_id, output):
    """One self-contained HTML file (works offline): profile charts, the recommendation, and its runs."""
    from .. import store
    from ..ui.report import build_report

    home = home_of(ctx)
    store.check_database_file(home.database)
    if not home.database.exists():
        raise UsageError(
            "nothing to report yet: run `largestep profile --workload W` (and `largestep recommend`) first"
        )
    store.ingest(home)
    text = build_report(home, recommendation_id=rec_id, profile_id=profile_id)
    write_atomic(Path(output), text)
    click.echo(f"wrote {output} ({len(text.encode('utf-8')) / 2**20:.1f} MiB)", err=True)
