"""Measuring: `hardware`, `profile`, `profiles` and `noise`."""

from __future__ import annotations

import click

from .group import cli
from .options import (
    compile_option,
    device_option,
    home_of,
    json_option,
    launch_options,
    nproc_option,
    open_store,
    threads_option,
    workload_options,
    workload_settings,
    tf32_option,
)
from .output import console, detached, emit_json, finish_job, follow_job, table
from ..format import format_bytes, format_math, format_ms, format_pct, format_si, grouped
from ..measure.devices_config import DTYPE_NAMES
from ..curve import DEFAULT_ESTIMATOR, ESTIMATORS
from ..measure.profiler_config import WARMUP_AGREEMENT


@cli.command()
@json_option
@click.pass_context
def hardware(ctx, as_json: bool) -> None:
    """Devices, memory, driver, whether NVML telemetry is available (and why not), the workload cache's size."""
    from ..measure.telemetry import hardware_report
    from ..workloads.cache import cache_of

    report = hardware_report()
    workloads = cache_of(home_of(ctx))
    usage = workloads.usage()
    report["workload_cache"] = {"path": str(workloads.root), "entries": usage.entries, "bytes": usage.bytes}
    if as_json:
        emit_json(report)
        return
    rows = [
        [
            d.get("torch_device"),
            d.get("name"),
            format_bytes(d.get("total_memory_bytes")),
            d.get("compute_capability"),
            d.get("cores"),
            d.get("uuid"),
        ]
        for d in report["devices"]
    ]
    out = console()
    out.print(table("Devices", ["device", "name", "memory", "capability", "cores/SMs", "uuid"], rows))
    nvml = report.get("nvml") or {}
    if nvml.get("available"):
        out.print(f"NVML: available, driver {nvml.get('driver_version')}, {nvml.get('gpu_count')} GPU(s)")
    else:
        out.print(f"NVML: not available ({nvml.get('reason')}); telemetry falls back to CPU and process memory")
    out.print(f"torch {report.get('torch')}, CUDA {report.get('cuda') or 'none'}, host {report.get('host')}")
    out.print(f"workload cache: {usage.summary} in {workloads.root} (`largestep cache clear` empties it)")


@cli.command()
@workload_options
@device_option()
@click.option("--batch-sizes", metavar="LIST", help="Explicit batch sizes, e.g. 32,128,512.")
@click.option("--min-batch", metavar="N", help="Smallest power-of-two batch (default: a quarter of the baseline).")
@click.option("--max-batch", metavar="N", help="Largest batch to try.  [default: 65536]")
@click.option(
    "--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True, help="Precision, through autocast."
)
@click.option(
    "--memory-budget", metavar="SIZE", help="Stop before a batch predicted or measured above this, e.g. 12GiB."
)
@click.option("--full", is_flag=True, help="Do not stop on a throughput plateau.")
@click.option("--min-steps", default=10, show_default=True, type=int, help="Timed steps per batch size, at least.")
@click.option(
    "--min-seconds", default=1.0, show_default=True, type=float, help="Timed seconds per batch size, at least."
)
@click.option(
    "--warmup-steps",
    default=3,
    show_default=True,
    type=int,
    help="Untimed steps per batch size, at most: the warm-up ends at the first step not more than "
    f"{WARMUP_AGREEMENT:.0%} faster than the one before it, the steady state.",
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=int,
    help="Spread each batch size's timed steps over this many visits, every size once a round in a shuffled "
    "order, so background load falls on all alike; 1 measures each size in one contiguous block.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--estimator",
    type=click.Choice(list(ESTIMATORS)),
    default=DEFAULT_ESTIMATOR,
    show_default=True,
    help="Which statistic of a batch size's timed steps is its step time. Interference only adds time, so "
    "a low quantile is robust to it; the median is kept beside it either way.",
)
@compile_option
@tf32_option
@threads_option
@nproc_option(
    "Data-parallel processes on this machine (gloo on CPU, NCCL on CUDA): batch sizes are global, and the step "
    "time includes the gradient all-reduce."
)
@launch_options
@click.option("--detach", is_flag=True, help="Start the job and return at once; follow it with `largestep profiles`.")
@json_option
@click.pass_context
def profile(
    ctx,
    workload,
    settings,
    data,
    label,
    device,
    batch_sizes,
    min_batch,
    max_batch,
    dtype,
    memory_budget,
    full,
    min_steps,
    min_seconds,
    warmup_steps,
    rounds,
    seed,
    estimator,
    compile_model,
    tf32,
    threads,
    nproc,
    launcher,
    ray_address,
    detach,
    as_json,
) -> int:
    """Measure step time, throughput and memory against batch size (runs as a job)."""
    from .. import jobs, store
    from ..jobs.follow import describe_profile_event
    from ..jobs.ray import launcher_from_cli
    from ..jobs.start import start_profile
    from ..measure.profiler_config import ProfileConfig

    config = ProfileConfig.from_options(
        batch_sizes=batch_sizes,
        min_batch=min_batch,
        max_batch=max_batch,
        memory_budget=memory_budget,
        nproc=nproc,
        dtype=dtype,
        full=full,
        min_steps=min_steps,
        min_seconds=min_seconds,
        warmup_steps=warmup_steps,
        rounds=rounds,
        seed=seed,
        compile=compile_model,
        tf32=tf32,
        estimator=estimator,
        threads=threads,
    )
    run_on = launcher_from_cli(launcher, ray_address)
    home = home_of(ctx)
    job_id = start_profile(home, workload, workload_settings(settings, data, label), device, config, launcher=run_on)
    if detach:
        store.ingest(home)
        return detached(
            as_json,
            {"job_id": job_id, "profile_id": job_id, "state": jobs.PENDING},
            f"started profile {job_id}; see `largestep profiles`",
        )
    state = follow_job(home, job_id, describe=describe_profile_event, quiet=as_json)
    summary = store.profile_outcome(home, job_id, state)
    if as_json:
        emit_json(summary)
    else:
        print_profile(summary)
    return 0 if state == jobs.FINISHED else 1


