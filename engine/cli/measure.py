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
    parse_count,
    parse_nproc,
    parse_threads,
    threads_option,
    workload_options,
    workload_settings,
)
from .output import console, detached, emit_json, finish_job, follow_job, last_log_line, table
from ..errors import LargestepError, UsageError
from ..format import format_bytes, format_ms, format_pct, format_si, grouped
from ..measure.device_names import DTYPE_NAMES
from .. import curve
from ..curve import DEFAULT_ESTIMATOR, ESTIMATORS
from ..measure.profile_config import WARMUP_AGREEMENT


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
    rows = [[d.get("torch_device"), d.get("name"), format_bytes(d.get("total_memory_bytes")),
             d.get("compute_capability"), d.get("cores"), d.get("uuid")] for d in report["devices"]]
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
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True,
              help="Precision, through autocast.")
@click.option("--memory-budget", metavar="SIZE", help="Stop before a batch predicted or measured above this, e.g. 12GiB.")
@click.option("--full", is_flag=True, help="Do not stop on a throughput plateau.")
@click.option("--min-steps", default=10, show_default=True, type=int, help="Timed steps per batch size, at least.")
@click.option("--min-seconds", default=1.0, show_default=True, type=float, help="Timed seconds per batch size, at least.")
@click.option("--warmup-steps", default=3, show_default=True, type=int,
              help="Untimed steps per batch size, at most: the warm-up ends at the first step not more than "
                   f"{WARMUP_AGREEMENT:.0%} faster than the one before it, the steady state.")
@click.option("--rounds", default=3, show_default=True, type=int,
              help="Spread each batch size's timed steps over this many visits, every size once a round in a shuffled "
                   "order, so background load falls on all alike; 1 measures each size in one contiguous block.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--estimator", type=click.Choice(list(ESTIMATORS)), default=DEFAULT_ESTIMATOR, show_default=True,
              help="Which statistic of a batch size's timed steps is its step time. Interference only adds time, so "
                   "a low quantile is robust to it; the median is kept beside it either way.")
@compile_option
@threads_option
@nproc_option("Data-parallel processes on this machine (gloo on CPU, NCCL on CUDA): batch sizes are global, and the step "
              "time includes the gradient all-reduce.")
@launch_options
@click.option("--detach", is_flag=True, help="Start the job and return at once; follow it with `largestep profiles`.")
@json_option
@click.pass_context
def profile(ctx, workload, settings, data, label, device, batch_sizes, min_batch, max_batch, dtype, memory_budget,
            full, min_steps, min_seconds, warmup_steps, rounds, seed, estimator, compile_model, threads, nproc,
            launcher, ray_address, detach, as_json) -> int:
    """Measure step time, throughput and memory against batch size (runs as a job)."""
    from .. import jobs, store
    from ..jobs.ray import launcher_from_cli
    from ..jobs.start import start_profile
    from ..measure.profile_config import ProfileConfig
    from ..units import parse_batch_sizes, parse_positive_int, parse_size

    if batch_sizes and (min_batch or max_batch):
        raise UsageError("give either --batch-sizes or --min-batch/--max-batch, not both")
    config = ProfileConfig(
        batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes is not None else None,
        min_batch=parse_positive_int(min_batch, "--min-batch") if min_batch is not None else None,
        max_batch=parse_positive_int(max_batch, "--max-batch") if max_batch is not None else 65536,
        dtype=dtype, memory_budget_bytes=parse_size(memory_budget) if memory_budget is not None else None,
        full=full, min_steps=min_steps, min_seconds=min_seconds, warmup_steps=warmup_steps, rounds=rounds, seed=seed,
        nproc=parse_nproc(nproc), compile=compile_model, estimator=estimator, threads=parse_threads(threads),
    )
    run_on = launcher_from_cli(launcher, ray_address)
    home = home_of(ctx)
    job_id = start_profile(home, workload, workload_settings(settings, data, label), device, config, launcher=run_on)
    if detach:
        store.ingest(home)
        return detached(as_json, {"job_id": job_id, "profile_id": job_id, "state": jobs.PENDING},
                        f"started profile {job_id}; see `largestep profiles`")
    state = follow_job(home, job_id, describe=describe_profile_event, quiet=as_json)
    store.ingest(home)
    with store.connect(home) as con:
        stored = store.load_profile(con, job_id)
        job = store.get_job(con, job_id)
    if stored is None or not stored.get("points"):
        error = (job or {}).get("error") or last_log_line(home, job_id)
        raise LargestepError(f"profile {job_id} ended {state} without measuring any batch size: {error}")
    summary = profile_summary(stored)
    if as_json:
        emit_json(summary)
    else:
        print_profile(summary)
    return 0 if state == jobs.FINISHED else 1


