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
@click.option("--detach", is_flag=True, help="Start the job and return at once; follow it with `largestep profiles`.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def profile(ctx, workload, settings, data, label, device, batch_sizes, min_batch, max_batch, dtype, memory_budget,
            full, min_steps, min_seconds, warmup_steps, seed, detach, as_json) -> int:
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
    )
    options = _parse_options(settings, data, label)
    home = _home(ctx)
    job_id = start_profile(home, workload, options, device, config)
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
    records = store._records(frame)
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