def print_profile(summary: dict) -> None:
    # a Dataset workload's points also carry the compute alone: one more column, and the input-bound flag
    with_loader = any(p.get("compute_time_s") is not None for p in summary["points"])
    rows = []
    for p in summary["points"]:
        st = p["step_time_s"]
        mem = format_bytes(p["peak_memory_bytes"]) + (" (est.)" if p.get("memory_is_estimate") else "")
        status = (
            p["status"]
            + (" noisy" if p.get("noisy") else "")
            + (" input-bound" if p.get("input_bound") else "")
            + (" inconsistent" if p.get("inconsistent") else "")
            + (" under-load" if p.get("under_load") else "")
        )
        rows.append(
            [
                p["batch_size"],
                status,
                format_ms(st["estimate"]),
                format_ms(st["median"]),
                *([format_ms(p.get("compute_time_s"))] if with_loader else []),
                f"{format_ms(st['p25'])}-{format_ms(st['p75'])}",
                st["n"],
                grouped(p["samples_per_s"]),
                mem,
                format_si(p.get("flops_per_s"), "FLOP/s"),
                format_pct(p.get("background_cpu_pct")),
            ]
        )
    title = (
        f"Profile {summary['profile_id']}: {summary['workload']} on {summary['device']['name']} ({summary['dtype']})"
    )
    out = console()
    columns = [
        "batch",
        "status",
        f"step ms ({summary.get('estimator') or 'median'})",
        "median ms" + (" (with loader)" if with_loader else ""),
        *(["compute ms"] if with_loader else []),
        "IQR ms",
        "steps",
        "samples/s",
        "peak memory",
        "achieved",
        "background CPU",
    ]
    out.print(table(title, columns, rows))
    saturation = summary["saturation_batch"]
    out.print(
        f"saturation batch: {saturation} (smallest batch at 90% of the best throughput); "
        if saturation is not None
        else "saturation batch: none (every measured point is noisy: none is steady enough to be it); ",
        f"sweep stopped: {summary['stop_reason']}",
        sep="",
    )
    if summary.get("math_settings"):
        out.print(f"measured with {format_math(summary['math_settings'])}")
    if summary.get("inconsistency"):
        out.print(f"[yellow]inconsistent: {summary['inconsistency']}[/yellow]")
    aside = sum(p.get("loaded_visits") or 0 for p in summary["points"])
    if aside:
        out.print(
            f"{aside} visit{'s' if aside != 1 else ''} set aside and measured again: other processes took the "
            f"cores the steps need"
        )
    if any(p.get("under_load") for p in summary["points"]):
        out.print(
            "[yellow]under-load: other processes took the cores the steps need on every visit the sweep could "
            "afford; those step times include the contention (profile again on a quieter machine)[/yellow]"
        )
    if summary.get("threads_note"):
        out.print(f"[yellow]threads: {summary['threads_note']}[/yellow]")
    if summary.get("refusal"):
        out.print(f"[bold yellow]{summary['refusal']}[/bold yellow]")
    if any(p.get("input_bound") for p in summary["points"]):
        out.print(
            "input-bound: the data loader, not the compute, limits throughput there; a larger batch will not "
            "help until loading is faster (more num_workers, a lighter collate_fn)"
        )


