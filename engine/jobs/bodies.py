"""Job bodies: what runs inside a job process, wiring the engine to the spool.

Each body takes a :class:`largestep.jobs.JobContext`; the spool's events are what
:func:`largestep.store.ingest` turns into rows.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from typing import Callable

from . import events, torchrun
from .runner import JobContext
from ..measure import devices, distributed
from ..measure.devices import versions
from ..workloads import load_workload
from ..workloads.cache import WorkloadCache, cache_of

__all__ = [
    "profile_task",
    "noise_task",
    "noise_curve_task",
    "stability_task",
    "train_task",
    "run_training",
    "SpoolRunLog",
    "profile_config_from_params",
]


def device_and_workload(params: dict, cache: WorkloadCache | None):
    """The job's device and its workload (through ``cache``). The device is made this process's
    current one before the workload loads: a workload or library that puts tensors on plain "cuda"
    then lands on the job's GPU, not on GPU 0 (another job's)."""
    device = devices.resolve_device(params.get("device", "auto"))
    devices.use_device(device)
    return device, load_workload(params["workload"], params.get("options") or {}, cache)


def profile_config_from_params(params: dict):
    """The ProfileConfig of a profile job's params (the profiler is imported by profile jobs only)."""
    from ..measure.profiler_config import profile_config_of

    return profile_config_of(params.get("config", {}))


def profile_task(ctx: JobContext) -> None:
    from ..measure import telemetry
    from ..measure.profiler import ProfilePoint, plan_batch_sizes, run_profile, with_points

    params = ctx.params
    nproc = (params.get("config") or {}).get("nproc") or 1
    if nproc > 1 and not torchrun.in_rank(ctx):
        try:
            torchrun.run_ranks(ctx, nproc, params.get("collective_timeout_s", torchrun.DEFAULT_TIMEOUT_S))
        except distributed.RankOutOfMemory as oom:
            _end_profile_at_out_of_memory(ctx, oom)
        return
    ctx.progress("loading workload", 0.0)
    config = profile_config_from_params(params)
    config.validate()
    use_threads(config.threads)
    device, workload = device_and_workload(params, cache_of(ctx.home))
    info = devices.device_info(device)
    math = devices.use_math(workload, config.tf32)  # TF32 and cuDNN as the runs it predicts will have them
    planned = plan_batch_sizes(config, workload)
    carried = _carried_points(ctx, params.get("carry_from"), planned)

    sampler = telemetry.Sampler(
        info,
        on_samples=lambda samples: ctx.spool.emit(events.TELEMETRY, samples=samples),
        root_pid=torchrun.job_root_pid(),
    )
    ctx.spool.emit(
        events.PROFILE_START,
        profile_id=ctx.job_id,
        workload=workload.name,
        workload_spec=params["workload"],
        world_size=distributed.world_size(),
        options=params.get("options") or {},
        device=info.to_dict(),
        config=asdict(config),
        planned=planned,
        baseline_batch_size=workload.baseline_batch_size,
        baseline_lr=workload.baseline_lr,
        optimizer=workload.optimizer_name,
        n_train=workload.n_train,
        epochs=workload.epochs,
        warmup_samples=workload.default_warmup_samples(),
        weight_decay=workload.weight_decay,
        schedule=workload.schedule,
        decay_samples=workload.decay_samples,
        max_grad_norm=workload.max_grad_norm,
        telemetry_source=sampler.source,
        telemetry_reason=sampler.reason,
        versions=versions(),
        math_settings=math,
        estimator=config.estimator,
        threads=torch_threads(),
        cores=os.cpu_count(),
        carried_from=params.get("carry_from"),
    )

    power = telemetry.WindowPower(info, sampler)
    others = telemetry.WindowLoad(root_pid=torchrun.job_root_pid())  # other processes' CPU over each window

    def tag(batch_size: int | None) -> None:
        """Called as the clock starts (the batch size being timed) and stops (None)."""
        sampler.tag = batch_size
        for window in (power, others):
            if batch_size is not None:
                window.open()
            else:
                window.close()

    def on_point(point: ProfilePoint, visits_done: int, visits_expected: int) -> None:
        # the samples tagged with this batch size are the ones taken while its steps were timed
        load = telemetry.background_load([s for s in sampler.samples if s["batch_size"] == point.batch_size])
        ctx.spool.emit(events.POINT, profile_id=ctx.job_id, **point.to_dict(), **load)
        ctx.spool.flush()
        ctx.progress(
            f"measured batch {point.batch_size}",
            visits_done / max(1, visits_expected),
            batch_size=point.batch_size,
            visits_done=visits_done,
            visits_planned=visits_expected,
        )

    ctx.progress(f"profiling {len(planned)} batch sizes on {info.torch_device}", 0.0)
    with sampler:
        result = run_profile(
            workload,
            device,
            config,
            on_point=on_point,
            telemetry_tag=tag,
            power_between=power.mean_power_w,
            others_busy_cores=others.others_busy_cores,
        )
    if carried:
        for point, background in carried:  # a re-profile: the other profile's points it did not measure again
            ctx.spool.emit(events.POINT, profile_id=ctx.job_id, **point.to_dict(), **background)
        result = with_points(result, [point for point, _ in carried])
    fit = result.memory_fit
    ctx.spool.emit(
        events.PROFILE_END,
        profile_id=ctx.job_id,
        stop_reason=result.stop_reason,
        saturation_batch=result.saturation_batch,
        memory_fit_intercept_bytes=fit.intercept_bytes if fit else None,
        memory_fit_slope_bytes=fit.slope_bytes if fit else None,
        inconsistency=result.inconsistency,
    )
    ctx.progress("done", 1.0)