def profile_summary(profile: dict) -> dict:
    """A stored profile (from :func:`largestep.store.load_profile`) in the shape `profile --json` promises."""
    points = []
    for p in profile["points"]:
        points.append({
            "batch_size": p["batch_size"], "status": p["status"],
            # the step time is the profile's estimator of the timed steps; the median and quartiles beside it
            "step_time_s": {"estimate": p.get("estimate_s") or p.get("median_s"), "median": p.get("median_s"),
                            "p25": p.get("p25_s"), "p75": p.get("p75_s"), "n": p.get("n") or 0},
            "samples_per_s": p.get("samples_per_s"), "peak_memory_bytes": p.get("peak_memory_bytes"),
            "memory_is_estimate": p.get("memory_is_estimate"), "flops_per_step": p.get("flops_per_step"),
            "flops_per_s": p.get("flops_per_s"), "energy_per_sample_j": p.get("energy_per_sample_j"),
            "noisy": p.get("noisy"), "error": p.get("error"),
            # Dataset workloads: the step without its loader, and whether the loader limits throughput
            "compute_time_s": p.get("compute_median_s"), "input_bound": bool(p.get("input_bound")),
            # interleaved rounds, the physics check, and other processes' CPU share while it was timed
            "visits": p.get("visits"), "remeasured": p.get("remeasured"), "inconsistent": bool(p.get("inconsistent")),
            "background_cpu_pct": p.get("background_cpu_pct"),
            # visits set aside because other processes took the cores the steps needed, and whether too
            # few were left uncontended (the steps kept include contended ones)
            "others_busy_cores": p.get("others_busy_cores"), "loaded_visits": p.get("loaded_visits") or 0,
            "under_load": bool(p.get("under_load")),
            # untimed steps before the size's first timed ones: fewer than --warmup-steps once steady
            "warmup_steps": int(p["warmup_steps"]) if p.get("warmup_steps") is not None else None,
        })
    fit = None
    if profile.get("memory_fit_slope_bytes") is not None:
        fit = {"intercept_bytes": profile["memory_fit_intercept_bytes"], "slope_bytes": profile["memory_fit_slope_bytes"]}
    return {
        "profile_id": profile["id"], "workload": profile["workload"], "state": profile.get("state"),
        "device": {"id": profile.get("device_id"), "name": profile.get("device_name"), "kind": profile.get("device_kind")},
        "dtype": profile.get("dtype"), "saturation_batch": profile.get("saturation_batch"),
        "stop_reason": profile.get("stop_reason"), "memory_fit": fit,
        "memory_budget_bytes": profile.get("memory_budget_bytes"),
        "baseline": {"batch_size": profile.get("baseline_batch_size"), "learning_rate": profile.get("baseline_lr")},
        "telemetry": {"source": profile.get("telemetry_source"), "reason": profile.get("telemetry_reason")},
        "started_at": profile.get("started_at"), "ended_at": profile.get("ended_at"), "points": points,
        "inconsistency": profile.get("inconsistency"),
        "estimator": profile.get("estimator") or "median", "threads": profile.get("threads"),
        "cores": profile.get("cores"), "carried_from": profile.get("carried_from"),
        # why the profile cannot be used for recommending (`recommend` refuses it unless --accept-load); and
        # whether torch's threads and other processes' busy cores exceed the machine's (then --threads)
        "refusal": curve.refusal(profile), "threads_note": curve.threads_note(profile),
    }


