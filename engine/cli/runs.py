"""Training and verifying: `train`, `runs` (`show`, `cancel`), `compare` and `autopilot`."""

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
    parse_float,
    parse_nproc,
    tf32_option,
    threads_option,
    workload_options,
    workload_settings,
)
from .output import console, detached, emit_json, finish_job, follow_job, table
from ..errors import UsageError
from ..format import format_background_load, format_bytes, format_math, unreadable_runs
from ..measure.devices_config import DTYPE_NAMES
from ..plan.verdict import SEQUENTIAL_RULE
from ..workloads.base_config import SCHEDULES


@cli.command()
@workload_options
@click.option(
    "--batch-size",
    "-b",
    metavar="B",
    help="Global batch: samples per optimizer step.  [required unless --batch-schedule]",
)
@click.option(
    "--batch-schedule",
    metavar="SPEC",
    help="A batch that grows: batch:fraction-of-samples phases, e.g. 256:0,1024:0.3,4096:0.6 (--lr is the "
    "first phase's; each increase scales it by --batch-schedule-rule and warms up again); or "
    "adaptive: double the batch, within the --profile's measured and memory-safe sizes, when the "
    "noise scale measured from the --accumulate micro-batches exceeds --adaptive-multiple x batch.",
)
@click.option(
    "--adaptive-multiple",
    default="2",
    show_default=True,
    metavar="K",
    help="--batch-schedule adaptive doubles the batch once the live noise scale exceeds K x the batch.",
)
@click.option(
    "--profile",
    "profile_id",
    default="latest",
    show_default=True,
    metavar="ID",
    help="--batch-schedule adaptive: the profile whose measured, memory-safe batches the run may use.",
)
@click.option(
    "--batch-schedule-rule",
    type=click.Choice(["linear", "sqrt"]),
    default="linear",
    show_default=True,
    help="Later phases' learning rate: linear keeps lr/batch fixed; sqrt scales it with sqrt(B/B1).",
)
@click.option("--lr", required=True, metavar="LR", help="Peak learning rate, reached after warm-up.")
@click.option("--epochs", metavar="E", help="Training length in epochs (default: the workload's).")
@click.option("--warmup-samples", metavar="N", help="Linear warm-up length in samples (default: the workload's).")
@click.option("--accumulate", default="1", show_default=True, metavar="K", help="Micro-batches per optimizer step.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=None,
    help="Learning rate after warm-up, its lengths in samples (wsd: warm-up, stable, decay).  "
    "[default: the workload's]",
)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True)
@click.option("--seed", default="0", show_default=True, metavar="S")
@compile_option
@tf32_option
@threads_option
@click.option(
    "--repeats", default="1", show_default=True, metavar="K", help="Runs with seeds S, S+1, ... as one group."
)
@click.option("--target-val-loss", metavar="X", help="Stop when the validation loss reaches X; record the time.")
@click.option("--eval-every", default="1", show_default=True, metavar="EPOCHS", help="Evaluation interval in epochs.")
@click.option("--max-steps", metavar="N", help="Stop after N optimizer steps.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A label for the run (repeatable).")
@device_option()
@nproc_option(
    "Data-parallel processes on this machine (gloo on CPU, NCCL on CUDA): --batch-size stays the global batch = "
    "micro-batch x --accumulate x N, and the learning rate follows it."
)
@launch_options
@click.option("--detach", is_flag=True, help="Queue the runs and return at once; follow them with `largestep runs`.")
@json_option
@click.pass_context
def train(
    ctx,
    workload,
    settings,
    data,
    label,
    batch_size,
    batch_schedule,
    adaptive_multiple,
    profile_id,
    batch_schedule_rule,
    lr,
    epochs,
    warmup_samples,
    accumulate,
    schedule,
    dtype,
    seed,
    compile_model,
    tf32,
    threads,
    repeats,
    target_val_loss,
    eval_every,
    max_steps,
    tags,
    device,
    nproc,
    launcher,
    ray_address,
    detach,
    as_json,
):
    """Train a workload for real at one batch size and learning rate (runs as jobs)."""
    from .. import jobs, store
    from ..jobs.ray import launcher_from_cli
    from ..jobs.start import start_train
    from ..measure.batch_schedule import ADAPTIVE, parse_batch_schedule
    from ..measure.profiler_config import parse_threads
    from ..measure.train_config import TrainConfig
    from ..units import parse_positive_int

    adaptive = batch_schedule == ADAPTIVE
    phases = parse_batch_schedule(batch_schedule) if batch_schedule is not None and not adaptive else None
    if batch_size is None and phases is None:
        raise UsageError("give --batch-size, or --batch-schedule for a batch that grows")
    config = TrainConfig(
        batch_size=parse_positive_int(batch_size, "--batch-size") if batch_size is not None else phases[0][0],
        batch_schedule=phases,
        batch_schedule_rule=batch_schedule_rule,
        lr=parse_float(lr, "--lr"),
        adaptive_batches=_adaptive_batches(ctx, workload, profile_id) if adaptive else None,
        adaptive_multiple=parse_float(adaptive_multiple, "--adaptive-multiple"),
        epochs=parse_float(epochs, "--epochs"),
        warmup_samples=parse_count(warmup_samples, "--warmup-samples") if warmup_samples is not None else None,
        accumulate=parse_positive_int(accumulate, "--accumulate"),
        schedule=schedule,
        dtype=dtype,
        seed=parse_count(seed, "--seed"),
        target_val_loss=parse_float(target_val_loss, "--target-val-loss"),
        eval_every_epochs=parse_float(eval_every, "--eval-every"),
        max_steps=parse_positive_int(max_steps, "--max-steps") if max_steps is not None else None,
        tags=tuple(tags),
        nproc=parse_nproc(nproc),
        compile=compile_model,
        tf32=tf32,
        threads=parse_threads(threads),
    )
    run_on = launcher_from_cli(launcher, ray_address)
    home = home_of(ctx)
    run_ids = start_train(
        home,
        workload,
        workload_settings(settings, data, label),
        device,
        config,
        repeats=parse_positive_int(repeats, "--repeats"),
        launcher=run_on,
    )
    store.ingest(home)
    if detach:
        return detached(
            as_json,
            {"run_ids": run_ids, "state": jobs.PENDING},
            f"queued {len(run_ids)} run(s): {' '.join(run_ids)}; see `largestep runs`",
        )
    states = [follow_job(home, run_id, describe=describe_train_event, quiet=as_json) for run_id in run_ids]
    store.ingest(home)
    with store.connect(home) as con:
        runs = [store.get_run(con, run_id) or {"id": run_id} for run_id in run_ids]
        for run in runs:
            if "state" not in run:
                run.update(state=(store.get_job(con, run["id"]) or {}).get("state"))
    if as_json:
        emit_json(runs if len(runs) > 1 else runs[0])
    else:
        print_runs(runs, f"Runs of {runs[0].get('workload') or workload}")
    return 0 if all(state == jobs.FINISHED for state in states) else 1


