"""The ``largestep`` command line: every step headless, human output by default, ``--json`` for machines.

Bad input of any kind ends with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from engine import __version__
from engine.errors import LargestepError, UsageError
from engine.home import Home, resolve_home

__all__ = ["main", "cli"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- output helpers ------------------------------------------------------------------------------


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a CI log): wide enough that tables do not wrap every cell.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, allow_nan=False) if data is not None else "null")


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null so that --json output is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _table(title: str, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["-" if v is None else str(v) for v in row])
    return table


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _fmt_si(value: float | None, unit: str) -> str:
    """1.23e9, "FLOP/s" -> "1.23 GFLOP/s"."""
    if value is None:
        return "-"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _fmt_num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- shared options ------------------------------------------------------------------------------


class State:
    def __init__(self, home: str | None):
        self._home_arg = home

    @property
    def home(self) -> Home:
        return resolve_home(self._home_arg).check()


def _home(ctx: click.Context) -> Home:
    return ctx.find_object(State).home


def _parse_options(pairs: tuple[str, ...], data: str | None, label: str | None) -> dict[str, str]:
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


def launch_options(fn: Callable) -> Callable:
    """--launcher, --ray-address: where the job's work runs (here, or as tasks on a Ray cluster)."""
    fn = click.option("--ray-address", metavar="ADDR",
                      help="The Ray cluster, e.g. ray://head:10001 or head:6379 (default: $RAY_ADDRESS, else the "
                           "cluster started on this machine, else a new local one).")(fn)
    fn = click.option("--launcher", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                      help="local: processes on this machine; ray: tasks on a Ray cluster, one GPU (or CPU) each "
                           "(pip install 'largestep[ray]').")(fn)
    return fn


def _nproc(text: str) -> int:
    from engine.units import parse_positive_int

    return parse_positive_int(text, "--nproc")


def workload_options(fn: Callable) -> Callable:
    """--workload, --set KEY=VALUE, --data, --label: shared by every command that loads a workload."""
    fn = click.option("--label", metavar="COLUMN", help="The label column, for --workload table.")(fn)
    fn = click.option("--data", metavar="FILE", help="A Parquet or CSV file, for --workload table.")(fn)
    fn = click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                      help="An argument of the workload function, e.g. --set samples=4000 (repeatable).")(fn)
    fn = click.option("--workload", "-w", required=True, metavar="W",
                      help="A built-in (fraud-gru, fraud-mlp, table), package.module:function, "
                           "path/to/file.py:function, or an entry point in group largestep.workloads.")(fn)
    return fn


# -- the group -------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", metavar="DIR", envvar="LARGESTEP_HOME",
              help="Where the database and job spools live (default ./.largestep, or $LARGESTEP_HOME).")
@click.version_option(__version__, prog_name="largestep")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """largestep: train faster with large, precise gradient steps.

    Profile how step time grows with batch size on your hardware, then train the baseline
    and a larger batch with the learning rate scaled, and compare them.
    """
    ctx.obj = State(home)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def hardware(as_json: bool) -> None:
    """Devices, memory, driver, and whether NVML telemetry is available (and why not)."""
    from engine.telemetry import hardware_report

    report = hardware_report()
    if as_json:
        emit_json(_jsonable(report))
        return
    from engine.units import format_bytes

    rows = [[d.get("torch_device"), d.get("name"), format_bytes(d.get("total_memory_bytes")),
             d.get("compute_capability"), d.get("cores"), d.get("uuid")] for d in report["devices"]]
    console = _console()
    console.print(_table("Devices", ["device", "name", "memory", "capability", "cores/SMs", "uuid"], rows))
    nvml = report.get("nvml") or {}
    if nvml.get("available"):
        console.print(f"NVML: available, driver {nvml.get('driver_version')}, {nvml.get('gpu_count')} GPU(s)")
    else:
        console.print(f"NVML: not available ({nvml.get('reason')}); telemetry falls back to CPU and process memory")
    console.print(f"torch {report.get('torch')}, CUDA {report.get('cuda') or 'none'}, host {report.get('host')}")