def print_profile(summary: dict) -> None:
    # a Dataset workload's points also carry the compute alone: one more column, and the input-bound flag
    with_loader = any(p.get("compute_time_s") is not None for p in summary["points"])
    rows = []
    for p in summary["points"]:
        st = p["step_time_s"]
        mem = format_bytes(p["peak_memory_bytes"]) + (" (est.)" if p.get("memory_is_estimate") else "")
        status = (p["status"] + (" noisy" if p.get("noisy") else "") + (" input-bound" if p.get("input_bound") else "")
                  + (" inconsistent" if p.get("inconsistent") else "") + (" under-load" if p.get("under_load") else ""))
        rows.append([p["batch_size"], status, format_ms(st["estimate"]), format_ms(st["median"]),
                     *([format_ms(p.get("compute_time_s"))] if with_loader else []),
                     f"{format_ms(st['p25'])}-{format_ms(st['p75'])}", st["n"], grouped(p["samples_per_s"]),
                     mem, format_si(p.get("flops_per_s"), "FLOP/s"), format_pct(p.get("background_cpu_pct"))])
    title = f"Profile {summary['profile_id']}: {summary['workload']} on {summary['device']['name']} ({summary['dtype']})"
    out = console()
    columns = ["batch", "status", f"step ms ({summary.get('estimator') or 'median'})", "median ms"
               + (" (with loader)" if with_loader else ""),
               *(["compute ms"] if with_loader else []), "IQR ms", "steps", "samples/s", "peak memory", "achieved",
               "background CPU"]
    out.print(table(title, columns, rows))
    out.print(f"saturation batch: {summary['saturation_batch']} (smallest batch at 90% of the best throughput); "
              f"sweep stopped: {summary['stop_reason']}")
    if summary.get("inconsistency"):
        out.print(f"[yellow]inconsistent: {summary['inconsistency']}[/yellow]")
    aside = sum(p.get("loaded_visits") or 0 for p in summary["points"])
    if aside:
        out.print(f"{aside} visit{'s' if aside != 1 else ''} set aside and measured again: other processes took the "
                  f"cores the steps need")
    if any(p.get("under_load") for p in summary["points"]):
        out.print("[yellow]under-load: other processes took the cores the steps need on every visit the sweep could "
                  "afford; those step times include the contention (profile again on a quieter machine)[/yellow]")
    if summary.get("threads_note"):
        out.print(f"[yellow]threads: {summary['threads_note']}[/yellow]")
    if summary.get("refusal"):
        out.print(f"[bold yellow]{summary['refusal']}[/bold yellow]")
    if any(p.get("input_bound") for p in summary["points"]):
        out.print("input-bound: the data loader, not the compute, limits throughput there; a larger batch will not "
                  "help until loading is faster (more num_workers, a lighter collate_fn)")


def load_note(point: dict) -> str:
    """How other processes' load shaped a point, as a clause (empty when they did not)."""
    aside = point.get("loaded_visits") or 0
    if point.get("under_load"):
        return ", measured under load (other processes took the cores it needs)"
    return f", {aside} contended visit{'s' if aside != 1 else ''} set aside" if aside else ""


def describe_profile_event(event: dict) -> str | None:
    from ..jobs import events

    if event.get("type") != events.POINT:
        return None
    if event.get("status") == "ok":
        bound = ", input-bound" if event.get("input_bound") else ""
        # a batch size is reported again as its interleaved rounds, a re-measure or the physics check end
        rounds = f", over {event['visits']} visits" if (event.get("visits") or 1) > 1 else ""
        again = ", re-measured" if event.get("remeasured") else ""
        flag = ", inconsistent with its neighbours" if event.get("inconsistent") else ""
        step = event.get("estimate_s") or event["median_s"]
        return (f"batch {event['batch_size']}: {step * 1e3:.2f} ms/step, "
                f"{event['samples_per_s']:,.0f} samples/s{bound}{rounds}{again}{load_note(event)}{flag}")
    return f"batch {event['batch_size']}: {event['status']} ({event.get('error') or ''})"


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
    rows = [[r["id"], r["workload"], r["device_name"], r["dtype"], str(r["started_at"])[:19], r["state"],
             r["ok_points"], r["max_ok_batch"], r["saturation_batch"], r["stop_reason"],
             "inconsistent" if r.get("inconsistency") else ""] for r in records]
    console().print(table("Profiles", ["id", "workload", "device", "dtype", "started", "state", "points", "max batch",
                                       "saturation", "stopped", "flag"], rows))