def _adaptive_batches(ctx, workload: str, profile_id: str) -> tuple[int, ...]:
    """The measured, memory-safe batches of the workload's profile, which an adaptive run may double into."""
    from .. import store
    from ..plan.recommend import memory_safe_batches

    with open_store(ctx) as (_home, con):
        profile = store.load_profile(con, profile_id)
    if profile is None:
        raise UsageError(
            f"--batch-schedule adaptive needs a profile of {workload} to know which batches are safe: "
            f"run `largestep profile --workload {workload}` first"
            if profile_id == "latest"
            else f"no profile {profile_id!r}; see `largestep profiles`"
        )
    if workload not in (profile.get("workload"), profile.get("workload_spec")):
        raise UsageError(
            f"profile {profile['id']} is of {profile.get('workload')}, not {workload}: give --profile "
            f"with a profile of {workload}"
        )
    return memory_safe_batches(profile)


def describe_train_event(event: dict) -> str | None:
    from .. import jobs
    from ..jobs import events

    if event.get("type") == events.EVAL:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (event.get("metrics") or {}).items() if v == v)
        return (
            f"epoch {event['epoch']:.2f}: val loss {event['val_loss']:.4f}{', ' + metrics if metrics else ''} "
            f"({event['train_time_s']:.1f} s of training)"
        )
    if event.get("type") == events.RUN_START:
        config = event.get("config") or {}
        return (
            f"run: {event.get('workload')}, batch {config.get('batch_size')}, lr {config.get('lr'):g}, "
            f"seed {config.get('seed')}, {event.get('total_steps')} steps"
        )
    if event.get("type") == events.EXIT and event.get("state") != jobs.FINISHED:
        return f"run ended {event.get('state')}: {event.get('error')}"
    return None