@cli.command()
@json_option
@click.pass_context
def profiles(ctx, as_json: bool) -> None:
    """The stored profiles, newest first."""
    from .. import store

    with open_store(ctx) as (_home, con):
        records = store.frame_records(store.list_profiles(con))
    if as_json:
        emit_json(records)
        return
    if not records:
        click.echo("no profiles yet: run `largestep profile --workload fraud-gru`")
        return
    rows = [
        [
            r["id"],
            r["workload"],
            r["device_name"],
            r["dtype"],
            str(r["started_at"])[:19],
            r["state"],
            r["ok_points"],
            r["max_ok_batch"],
            r["saturation_batch"],
            r["stop_reason"],
            "inconsistent" if r.get("inconsistency") else "",
        ]
        for r in records
    ]
    console().print(
        table(
            "Profiles",
            [
                "id",
                "workload",
                "device",
                "dtype",
                "started",
                "state",
                "points",
                "max batch",
                "saturation",
                "stopped",
                "flag",
            ],
            rows,
        )
    )


@cli.command()
@workload_options
@device_option()
@click.option("--batch-small", metavar="B", help="The small batch (default: the workload's baseline batch).")
@click.option("--batch-big", metavar="B", help="The big batch, a multiple of the small one (default: 8x).")
@click.option("--batches", default="32", show_default=True, metavar="K", help="Big batches averaged over.")
@click.option(
    "--warm-steps",
    default="auto",
    show_default=True,
    metavar="S",
    help="Train the baseline this many steps first, since the noise scale grows as the loss falls "
    "(auto: one epoch, at most 500 steps).",
)
@click.option(
    "--at",
    "at",
    metavar="FRACTIONS",
    help="A curve instead of one estimate: the noise scale at these fractions of one baseline run's "
    "training, e.g. 0,0.25,0.5,1 (replaces --warm-steps).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@compile_option
@json_option
@click.pass_context
def noise(
    ctx,
    workload,
    settings,
    data,
    label,
    device,
    batch_small,
    batch_big,
    batches,
    warm_steps,
    at,
    seed,
    compile_model,
    as_json,
):
    """Estimate the gradient noise scale B_simple (McCandlish et al. 2018) with a confidence interval."""
    from .. import store
    from ..jobs.start import start_noise_request
    from ..measure.noise_config import NoiseRequest

    request = NoiseRequest.from_options(batch_small, batch_big, batches, warm_steps, at, seed, compile_model)
    home = home_of(ctx)
    job_id = start_noise_request(home, workload, workload_settings(settings, data, label), device, request)
    if request.at is not None:
        finish_job(home, job_id, "noise curve", as_json)
        result = store.noise_curve_outcome(home, job_id)
        if as_json:
            emit_json(result)
        else:
            print_noise_curve(result)
        return
    finish_job(home, job_id, "noise estimate", as_json)
    result = store.noise_outcome(home, job_id)
    if as_json:
        emit_json(result)
        return
    if result["b_simple"] is None:
        click.echo(f"noise estimate {job_id}: unreliable: {result['reason']}")
    else:
        ci = "" if result["ci_low"] is None else f" (90% interval {result['ci_low']:,.0f} to {result['ci_high']:,.0f})"
        click.echo(f"noise estimate {job_id}: B_simple = {result['b_simple']:,.0f}{ci}")
    compiled = f" (compiling before it: {result['compile_s']:.1f} s)" if result.get("compile_s") is not None else ""
    click.echo(
        f"from {result['batches']} batches of {result['batch_big']} split into {result['batch_small']}; "
        f"{result['elapsed_s']:.1f} s{compiled}, about {result['step_equivalents']:.0f} baseline training steps"
    )


def print_noise_curve(result: dict) -> None:
    rows = [
        [
            f"{p['fraction']:g}",
            grouped(p["step"]),
            grouped(p["b_simple"]),
            grouped(p["ci_low"]),
            grouped(p["ci_high"]),
            p["reason"] or "",
        ]
        for p in result["points"]
    ]
    console().print(
        table(
            f"Noise curve {result['curve_id']} ({result['workload']})",
            ["fraction", "baseline step", "B_simple", "90% low", "90% high", "unreliable because"],
            rows,
        )
    )