@cli.command()
@workload_options
@click.option("--device", "-d", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-sizes", metavar="LIST", help="Explicit batch sizes, e.g. 32,128,512.")
@click.option("--min-batch", metavar="N", help="Smallest power-of-two batch (default: a quarter of the baseline).")
@click.option("--max-batch", metavar="N", help="Largest batch to try.  [default: 65536]")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Precision, through autocast.")
@click.option("--memory-budget", metavar="SIZE", help="Stop before a batch predicted or measured above this, e.g. 12GiB.")
@click.option("--full", is_flag=True, help="Do not stop on a throughput plateau.")
@click.option("--min-steps", default=10, show_default=True, type=int, help="Timed steps per batch size, at least.")
@click.option("--min-seconds", default=1.0, show_default=True, type=float, help="Timed seconds per batch size, at least.")
@click.option("--warmup-steps", default=3, show_default=True, type=int, help="Untimed steps per batch size.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--nproc", default="1", show_default=True, metavar="N",
              help="Data-parallel processes (torchrun; gloo on CPU, NCCL on CUDA): batch sizes are global, and "
                   "the step time includes the gradient all-reduce.")
@launch_options
@click.option("--detach", is_flag=True, help="Start the job and return at once; follow it with `largestep profiles`.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def profile(ctx, workload, settings, data, label, device, batch_sizes, min_batch, max_batch, dtype, memory_budget,
            full, min_steps, min_seconds, warmup_steps, seed, nproc, launcher, ray_address, detach, as_json) -> int:
    """Measure step time, throughput and memory against batch size (runs as a job)."""
    from engine import jobs, store
    from engine.actions import profile_summary, start_profile
    from engine.profiler import ProfileConfig
    from engine.units import parse_batch_sizes, parse_positive_int, parse_size

    if batch_sizes and (min_batch or max_batch):
        raise UsageError("give either --batch-sizes or --min-batch/--max-batch, not both")
    config = ProfileConfig(
        batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes is not None else None,
        min_batch=parse_positive_int(min_batch, "--min-batch") if min_batch is not None else None,
        max_batch=parse_positive_int(max_batch, "--max-batch") if max_batch is not None else 65536,
        dtype=dtype, memory_budget_bytes=parse_size(memory_budget) if memory_budget is not None else None,
        full=full, min_steps=min_steps, min_seconds=min_seconds, warmup_steps=warmup_steps, seed=seed,
        nproc=_nproc(nproc),
    )
    from engine.launchers import launcher_from_cli

    run_on = launcher_from_cli(launcher, ray_address)
    options = _parse_options(settings, data, label)
    home = _home(ctx)
    job_id = start_profile(home, workload, options, device, config, launcher=run_on)
    if detach:
        store.ingest(home)
        if as_json:
            emit_json({"job_id": job_id, "profile_id": job_id, "state": jobs.PENDING})
        else:
            click.echo(f"started profile {job_id}; see `largestep profiles`")
        return 0
    state = follow_job(home, job_id, describe=_describe_profile_event, quiet=as_json)
    store.ingest(home)
    with store.connect(home) as con:
        stored = store.load_profile(con, job_id)
        job = store.get_job(con, job_id)
    if stored is None or not stored.get("points"):
        error = (job or {}).get("error") or _last_log_line(home, job_id)
        raise LargestepError(f"profile {job_id} ended {state} without measuring any batch size: {error}")
    summary = profile_summary(stored)
    if as_json:
        emit_json(_jsonable(summary))
    else:
        print_profile(summary)
    return 0 if state == jobs.FINISHED else 1


def print_profile(summary: dict) -> None:
    from engine.units import format_bytes

    console = _console()
    rows = []
    for p in summary["points"]:
        st = p["step_time_s"]
        mem = format_bytes(p["peak_memory_bytes"]) + (" (est.)" if p.get("memory_is_estimate") else "")
        rows.append([p["batch_size"], p["status"] + (" noisy" if p.get("noisy") else ""), _fmt_ms(st["median"]),
                     f"{_fmt_ms(st['p25'])}-{_fmt_ms(st['p75'])}", st["n"], _fmt_num(p["samples_per_s"]),
                     mem, _fmt_si(p.get("flops_per_s"), "FLOP/s")])
    title = f"Profile {summary['profile_id']}: {summary['workload']} on {summary['device']['name']} ({summary['dtype']})"
    console.print(_table(title, ["batch", "status", "median ms", "IQR ms", "steps", "samples/s", "peak memory",
                                 "achieved"], rows))
    console.print(f"saturation batch: {summary['saturation_batch']} (smallest batch at 90% of the best throughput); "
                  f"sweep stopped: {summary['stop_reason']}")


def _describe_profile_event(event: dict) -> str | None:
    if event.get("type") != "point":
        return None
    if event.get("status") == "ok":
        return (f"batch {event['batch_size']}: {event['median_s'] * 1e3:.2f} ms/step, "
                f"{event['samples_per_s']:,.0f} samples/s")
    return f"batch {event['batch_size']}: {event['status']} ({event.get('error') or ''})"


def follow_job(home: Home, job_id: str, describe: Callable[[dict], str | None], quiet: bool = False) -> str:
    """Show a job's progress until it ends; Ctrl-C cancels it. Returns the final state."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from engine import jobs

    job_dir = home.job_dir(job_id)
    events_path = job_dir / "events.jsonl"
    offset = 0
    interactive = sys.stderr.isatty() and not quiet
    console = _console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=console, disable=not interactive, transient=False)
    try:
        with progress:
            task = progress.add_task(f"{job_id}: starting", total=1.0)
            while True:
                with open(events_path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                end = chunk.rfind(b"\n")
                if end >= 0:
                    offset += end + 1
                    for line in chunk[: end + 1].decode("utf-8", "replace").splitlines():
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        text = describe(event)
                        if text and not quiet:
                            if interactive:
                                progress.console.print(text)
                            else:
                                click.echo(text, err=True)
                status = jobs.read_status(job_dir) or {}
                progress.update(task, completed=status.get("progress") or 0.0,
                                description=f"{job_id}: {status.get('phase') or status.get('state', '')}")
                state = jobs.derive_state(job_dir)
                if state in jobs.FINAL_STATES:
                    return state
                time.sleep(0.2)
    except KeyboardInterrupt:
        jobs.cancel(home, job_id)
        click.echo(f"cancelled {job_id}", err=True)
        raise


def _last_log_line(home: Home, job_id: str) -> str:
    try:
        lines = (home.job_dir(job_id) / "output.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"
    except OSError:
        return "no output"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def profiles(ctx, as_json: bool) -> None:
    """The stored profiles, newest first."""
    from engine import store

    home = _home(ctx)
    store.check_database_file(home.database)
    store.ingest(home)
    with store.connect(home) as con:
        frame = store.list_profiles(con)
    records = store.frame_records(frame)
    if as_json:
        emit_json(_jsonable(records))
        return
    if not records:
        click.echo("no profiles yet: run `largestep profile --workload fraud-gru`")
        return
    rows = [[r["id"], r["workload"], r["device_name"], r["dtype"], str(r["started_at"])[:19], r["state"],
             r["ok_points"], r["max_ok_batch"], r["saturation_batch"], r["stop_reason"]] for r in records]
    _console().print(_table("Profiles", ["id", "workload", "device", "dtype", "started", "state", "points",
                                         "max batch", "saturation", "stopped"], rows))


def _finish_job(home: Home, job_id: str, what: str, quiet: bool, describe: Callable[[dict], str | None] = lambda e: None) -> str:
    """Follow a job to its end, ingest its spool, and turn a failure into a one-line error."""
    from engine import jobs, store

    state = follow_job(home, job_id, describe=describe, quiet=quiet)
    store.ingest(home)
    if state != jobs.FINISHED:
        with store.connect(home) as con:
            job = store.get_job(con, job_id) or {}
        raise LargestepError(f"{what} {job_id} ended {state}: {job.get('error') or _last_log_line(home, job_id)}")
    return state


@cli.command()
@workload_options
@click.option("--device", "-d", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-small", metavar="B", help="The small batch (default: the workload's baseline batch).")
@click.option("--batch-big", metavar="B", help="The big batch, a multiple of the small one (default: 8x).")
@click.option("--batches", default="32", show_default=True, metavar="K", help="Big batches averaged over.")
@click.option("--warm-steps", default="auto", show_default=True, metavar="S",
              help="Train the baseline this many steps first, since the noise scale grows as the loss falls "
                   "(auto: one epoch, at most 500 steps).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def noise(ctx, workload, settings, data, label, device, batch_small, batch_big, batches, warm_steps, seed, as_json):
    """Estimate the gradient noise scale B_simple (McCandlish et al. 2018) with a confidence interval."""
    from engine import store
    from engine.actions import NOISE_FIELDS, start_noise
    from engine.units import parse_positive_int

    small = parse_positive_int(batch_small, "--batch-small") if batch_small is not None else None
    big = parse_positive_int(batch_big, "--batch-big") if batch_big is not None else None
    count = parse_positive_int(batches, "--batches")
    warm = None if warm_steps == "auto" else _parse_count(warm_steps, "--warm-steps")
    home = _home(ctx)
    job_id = start_noise(home, workload, _parse_options(settings, data, label), device, small, big, count, warm, seed)
    _finish_job(home, job_id, "noise estimate", as_json)
    with store.connect(home) as con:
        estimate = store.load_noise(con, job_id)
    result = {"noise_id": job_id, "workload": estimate["workload"], **{k: estimate.get(k) for k in NOISE_FIELDS}}
    if as_json:
        emit_json(_jsonable(result))
        return
    if result["b_simple"] is None:
        click.echo(f"noise estimate {job_id}: unreliable: {result['reason']}")
    else:
        ci = "" if result["ci_low"] is None else f" (90% interval {result['ci_low']:,.0f} to {result['ci_high']:,.0f})"
        click.echo(f"noise estimate {job_id}: B_simple = {result['b_simple']:,.0f}{ci}")
    click.echo(f"from {result['batches']} batches of {result['batch_big']} split into {result['batch_small']}; "
               f"{result['elapsed_s']:.1f} s, about {result['step_equivalents']:.0f} baseline training steps")


@cli.command()
@click.option("--profile", "profile_id", default="latest", show_default=True, metavar="ID",
              help="The profile to recommend from.")
@click.option("--baseline-batch", metavar="B0", help="The batch you train with now (default: the workload's).")
@click.option("--baseline-lr", metavar="LR0", help="Its learning rate (default: the workload's).")
@click.option("--rule", type=click.Choice(["linear", "sqrt"]), default="linear", show_default=True,
              help="linear keeps lr/batch fixed; sqrt scales lr with sqrt(B/B0).")
@click.option("--noise-scale", metavar="X", help="Use this gradient noise scale instead of a stored estimate.")
@click.option("--estimate-noise", is_flag=True, help="Estimate the noise scale now (runs a job).")
@click.option("--noise", "noise_id", metavar="ID", help="Use this stored noise estimate.")
@click.option("--memory-headroom", default="0.9", show_default=True, metavar="SHARE",
              help="Largest share of device memory a candidate may use.")
@click.option("--max-lr", metavar="X", help="Never recommend a learning rate above this.")
@click.option("--warmup-samples", metavar="N", help="Warm-up length in samples (default: the workload's).")
@click.option("--check-stability", is_flag=True, help="Train briefly at the chosen batch with the rate ramped past "
              "the recommendation; back off if it diverges below it.")
@click.option("--device", "-d", default="auto", show_default=True, help="Device for --estimate-noise and --check-stability.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def recommend(ctx, profile_id, baseline_batch, baseline_lr, rule, noise_scale, estimate_noise, noise_id,
              memory_headroom, max_lr, warmup_samples, check_stability, device, as_json):
    """Recommend a batch size and learning rate from a profile, predicted to reach the target fastest."""
    from engine import store
    from engine.actions import make_recommendation, start_noise, start_stability
    from engine.recommend import RecommendConfig
    from engine.stability import apply_stability
    from engine.units import parse_positive_int

    chosen_noise = [flag for flag, given in (("--noise-scale", noise_scale is not None),
                                             ("--estimate-noise", estimate_noise), ("--noise", noise_id is not None)) if given]
    if len(chosen_noise) > 1:
        raise UsageError(f"give only one of {', '.join(chosen_noise)}")
    config = RecommendConfig(
        baseline_batch=parse_positive_int(baseline_batch, "--baseline-batch") if baseline_batch is not None else None,
        baseline_lr=_parse_float(baseline_lr, "--baseline-lr"), rule=rule,
        noise_scale=_parse_float(noise_scale, "--noise-scale"),
        memory_headroom=_parse_float(memory_headroom, "--memory-headroom"), max_lr=_parse_float(max_lr, "--max-lr"),
        warmup_samples=int(_parse_float(warmup_samples, "--warmup-samples")) if warmup_samples is not None else None,
    )
    home = _home(ctx)
    store.check_database_file(home.database)
    store.ingest(home)
    rec = make_recommendation(home, profile_id, config, noise_id=noise_id)  # validates before any job starts
    if estimate_noise:
        job_id = start_noise(home, rec["workload_spec"], rec["workload_options"], device,
                             batch_small=rec["baseline"]["batch_size"])
        _finish_job(home, job_id, "noise estimate", as_json)
        rec = make_recommendation(home, rec["profile_id"], config, noise_id=job_id)
    if check_stability:
        job_id = start_stability(home, rec, device)
        _finish_job(home, job_id, "stability check", as_json)
        with store.connect(home) as con:
            result = store.load_stability(con, job_id)
        rec = apply_stability(rec, result)
    with store.connect(home) as con:
        store.save_recommendation(con, rec)
    if as_json:
        emit_json(_jsonable(rec))
    else:
        print_recommendation(rec)


def _parse_count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{what} must be a whole number of at least 0 (or auto), not {text!r}")
    return value


def _parse_float(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {text!r}") from None


def print_recommendation(rec: dict) -> None:
    console = _console()
    base = rec["baseline"]
    rows = []
    for c in rec["candidates"]:
        mark = "->" if c["batch_size"] == rec["batch_size"] else ""
        rows.append([mark, c["batch_size"], f"{c['learning_rate']:.3g}", _fmt_ms(c["step_time_s"]),
                     _fmt_num(c["samples_per_s"]), f"{c['speedup_throughput']:.2f}x",
                     "-" if c["speedup_time_to_target"] is None else f"{c['speedup_time_to_target']:.2f}x",
                     c["rank"], c["excluded"] or ""])
    console.print(_table(f"Recommendation {rec['recommendation_id']} from profile {rec['profile_id']} "
                         f"({rec['workload']} on {rec['device']['name']})",
                         ["", "batch", "lr", "step ms", "samples/s", "throughput", "time to target", "rank",
                          "excluded"], rows))
    speed = rec["predicted_speedup"]
    console.print(f"[bold]batch {rec['batch_size']}, learning rate {rec['learning_rate']:.4g}, warm-up "
                  f"{rec['warmup_steps']} steps ({rec['warmup_samples']} samples), {rec['rule']} rule[/bold]  "
                  f"(baseline: batch {base['batch_size']}, lr {base['learning_rate']:.4g})")
    console.print(f"predicted speedup: {speed['throughput']:.2f}x from throughput, "
                  f"{speed['time_to_target']:.2f}x in time to target")
    per_day = rec["experiments_per_gpu_day"]
    if per_day["baseline"]:
        console.print(f"experiments per GPU-day ({rec['epochs']} epochs each): {per_day['baseline']:,.0f} at the "
                      f"baseline, {per_day['recommended']:,.0f} recommended")
    for reason in rec["reasons"]:
        console.print(f"- {reason}")
    console.print(f"export it: largestep export --recommendation {rec['recommendation_id']} --format yaml")


@cli.command()
@click.option("--recommendation", "rec_id", default="latest", show_default=True, metavar="ID")
@click.option("--format", "fmt", required=True, metavar="FORMAT",
              help="yaml, json, toml, torch, hf, lightning, deepspeed or cli.")
@click.option("--devices", "n_devices", metavar="N", help="Split the global batch over N devices.")
@click.option("--micro-batch", metavar="M", help="Per-device micro-batch; the rest becomes gradient accumulation.")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")
@click.pass_context
def export(ctx, rec_id, fmt, n_devices, micro_batch, output):
    """Export a recommendation as a config file or a ready snippet."""
    from engine import store
    from engine.export import export_config
    from engine.units import parse_positive_int

    n = parse_positive_int(n_devices, "--devices") if n_devices is not None else None
    micro = parse_positive_int(micro_batch, "--micro-batch") if micro_batch is not None else None
    home = _home(ctx)
    store.check_database_file(home.database)
    with store.connect(home) as con:
        rec = store.load_recommendation(con, rec_id)
    if rec is None:
        raise UsageError("no recommendation yet: run `largestep recommend` first" if rec_id == "latest"
                         else f"no recommendation {rec_id!r}; see `largestep recommendations`")
    text = export_config(rec, fmt, devices=n, micro_batch=micro)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    _write_atomic(Path(output), text)
    click.echo(f"wrote {output}", err=True)


def _write_atomic(path: Path, text: str) -> None:
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def recommendations(ctx, as_json):
    """The stored recommendations, newest first."""
    from engine import store

    home = _home(ctx)
    store.check_database_file(home.database)
    with store.connect(home) as con:
        records = store.frame_records(store.list_recommendations(con))
    if as_json:
        emit_json(_jsonable(records))
        return
    if not records:
        click.echo("no recommendations yet: run `largestep recommend`")
        return
    rows = [[r["id"], str(r["created_at"])[:19], r["workload"], r["profile_id"], r["batch_size"],
             f"{r['learning_rate']:.3g}", r["rule"], f"{r['speedup_time_to_target']:.2f}x"] for r in records]
    _console().print(_table("Recommendations", ["id", "created", "workload", "profile", "batch", "lr", "rule",
                                                "predicted speedup"], rows))


@cli.command()
@workload_options
@click.option("--batch-size", "-b", required=True, metavar="B", help="Global batch: samples per optimizer step.")
@click.option("--lr", required=True, metavar="LR", help="Peak learning rate, reached after warm-up.")
@click.option("--epochs", metavar="E", help="Training length in epochs (default: the workload's).")
@click.option("--warmup-samples", metavar="N", help="Linear warm-up length in samples (default: the workload's).")
@click.option("--accumulate", default="1", show_default=True, metavar="K", help="Micro-batches per optimizer step.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="Learning rate after warm-up.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--seed", default="0", show_default=True, metavar="S")
@click.option("--repeats", default="1", show_default=True, metavar="K", help="Runs with seeds S, S+1, ... as one group.")
@click.option("--target-val-loss", metavar="X", help="Stop when the validation loss reaches X; record the time.")
@click.option("--eval-every", default="1", show_default=True, metavar="EPOCHS", help="Evaluation interval in epochs.")
@click.option("--max-steps", metavar="N", help="Stop after N optimizer steps.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A label for the run (repeatable).")
@click.option("--device", "-d", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--nproc", default="1", show_default=True, metavar="N",
              help="Data-parallel processes (torchrun; gloo on CPU, NCCL on CUDA): --batch-size stays the global "
                   "batch = micro-batch x --accumulate x N, and the learning rate follows it.")
@launch_options
@click.option("--detach", is_flag=True, help="Queue the runs and return at once; follow them with `largestep runs`.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def train(ctx, workload, settings, data, label, batch_size, lr, epochs, warmup_samples, accumulate, schedule, dtype,
          seed, repeats, target_val_loss, eval_every, max_steps, tags, device, nproc, launcher, ray_address, detach,
          as_json):
    """Train a workload for real at one batch size and learning rate (runs as jobs)."""
    from engine import store
    from engine.actions import start_train
    from engine.train import TrainConfig
    from engine.units import parse_positive_int

    config = TrainConfig(
        batch_size=parse_positive_int(batch_size, "--batch-size"), lr=_parse_float(lr, "--lr"),
        epochs=_parse_float(epochs, "--epochs"),
        warmup_samples=_parse_count(warmup_samples, "--warmup-samples") if warmup_samples is not None else None,
        accumulate=parse_positive_int(accumulate, "--accumulate"), schedule=schedule, dtype=dtype,
        seed=_parse_count(seed, "--seed"), target_val_loss=_parse_float(target_val_loss, "--target-val-loss"),
        eval_every_epochs=_parse_float(eval_every, "--eval-every"),
        max_steps=parse_positive_int(max_steps, "--max-steps") if max_steps is not None else None, tags=tuple(tags),
        nproc=_nproc(nproc),
    )
    from engine.launchers import launcher_from_cli

    run_on = launcher_from_cli(launcher, ray_address)
    home = _home(ctx)
    run_ids = start_train(home, workload, _parse_options(settings, data, label), device, config,
                          repeats=parse_positive_int(repeats, "--repeats"), launcher=run_on)
    store.ingest(home)
    if detach:
        if as_json:
            emit_json({"run_ids": run_ids, "state": "PENDING"})
        else:
            click.echo(f"queued {len(run_ids)} run(s): {' '.join(run_ids)}; see `largestep runs`")
        return 0
    states = [follow_job(home, run_id, describe=_describe_train_event, quiet=as_json) for run_id in run_ids]
    store.ingest(home)
    with store.connect(home) as con:
        runs = [store.get_run(con, run_id) or {"id": run_id} for run_id in run_ids]
        for run in runs:
            if "state" not in run:
                run.update(state=(store.get_job(con, run["id"]) or {}).get("state"))
    if as_json:
        emit_json(_jsonable(runs if len(runs) > 1 else runs[0]))
    else:
        print_runs(runs, f"Runs of {runs[0].get('workload') or workload}")
    return 0 if all(state == "FINISHED" for state in states) else 1


def _describe_train_event(event: dict) -> str | None:
    if event.get("type") == "eval":
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (event.get("metrics") or {}).items() if v == v)
        return (f"epoch {event['epoch']:.2f}: val loss {event['val_loss']:.4f}{', ' + metrics if metrics else ''} "
                f"({event['train_time_s']:.1f} s of training)")
    if event.get("type") == "run_start":
        config = event.get("config") or {}
        return (f"run: {event.get('workload')}, batch {config.get('batch_size')}, lr {config.get('lr'):g}, "
                f"seed {config.get('seed')}, {event.get('total_steps')} steps")
    if event.get("type") == "exit" and event.get("state") != "FINISHED":
        return f"run ended {event.get('state')}: {event.get('error')}"
    return None


def print_runs(runs: list[dict], title: str) -> None:
    from engine.units import format_bytes

    rows = []
    for r in runs:
        rows.append([r.get("id"), r.get("state"), r.get("workload"), r.get("batch_size"),
                     "-" if r.get("lr") is None else f"{r['lr']:.3g}", r.get("seed"), r.get("group_id"),
                     "-" if r.get("train_time_s") is None else f"{r['train_time_s']:.1f}",
                     "-" if r.get("final_val_loss") is None else f"{r['final_val_loss']:.4f}",
                     "-" if r.get("final_primary_metric") is None
                     else f"{r.get('primary_metric')} {r['final_primary_metric']:.4f}",
                     format_bytes(r.get("peak_memory_bytes"))])
    _console().print(_table(title, ["id", "state", "workload", "batch", "lr", "seed", "group", "train s",
                                    "val loss", "metric", "peak memory"], rows))


@cli.group(invoke_without_command=True)
@click.option("--status", "states", multiple=True, metavar="S",
              help="Only runs in this state (PENDING, RUNNING, FINISHED, FAILED, KILLED, DIVERGED, CRASHED).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runs(ctx, states, as_json):
    """Training runs: list them; `runs show ID`; `runs cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    from engine import jobs, store

    wanted = [s.upper() for s in states]
    unknown = [s for s in wanted if s not in jobs.STATES]
    if unknown:
        raise UsageError(f"unknown state {unknown[0]}; use one of {', '.join(jobs.STATES)}")
    home = _home(ctx)
    store.check_database_file(home.database)
    store.ingest(home)
    with store.connect(home) as con:
        records = store.frame_records(store.list_runs(con, states=wanted or None))
    if as_json:
        emit_json(_jsonable(records))
    elif not records:
        click.echo("no runs yet: run `largestep train --workload fraud-mlp --batch-size 128 --lr 1e-3`")
    else:
        print_runs(records, "Runs")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runs_show(ctx, run_id, as_json):
    """One run: its config, state, results and evaluations."""
    from engine import store

    home = _home(ctx)
    store.check_database_file(home.database)
    store.ingest(home)
    with store.connect(home) as con:
        run = store.get_run(con, run_id)
        job = store.get_job(con, run_id)
        evals = store.frame_records(store.run_evaluations(con, [run_id])) if run else []
    if run is None and job is None:
        raise UsageError(f"no run {run_id!r}; see `largestep runs`")
    run = run or {"id": run_id, "state": job["state"], "error": job.get("error")}
    run["evaluations"] = evals
    if as_json:
        emit_json(_jsonable(run))
        return
    print_runs([run], f"Run {run_id}")
    if run.get("error"):
        click.echo(f"error: {run['error']}")
    for e in evals:
        click.echo(f"  step {e['step']:>6}  epoch {e['epoch']:.2f}  val loss {e['val_loss']:.4f}  "
                   f"at {e['train_time_s']:.1f} s of training ({e['wall_time_s']:.1f} s wall)")


@runs.command("cancel")
@click.argument("run_id")
@click.pass_context
def runs_cancel(ctx, run_id):
    """Cancel a queued or running run (its whole process group)."""
    from engine import jobs, store

    home = _home(ctx)
    store.check_database_file(home.database)
    if not home.job_dir(run_id).is_dir():
        raise UsageError(f"no run {run_id!r}; see `largestep runs`")
    stopped = jobs.cancel(home, run_id)
    store.ingest(home)
    click.echo(f"cancelled {run_id}" if stopped else f"{run_id} had already ended")


@cli.command()
@click.argument("runs_or_groups", nargs=-1, required=True, metavar="BASELINE OTHER...")
@click.option("--tolerance", default="0.01", show_default=True, metavar="SHARE",
              help="Target: the baseline's best validation loss, loosened by this share.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def compare(ctx, runs_or_groups, tolerance, as_json):
    """Compare runs or groups of repeats against the first (the baseline): time to its validation loss,
    speedup, final validation loss and metric, Welch's t-test p-value."""
    from engine import store
    from engine.compare import compare_groups

    tol = _parse_float(tolerance, "--tolerance")
    if tol < 0:
        raise UsageError("--tolerance must not be negative")
    if len(runs_or_groups) < 2:
        raise UsageError("compare needs a baseline and at least one other run or group")
    home = _home(ctx)
    store.check_database_file(home.database)
    store.ingest(home)
    with store.connect(home) as con:
        groups = []
        for name in runs_or_groups:
            ids = store.runs_in(con, name)
            if not ids:
                raise UsageError(f"no run or group {name!r}; see `largestep runs`")
            groups.append((name, [store.get_run(con, i) for i in ids]))
        evals = store.run_evaluations(con, [r["id"] for _, rs in groups for r in rs])
    result = compare_groups(groups, evals, tolerance=tol)
    if as_json:
        emit_json(_jsonable(result))
    else:
        print_comparison(result)


def print_comparison(result: dict) -> None:
    if result.get("error"):
        raise LargestepError(result["error"])
    console = _console()

    def ms(d, digits=1, unit=""):
        if d["mean"] is None:
            return "-"
        return f"{d['mean']:.{digits}f}{unit}" + (f" ± {d['std']:.{digits}f}" if d["std"] is not None else "")

    rows = []
    for g in result["groups"]:
        rows.append([g["name"], g["batch_size"], "-" if g["lr"] is None else f"{g['lr']:.3g}", g["n"],
                     f"{g['reached']}/{g['n']}", ms(g["time_to_target_s"], 1, " s"),
                     "-" if g["speedup"] is None else f"{g['speedup']:.2f}x", ms(g["final_val_loss"], 4),
                     ms(g["metric"], 4), "-" if g["p_value"] is None else f"{g['p_value']:.3g}"])
    console.print(_table(f"Time to validation loss {result['target_val_loss']:.4f} (baseline best "
                         f"{result['baseline_best_val_loss']:.4f} + {result['tolerance']:.0%}), {result['time_basis']}",
                         ["run/group", "batch", "lr", "runs", "reached", "time to target", "speedup",
                          "final val loss", f"final {result['metric'] or 'metric'}", "p (Welch)"], rows))


@cli.command()
@workload_options
@click.option("--repeats", default="3", show_default=True, metavar="K", help="Seeds per arm (baseline, recommended).")
@click.option("--epochs", metavar="E", help="Baseline training length (default: the workload's).")
@click.option("--rule", type=click.Choice(["linear", "sqrt"]), default="linear", show_default=True)
@click.option("--device", "-d", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--nproc", default="1", show_default=True, metavar="N",
              help="Data-parallel processes for the profile and every training run (batch sizes are global); "
                   "the noise-scale estimate runs in one.")
@launch_options
@click.option("--detach", is_flag=True, help="Start it and return at once; the dashboard shows its progress.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def autopilot(ctx, workload, settings, data, label, repeats, epochs, rule, device, nproc, launcher, ray_address,
              detach, as_json):
    """The whole loop headless: profile, noise scale, recommend, train the baseline and the
    recommendation (K seeds each, one after the other on the device), compare, and one headline."""
    from engine import store
    from engine.actions import start_autopilot
    from engine.autopilot import AutopilotConfig
    from engine.units import parse_positive_int

    from engine.launchers import launcher_from_cli

    config = AutopilotConfig(repeats=parse_positive_int(repeats, "--repeats"), epochs=_parse_float(epochs, "--epochs"),
                             rule=rule, launcher=launcher_from_cli(launcher, ray_address), nproc=_nproc(nproc))
    home = _home(ctx)
    job_id = start_autopilot(home, workload, _parse_options(settings, data, label), device, config)
    store.ingest(home)
    if detach:
        if as_json:
            emit_json({"autopilot_id": job_id, "state": "PENDING"})
        else:
            click.echo(f"started autopilot {job_id}; follow it in the dashboard or with `largestep runs`")
        return 0
    _finish_job(home, job_id, "autopilot", as_json, describe=_describe_autopilot_event)
    with store.connect(home) as con:
        result = store.load_autopilot(con, job_id)
        rec = store.load_recommendation(con, result["recommendation_id"])
    if as_json:
        emit_json(_jsonable({"autopilot_id": job_id, "headline": result["headline"], "recommendation": rec,
                             "comparison": result["comparison"], "profile_id": result["profile_id"],
                             "noise_id": result["noise_id"], "baseline_runs": result["baseline_runs"],
                             "recommended_runs": result["recommended_runs"]}))
        return 0
    print_comparison(result["comparison"])
    _console().print(f"[bold]{result['headline']['text']}[/bold]  (on {result['headline']['device']})")
    return 0


def _describe_autopilot_event(event: dict) -> str | None:
    if event.get("type") == "autopilot_phase" and "job" not in event and "run_ids" not in event:
        return f"phase: {event['phase']}"
    if event.get("type") == "autopilot_phase" and "run_ids" in event:
        return f"phase: {event['phase']} ({', '.join(event['run_ids'])})"
    if event.get("type") == "recommendation":
        doc = event["document"]
        return (f"recommended: batch {doc['batch_size']}, lr {doc['learning_rate']:.3g} "
                f"(predicted {doc['predicted_speedup']['time_to_target']:.2f}x to target)")
    return None


@cli.command()
@click.option("--recommendation", "rec_id", metavar="ID|latest",
              help="The recommendation to report (default: the profile's newest, or the newest of all).")
@click.option("--profile", "profile_id", metavar="ID", help="The profile to report (default: the recommendation's).")
@click.option("-o", "--output", default="largestep-report.html", show_default=True, metavar="FILE",
              help="Where to write the HTML file.")
@click.pass_context
def report(ctx, rec_id, profile_id, output):
    """One self-contained HTML file (works offline): profile charts, the recommendation, and its runs."""
    from engine import store
    from engine.report import build_report

    home = _home(ctx)
    store.check_database_file(home.database)
    if not home.database.exists():
        raise UsageError("nothing to report yet: run `largestep profile --workload W` (and `largestep recommend`) first")
    store.ingest(home)
    text = build_report(home, recommendation_id=rec_id, profile_id=profile_id)
    _write_atomic(Path(output), text)
    click.echo(f"wrote {output} ({len(text.encode('utf-8')) / 2**20:.1f} MiB)", err=True)


@cli.command()
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@click.pass_context
def dashboard(ctx, port: int) -> None:
    """Start the Streamlit dashboard on this machine's loopback address."""
    import subprocess

    from engine import store

    home = _home(ctx)
    store.check_database_file(home.database)
    home.ensure()
    app_dir = Path(__file__).resolve().parent.parent / "app"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_dir / "main.py"), "--server.port", str(port)]
    cmd += _streamlit_flags(app_dir.parent / ".streamlit" / "config.toml")
    env = dict(os.environ, LARGESTEP_HOME=str(home.root))
    click.echo(f"largestep dashboard on http://127.0.0.1:{port}  (home {home.root})", err=True)
    try:
        subprocess.run(cmd, env=env, check=False)
    except KeyboardInterrupt:
        pass


def _streamlit_flags(config_path: Path) -> list[str]:
    """The project's Streamlit settings as flags, so they hold from any working directory."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        config = tomllib.loads(config_path.read_text())
    except OSError:
        config = {"server": {"address": "127.0.0.1", "headless": True},
                  "browser": {"gatherUsageStats": False}, "client": {"showErrorDetails": "none"}}
    flags = []
    for section, values in config.items():
        for key, value in values.items():
            flags += [f"--{section}.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


# -- entry point ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    try:
        result = cli.main(args=argv, prog_name="largestep", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return _fail(exc.format_message())
    except click.ClickException as exc:
        return _fail(exc.format_message())
    except LargestepError as exc:
        return _fail(str(exc))
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _fail(message: str) -> int:
    click.echo(f"largestep: error: {' '.join(str(message).split())}", err=True)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