def use_threads(threads: int | None) -> None:
    """torch's intra-op threads for this job (--threads); None leaves torch's default, one a core."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _carried_points(ctx: JobContext, carry_from: str | None, planned: list[int]) -> list:
    """The points of profile ``carry_from`` (its spool, in this home) at the sizes this profile does not measure,
    each with its background load: a re-profile of that profile's loaded sizes carries them over."""
    from ..measure.profiler import ProfilePoint

    if not carry_from:
        return []
    record = events.profile_record(events.read_all(ctx.home.job_dir(carry_from)))
    return [
        (ProfilePoint.from_dict(row), {k: row.get(k) for k in events.BACKGROUND_FIELDS})
        for row in record["points"]
        if row["batch_size"] not in planned
    ]


def _end_profile_at_out_of_memory(ctx: JobContext, oom: distributed.RankOutOfMemory) -> None:
    """A rank ran out of memory (and the ranks were stopped): the batch is the sweep's ceiling, recorded
    with the points the ranks measured before it, as a single-process sweep ends at an OOM."""
    from ..measure.profiler import OOM, ProfilePoint, fit_memory, saturation_batch

    spooled = [ProfilePoint.from_dict(e) for e in events.read_all(ctx.job_dir) if e.get("type") == events.POINT]
    point = ProfilePoint(batch_size=oom.batch_size, status=OOM, error=str(oom)[:500], ended_at=time.time())
    ctx.spool.emit(events.POINT, profile_id=ctx.job_id, **point.to_dict())
    points = [*spooled, point]
    fit = fit_memory(points)
    ctx.spool.emit(
        events.PROFILE_END,
        profile_id=ctx.job_id,
        stop_reason=OOM,
        saturation_batch=saturation_batch(points),
        memory_fit_intercept_bytes=fit.intercept_bytes if fit else None,
        memory_fit_slope_bytes=fit.slope_bytes if fit else None,
    )
    ctx.progress("done", 1.0)


def noise_task(ctx: JobContext) -> None:
    """Estimate the gradient noise scale; one ``noise_estimate`` event."""
    from ..measure.noise import estimate_noise

    params = ctx.params
    ctx.progress("loading workload", 0.0)
    device, workload = device_and_workload(params, cache_of(ctx.home))
    devices.use_math(workload)
    estimate = estimate_noise(
        workload,
        device,
        batch_small=params.get("batch_small"),
        batch_big=params.get("batch_big"),
        batches=params.get("batches", 32),
        warm_steps=params.get("warm_steps", 0),
        seed=params.get("seed", 0),
        compile=bool(params.get("compile")),
        on_progress=lambda phase, fraction: ctx.progress(phase, fraction),
    )
    ctx.spool.emit(
        events.NOISE_ESTIMATE,
        workload=workload.name,
        workload_spec=params["workload"],
        options=params.get("options") or {},
        device=devices.device_info(device).to_dict(),
        **estimate.to_dict(),
    )
    ctx.progress("done", 1.0)


def noise_curve_task(ctx: JobContext) -> None:
    """Estimate the noise scale along one baseline run; one ``noise_curve_point`` event a point, each
    flushed as soon as it is known (a long curve shows its first points while it runs)."""
    from ..measure.noise import estimate_noise_curve

    params = ctx.params
    ctx.progress("loading workload", 0.0)
    device, workload = device_and_workload(params, cache_of(ctx.home))
    devices.use_math(workload)
    described = {
        "workload": workload.name,
        "workload_spec": params["workload"],
        "options": params.get("options") or {},
        "device": devices.device_info(device).to_dict(),
    }

    def on_point(point) -> None:
        ctx.spool.emit(events.NOISE_CURVE_POINT, **described, **point.to_dict())
        ctx.spool.flush()

    estimate_noise_curve(
        workload,
        device,
        tuple(params["at"]),
        batch_small=params.get("batch_small"),
        batch_big=params.get("batch_big"),
        batches=params.get("batches", 32),
        seed=params.get("seed", 0),
        compile=bool(params.get("compile")),
        on_point=on_point,
        on_progress=lambda phase, fraction: ctx.progress(phase, fraction),
    )
    ctx.progress("done", 1.0)