@cli.command()
@workload_options
@device_option()
@click.option("--batch-small", metavar="B", help="The small batch (default: the workload's baseline batch).")
@click.option("--batch-big", metavar="B", help="The big batch, a multiple of the small one (default: 8x).")
@click.option("--batches", default="32", show_default=True, metavar="K", help="Big batches averaged over.")
@click.option("--warm-steps", default="auto", show_default=True, metavar="S",
              help="Train the baseline this many steps first, since the noise scale grows as the loss falls "
                   "(auto: one epoch, at most 500 steps).")
@click.option("--at", "at", metavar="FRACTIONS",
              help="A curve instead of one estimate: the noise scale at these fractions of one baseline run's "
                   "training, e.g. 0,0.25,0.5,1 (replaces --warm-steps).")
@click.option("--seed", default=0, show_default=True, type=int)
@compile_option
@json_option
@click.pass_context
def noise(ctx, workload, settings, data, label, device, batch_small, batch_big, batches, warm_steps, at, seed,
          compile_model, as_json):
    """Estimate the gradient noise scale B_simple (McCandlish et al. 2018) with a confidence interval."""
    from .. import store
    from ..jobs import events
    from ..jobs.start import start_noise
    from ..units import parse_fractions, parse_positive_int

    small = parse_positive_int(batch_small, "--batch-small") if batch_small is not None else None
    big = parse_positive_int(batch_big, "--batch-big") if batch_big is not None else None
    count = parse_positive_int(batches, "--batches")
    home = home_of(ctx)
    if at is not None:
        if warm_steps != "auto":
            raise UsageError("--at and --warm-steps do not go together: each point of a curve trains the baseline "
                             "to its own fraction; drop --warm-steps")
        _noise_curve(home, workload, workload_settings(settings, data, label), device, parse_fractions(at), small, big,
                     count, seed, compile_model, as_json)
        return
    warm = None if warm_steps == "auto" else parse_count(warm_steps, "--warm-steps")
    job_id = start_noise(home, workload, workload_settings(settings, data, label), device, small, big, count, warm,
                         seed, compile=compile_model)
    finish_job(home, job_id, "noise estimate", as_json)
    with store.connect(home) as con:
        estimate = store.load_noise(con, job_id)
    fields = [f for f in events.NOISE_FIELDS if f not in ("g_small_sq", "g_big_sq")]
    result = {"noise_id": job_id, "workload": estimate["workload"], **{k: estimate.get(k) for k in fields}}
    if as_json:
        emit_json(result)
        return
    if result["b_simple"] is None:
        click.echo(f"noise estimate {job_id}: unreliable: {result['reason']}")
    else:
        ci = "" if result["ci_low"] is None else f" (90% interval {result['ci_low']:,.0f} to {result['ci_high']:,.0f})"
        click.echo(f"noise estimate {job_id}: B_simple = {result['b_simple']:,.0f}{ci}")
    compiled = f" (compiling before it: {result['compile_s']:.1f} s)" if result.get("compile_s") is not None else ""
    click.echo(f"from {result['batches']} batches of {result['batch_big']} split into {result['batch_small']}; "
               f"{result['elapsed_s']:.1f} s{compiled}, about {result['step_equivalents']:.0f} baseline training steps")


def _noise_curve(home, workload, options, device, at, batch_small, batch_big, batches, seed, compile_model,
                 as_json) -> None:
    """`noise --at`: start the curve's job, follow it, show its points."""
    from .. import store
    from ..jobs.start import start_noise_curve

    job_id = start_noise_curve(home, workload, options, device, at, batch_small, batch_big, batches, seed,
                               compile=compile_model)
    finish_job(home, job_id, "noise curve", as_json)
    with store.connect(home) as con:
        points = store.load_noise_curve(con, job_id)
    fields = ("fraction", "step", "b_simple", "ci_low", "ci_high", "batch_small", "batch_big", "batches",
              "unreliable", "reason", "elapsed_s")
    result = {"curve_id": job_id, "workload": points[0]["workload"] if points else None,
              "points": [{k: p.get(k) for k in fields} for p in points]}
    if as_json:
        emit_json(result)
        return
    rows = [[f"{p['fraction']:g}", grouped(p["step"]), grouped(p["b_simple"]), grouped(p["ci_low"]),
             grouped(p["ci_high"]), p["reason"] or ""] for p in points]
    console().print(table(f"Noise curve {job_id} ({result['workload']})",
                          ["fraction", "baseline step", "B_simple", "90% low", "90% high", "unreliable because"],
                          rows))