def print_runs(runs: list[dict], title: str) -> None:
    rows = []
    for r in runs:
        rows.append(
            [
                r.get("id"),
                r.get("state"),
                r.get("workload"),
                r.get("batch_size"),
                "-" if r.get("lr") is None else f"{r['lr']:.3g}",
                r.get("seed"),
                r.get("group_id"),
                "-" if r.get("train_time_s") is None else f"{r['train_time_s']:.1f}",
                "-" if r.get("final_val_loss") is None else f"{r['final_val_loss']:.4f}",
                "-"
                if r.get("final_primary_metric") is None
                else f"{r.get('primary_metric')} {r['final_primary_metric']:.4f}",
                format_bytes(r.get("peak_memory_bytes")),
                format_background_load(r.get("background_cpu_pct"), r.get("background_gpu_processes")),
            ]
        )
    console().print(
        table(
            title,
            [
                "id",
                "state",
                "workload",
                "batch",
                "lr",
                "seed",
                "group",
                "train s",
                "val loss",
                "metric",
                "peak memory",
                "background load",
            ],
            rows,
        )
    )


@cli.group(invoke_without_command=True)
@click.option(
    "--status",
    "states",
    multiple=True,
    metavar="S",
    help="Only runs in this state (PENDING, RUNNING, FINISHED, FAILED, KILLED, DIVERGED, CRASHED).",
)
@json_option
@click.pass_context
def runs(ctx, states, as_json):
    """Training runs: list them; `runs show ID`; `runs cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    from .. import jobs, store

    wanted = [s.upper() for s in states]
    unknown = [s for s in wanted if s not in jobs.STATES]
    if unknown:
        raise UsageError(f"unknown state {unknown[0]}; use one of {', '.join(jobs.STATES)}")
    with open_store(ctx) as (_home, con):
        records = store.frame_records(store.list_runs(con, states=wanted or None))
    if as_json:
        emit_json(records)
    elif not records:
        click.echo("no runs yet: run `largestep train --workload fraud-mlp --batch-size 128 --lr 1e-3`")
    else:
        print_runs(records, "Runs")
        note = unreadable_runs(r["id"] for r in records if r.get("set_aside"))
        if note:
            click.echo(note)


@runs.command("show")
@click.argument("run_id")
@json_option
@click.pass_context
def runs_show(ctx, run_id, as_json):
    """One run: its config, state, results and evaluations."""
    from .. import store

    with open_store(ctx) as (_home, con):
        run = store.get_run(con, run_id)
        job = store.get_job(con, run_id)
        evals = store.frame_records(store.run_evaluations(con, [run_id])) if run else []
        if run is None and job is not None:  # queued: what it will run, from its request
            run = next((r for r in store.frame_records(store.list_runs(con, group=run_id)) if r["id"] == run_id), None)
    if run is None and job is None:
        raise UsageError(f"no run {run_id!r}; see `largestep runs`")
    run = run or {"id": run_id, "state": job["state"], "error": job.get("error")}
    run["evaluations"] = evals
    if as_json:
        emit_json(run)
        return
    print_runs([run], f"Run {run_id}")
    if run.get("error"):
        click.echo(f"error: {run['error']}")
    if run.get("math_settings"):
        click.echo(f"trained with {format_math(run['math_settings'])}")
    for e in evals:
        # a run tracked from the user's own code may not know its epoch
        epoch = "" if e.get("epoch") is None or e["epoch"] != e["epoch"] else f"  epoch {e['epoch']:.2f}"
        click.echo(
            f"  step {e['step']:>6}{epoch}  val loss {e['val_loss']:.4f}  "
            f"at {e['train_time_s']:.1f} s of training ({e['wall_time_s']:.1f} s wall)"
        )


@runs.command("cancel")
@click.argument("run_id")
@click.pass_context
def runs_cancel(ctx, run_id):
    """Cancel a queued or running run (its whole process group)."""
    from .. import jobs, store

    home = home_of(ctx)
    store.check_database_file(home.database)
    if home.find_job(run_id) is None:
        raise UsageError(f"no run {run_id!r}; see `largestep runs`")
    stopped = jobs.cancel(home, run_id)
    store.ingest(home)
    click.echo(f"cancelled {run_id}" if stopped else f"{run_id} had already ended")


@cli.command()
@click.argument("runs_or_groups", nargs=-1, required=True, metavar="BASELINE OTHER...")
@click.option(
    "--tolerance",
    default="0.01",
    show_default=True,
    metavar="SHARE",
    help="Target: the baseline's best validation loss, loosened by this share.",
)
@click.option(
    "--quality-tolerance",
    default="0.01",
    show_default=True,
    metavar="SHARE",
    help="A quality difference (metric, or final validation loss) whose 90% interval lies within this "
    "share of the baseline's value counts as no difference.",
)
@json_option
@click.pass_context
def compare(ctx, runs_or_groups, tolerance, quality_tolerance, as_json):
    """Compare runs or groups of repeats against the first (the baseline): time to its validation loss
    (Kaplan-Meier median over seeds, a seed that never reached it counted as at least its whole training
    time), the speedup with a 90% bootstrap interval for censored data and an exact permutation test, and the
    quality difference with its interval and Welch's p-value. "faster" only when the interval lies above 1
    and the test agrees, "slower" below; fewer than 3 seeds an arm: too few seeds to say."""
    from .. import store
    from ..plan.compare import check_tolerance, compare_groups

    tol = check_tolerance(parse_float(tolerance, "--tolerance"))
    quality_tol = check_tolerance(parse_float(quality_tolerance, "--quality-tolerance"), "--quality-tolerance")
    if len(runs_or_groups) < 2:
        raise UsageError("compare needs a baseline and at least one other run or group")
    with open_store(ctx) as (home, con):
        groups = []
        for name in runs_or_groups:
            ids = store.runs_in(con, name)
            if not ids:
                raise UsageError(f"no run or group {name!r}; see `largestep runs`")
            groups.append((name, [store.get_run(con, i) for i in ids]))
        evals = store.run_evaluations(con, [r["id"] for _, rs in groups for r in rs])
        result = compare_groups(groups, evals, tolerance=tol, quality_tolerance=quality_tol)
        # a recommendation's baseline against its recommended runs: a calibration point for its noise model
        point = store.record_comparison(home, con, groups, result)
    if as_json:
        emit_json({**result, "verification_id": point["id"] if point else None})
    else:
        print_comparison(result)
        if point:
            click.echo(
                f"recorded as verification {point['id']} of recommendation {point['recommendation_id']}: "
                f"{point['learned'] or 'see `largestep calibration`'}"
            )


def print_comparison(result: dict) -> None:
    from ..plan.compare import comparison_table

    rows = comparison_table(result)
    console().print(
        table(
            f"Time to validation loss {result['target_val_loss']:.4f} (baseline best "
            f"{result['baseline_best_val_loss']:.4f} + {result['tolerance']:.0%}), "
            f"{result['time_basis']}",
            list(rows[0]),
            [list(r.values()) for r in rows],
        )
    )
    conditions = result.get("conditions") or {}
    if conditions.get("differed"):
        console().print(f"[yellow]Conditions differed: {conditions['text']}.[/yellow]")
    print_verdicts(result)


def print_verdicts(result: dict) -> None:
    """One line per arm: its speedup and its quality in the words every view uses."""
    from ..plan.verdict import quality_words

    name = (result.get("quality") or {}).get("name") or "metric"
    colour = {"good": "green", "bad": "red"}
    for group in (result.get("groups") or [])[1:]:
        verdict = group.get("verdict") or {}
        console().print(
            f"[{colour.get(verdict.get('tone'), 'yellow')}]{group['name']}: "
            f"{verdict.get('text', 'not measured')}; "
            f"{quality_words(group.get('quality'), name, result['confidence'])}[/]"
        )


@cli.command()
@workload_options
@click.option("--repeats", default="3", show_default=True, metavar="K", help="Seeds per arm (baseline, recommended).")
@click.option("--epochs", metavar="E", help="Baseline training length (default: the workload's).")
@click.option(
    "--rule",
    type=click.Choice(["linear", "sqrt", "noise"]),
    default="linear",
    show_default=True,
    help="Learning rate at the larger batch: linear (lr/batch fixed), sqrt, or noise (McCandlish et al.: "
    "lr0·(1 + B_noise/B0)/(1 + B_noise/B), which stops growing near the noise scale).",
)
@click.option(
    "--arms",
    metavar="LIST",
    help="baseline,recommended: train both arms even when the recommendation is "
    "the baseline (by default the autopilot then says so and trains nothing); baseline,fixed,schedule: "
    "also a third arm growing its batch on the schedule planned from a noise curve, in the same rotation.",
)
@click.option(
    "--until-decisive",
    is_flag=True,
    help="Keep adding a seed to each arm until the speedup is called faster or slower or the quality "
    "difference's interval lies within --quality-tolerance, at most --max-repeats seeds an arm. The "
    f"looks pay for themselves by {SEQUENTIAL_RULE}.",
)
@click.option("--max-repeats", default="10", show_default=True, metavar="K", help="With --until-decisive.")
@click.option(
    "--quality-tolerance",
    default="0.01",
    show_default=True,
    metavar="SHARE",
    help="A quality difference within this share of the baseline's value counts as no difference.",
)
@click.option(
    "--accept-load",
    is_flag=True,
    help="Recommend from the profile even if it cannot be trusted (measured "
    "under load, failing the physics check); otherwise the autopilot waits for a quiet window, measures those "
    "sizes again, and stops if the machine never quietens. The headline then says so.",
)
@click.option(
    "--quiet-timeout",
    metavar="SECONDS",
    help="The longest to wait for a quiet window when the profile cannot be trusted (default: 600).",
)
@click.option(
    "--until-verified",
    is_flag=True,
    help="When the recommended pair is not verified (faster, with a quality equivalent or better), record "
    "the failure as a calibration point and try the next pair the corrected noise model ranks (the "
    "square-root rule at the same batch after a loss of quality, else a smaller batch), at most "
    "--max-attempts pairs; each is tested at 10%/--max-attempts, so trying again cannot manufacture a "
    'verified pair. Ends with the verified pair or "none verified".',
)
@click.option(
    "--max-attempts",
    default="2",
    show_default=True,
    metavar="N",
    help="With --until-verified: the pairs verified at most (the budget, stated in the headline).",
)
@compile_option
@tf32_option
@threads_option
@device_option()
@nproc_option(
    "Data-parallel processes for the profile and every training run (batch sizes are global); the "
    "noise-scale estimate runs in one."
)
@launch_options
@click.option("--detach", is_flag=True, help="Start it and return at once; the dashboard shows its progress.")
@json_option
@click.pass_context
def autopilot(
    ctx,
    workload,
    settings,
    data,
    label,
    repeats,
    epochs,
    rule,
    arms,
    until_decisive,
    max_repeats,
    quality_tolerance,
    accept_load,
    quiet_timeout,
    until_verified,
    max_attempts,
    compile_model,
    tf32,
    threads,
    device,
    nproc,
    launcher,
    ray_address,
    detach,
    as_json,
):
    """The whole loop headless: profile, noise scale, recommend, train the baseline and the
    recommendation (K seeds each, one after the other on the device), compare, and one headline."""
    from .. import jobs, store
    from ..jobs.autopilot import AutopilotConfig
    from ..jobs.follow import describe_autopilot_event
    from ..jobs.start import start_autopilot

    config = AutopilotConfig.from_options(
        repeats,
        epochs,
        rule,
        arms,
        until_decisive,
        max_repeats,
        quality_tolerance,
        compile_model,
        nproc,
        launcher,
        ray_address,
        tf32=tf32,
        accept_load=accept_load,
        quiet_timeout=quiet_timeout,
        threads=threads,
        until_verified=until_verified,
        max_attempts=max_attempts,
    )
    home = home_of(ctx)
    job_id = start_autopilot(home, workload, workload_settings(settings, data, label), device, config)
    store.ingest(home)
    if detach:
        return detached(
            as_json,
            {"autopilot_id": job_id, "state": jobs.PENDING},
            f"started autopilot {job_id}; follow it in the dashboard or with `largestep runs`",
        )
    finish_job(home, job_id, "autopilot", as_json, describe=describe_autopilot_event)
    result = store.autopilot_outcome(home, job_id)
    if as_json:
        emit_json(result)
        return 0
    if result["comparison"]:
        print_comparison(result["comparison"])
    if result["headline"].get("accepted_load"):
        console().print(f"[bold yellow]{result['headline']['accepted_load']}[/bold yellow]")
    console().print(f"[bold]{result['headline']['text']}[/bold]  (on {result['headline']['device']})")
    if result["headline"].get("schedule"):
        console().print(f"[bold]{result['headline']['schedule']['text']}[/bold]")
    print_factors(result["headline"].get("factors"))
    return 0


def print_factors(factors: dict | None) -> None:
    """The prediction's two halves beside what the runs measured, each with its interval."""
    from ..plan.verdict import interval_text

    if not factors:
        return

    def ratio(value, interval=None, bound=None):
        if bound:
            return f"{bound['kind']} {bound['value']:.2f}x"
        if value is None:
            return "-"
        return f"{value:.2f}x" + (f" ({interval_text(*interval)})" if interval else "")

    rows = [
        [
            name.replace("_", " "),
            ratio(f["predicted"], f.get("predicted_interval")),
            ratio(f.get("raw")) if f.get("raw") is not None and abs(f["raw"] - (f["predicted"] or 0)) > 1e-9 else "",
            ratio(f["measured"], f.get("measured_interval"), f.get("measured_bound")),
            f["meaning"],
        ]
        for name, f in factors.items()
    ]
    console().print(
        table("Where the prediction came from", ["factor", "predicted", "raw model", "measured", "meaning"], rows)
    )