def stability_task(ctx: JobContext) -> None:
    """Ramp the learning rate past the recommendation at the chosen batch; one ``stability`` event."""
    from ..measure.stability import check_stability

    params = ctx.params
    device, workload = device_and_workload(params, cache_of(ctx.home))
    devices.use_math(workload)
    result = check_stability(
        workload,
        device,
        params["batch_size"],
        params["lr"],
        steps=params.get("steps", 60),
        dtype=params.get("dtype", "fp32"),
        on_progress=lambda f: ctx.progress("learning-rate ramp", f),
    )
    ctx.spool.emit(events.STABILITY, id=ctx.job_id, **result.to_dict())
    ctx.progress("done", 1.0)


def train_task(ctx: JobContext) -> None:
    """One training run; ``run_start``, ``metrics``, ``eval`` and ``run_end`` events.

    With ``nproc > 1`` the job process launches the ranks (largestep.jobs.torchrun), each of which
    comes back here inside its process group.
    """
    params = ctx.params
    nproc = params["config"].get("nproc") or 1
    if nproc > 1 and not torchrun.in_rank(ctx):
        torchrun.run_ranks(ctx, nproc, params.get("collective_timeout_s", torchrun.DEFAULT_TIMEOUT_S))
        return
    save_to = str(ctx.job_dir / "model.pt") if params.get("save_weights") else None
    run_training(params, ctx.spool.emit, ctx.progress, save_to=save_to, cache=cache_of(ctx.home))


def run_training(params: dict, emit, progress, save_to: str | None = None, cache: WorkloadCache | None = None) -> None:
    """The training run described by a train job's ``params``, spooled through ``emit``.

    Shared by local jobs, the ranks of a data-parallel job, and Ray tasks (which have no home
    here, so no workload ``cache``).
    """
    from ..measure import telemetry
    from ..measure.train import TrainConfig, train

    progress("loading workload", 0.0)
    fields = {k: v for k, v in params["config"].items() if k in TrainConfig.__dataclass_fields__}
    fields["tags"] = tuple(fields.get("tags") or ())
    config = TrainConfig(**fields)
    use_threads(config.threads)
    device, workload = device_and_workload(params, cache)
    info = devices.device_info(device)
    meta = {
        "workload": workload.name,
        "workload_spec": params["workload"],
        "options": params.get("options") or {},
        "device": info.to_dict(),
        "versions": versions(),
        "launcher": params.get("launcher"),
        "role": params.get("role"),
        "recommendation_id": params.get("recommendation_id"),
        "primary_metric": workload.main_metric,
        "primary_metric_mode": workload.primary_metric_mode,
    }
    # the background load over the whole run, so a comparison can flag runs trained under other conditions;
    # sampled by rank 0 alone, which reports the run (the other ranks are in the job's process tree)
    reporting = distributed.rank() == 0
    sampler = (
        telemetry.Sampler(info, interval_s=telemetry.RUN_INTERVAL_S, root_pid=torchrun.job_root_pid())
        if reporting
        else None
    )
    with sampler or contextlib.nullcontext():
        result = train(
            workload,
            device,
            config,
            log=SpoolRunLog(emit, meta),
            progress=lambda phase, f: progress(phase, f),
            save_to=save_to,
        )
    if reporting:
        emit(events.RUN_END, **asdict(result), **telemetry.background_load(sampler.samples))
        progress("done", 1.0)


class SpoolRunLog:
    """A training run's reports (:class:`largestep.measure.train.RunLog`) as spool events."""

    def __init__(self, emit: Callable[..., None], meta: dict | None = None):
        self.emit, self.meta = emit, meta or {}

    def started(self, **facts) -> None:
        self.emit(events.RUN_START, **self.meta, **facts)

    def logged(self, rows: list[dict]) -> None:
        self.emit(events.METRICS, rows=rows)

    def logged_values(self, rows: list[dict]) -> None:
        self.emit(events.METRIC_VALUES, rows=rows)

    def evaluated(self, **evaluation) -> None:
        self.emit(events.EVAL, **evaluation)
