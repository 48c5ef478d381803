"""Job bodies: what runs inside a job process, wiring the engine to the spool.

Each body takes a :class:`engine.jobs.JobContext`; the spool's events are what
:func:`engine.store.ingest` turns into rows.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Callable

from engine.jobs import events, torchrun
from engine.jobs.runner import JobContext
from engine.measure import devices, distributed
from engine.measure.devices import versions
from engine.workloads import load_workload
from engine.workloads.cache import WorkloadCache, cache_of

__all__ = ["profile_task", "noise_task", "stability_task", "train_task", "run_training", "SpoolRunLog",
           "profile_config_from_params"]


def profile_config_from_params(params: dict):
    """The ProfileConfig of a profile job's params (the profiler is imported by profile jobs only)."""
    from engine.measure.profiler import ProfileConfig

    fields = {k: v for k, v in params.get("config", {}).items() if k in ProfileConfig.__dataclass_fields__}
    if fields.get("batch_sizes") is not None:
        fields["batch_sizes"] = tuple(fields["batch_sizes"])
    return ProfileConfig(**fields)


def profile_task(ctx: JobContext) -> None:
    from engine.measure import telemetry
    from engine.measure.profiler import ProfilePoint, plan_batch_sizes, run_profile

    params = ctx.params
    nproc = (params.get("config") or {}).get("nproc") or 1
    if nproc > 1 and not torchrun.in_rank(ctx):
        torchrun.run_ranks(ctx, nproc, params.get("collective_timeout_s", torchrun.DEFAULT_TIMEOUT_S))
        return
    ctx.progress("loading workload", 0.0)
    workload = load_workload(params["workload"], params.get("options") or {}, cache_of(ctx.home))
    device = devices.resolve_device(params.get("device", "auto"))
    info = devices.device_info(device)
    config = profile_config_from_params(params)
    config.validate()
    planned = plan_batch_sizes(config, workload)

    sampler = telemetry.Sampler(info, on_samples=lambda samples: ctx.spool.emit(events.TELEMETRY, samples=samples))
    ctx.spool.emit(
        events.PROFILE_START, profile_id=ctx.job_id, workload=workload.name, workload_spec=params["workload"],
        world_size=distributed.world_size(),
        options=params.get("options") or {}, device=info.to_dict(), config=asdict(config), planned=planned,
        baseline_batch_size=workload.baseline_batch_size, baseline_lr=workload.baseline_lr,
        optimizer=workload.optimizer_name, n_train=workload.n_train, epochs=workload.epochs,
        warmup_samples=workload.default_warmup_samples(), weight_decay=workload.weight_decay,
        schedule=workload.schedule, decay_samples=workload.decay_samples, max_grad_norm=workload.max_grad_norm,
        telemetry_source=sampler.source, telemetry_reason=sampler.reason, versions=versions(),
    )

    def tag(batch_size: int | None) -> None:
        sampler.tag = batch_size

    def power_between(start: float, end: float) -> float | None:
        watts = [s["power_w"] for s in list(sampler.samples)
                 if s.get("power_w") is not None and start <= s["t"] <= end]
        return statistics.fmean(watts) if watts else None

    def on_point(point: ProfilePoint, index: int, count: int) -> None:
        ctx.spool.emit(events.POINT, profile_id=ctx.job_id, **point.to_dict())
        ctx.spool.flush()
        ctx.progress(f"measured batch {point.batch_size}", (index + 1) / count,
                     batch_size=point.batch_size, points_done=index + 1, points_planned=count)

    ctx.progress(f"profiling {len(planned)} batch sizes on {info.torch_device}", 0.0, points_planned=len(planned))
    with sampler:
        result = run_profile(workload, device, config, on_point=on_point, telemetry_tag=tag,
                             power_between=power_between)
    fit = result.memory_fit
    ctx.spool.emit(
        events.PROFILE_END, profile_id=ctx.job_id, stop_reason=result.stop_reason,
        saturation_batch=result.saturation_batch,
        memory_fit_intercept_bytes=fit.intercept_bytes if fit else None,
        memory_fit_slope_bytes=fit.slope_bytes if fit else None,
    )
    ctx.progress("done", 1.0)


def noise_task(ctx: JobContext) -> None:
    """Estimate the gradient noise scale; one ``noise_estimate`` event."""
    from engine.measure.noise import estimate_noise

    params = ctx.params
    ctx.progress("loading workload", 0.0)
    workload = load_workload(params["workload"], params.get("options") or {}, cache_of(ctx.home))
    device = devices.resolve_device(params.get("device", "auto"))
    estimate = estimate_noise(
        workload, device, batch_small=params.get("batch_small"), batch_big=params.get("batch_big"),
        batches=params.get("batches", 32), warm_steps=params.get("warm_steps", 0), seed=params.get("seed", 0),
        compile=bool(params.get("compile")), on_progress=lambda phase, fraction: ctx.progress(phase, fraction),
    )
    ctx.spool.emit(events.NOISE_ESTIMATE, workload=workload.name, workload_spec=params["workload"],
                   options=params.get("options") or {}, device=devices.device_info(device).to_dict(),
                   **estimate.to_dict())
    ctx.progress("done", 1.0)


def stability_task(ctx: JobContext) -> None:
    """Ramp the learning rate past the recommendation at the chosen batch; one ``stability`` event."""
    from engine.measure.stability import check_stability

    params = ctx.params
    workload = load_workload(params["workload"], params.get("options") or {}, cache_of(ctx.home))
    device = devices.resolve_device(params.get("device", "auto"))
    result = check_stability(workload, device, params["batch_size"], params["lr"], steps=params.get("steps", 60),
                             dtype=params.get("dtype", "fp32"),
                             on_progress=lambda f: ctx.progress("learning-rate ramp", f))
    ctx.spool.emit(events.STABILITY, id=ctx.job_id, **result.to_dict())
    ctx.progress("done", 1.0)


def train_task(ctx: JobContext) -> None:
    """One training run; ``run_start``, ``metrics``, ``eval`` and ``run_end`` events.

    With ``nproc > 1`` the job process launches the ranks (engine.jobs.torchrun), each of which
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
    from engine.measure.train import TrainConfig, train

    progress("loading workload", 0.0)
    workload = load_workload(params["workload"], params.get("options") or {}, cache)
    device = devices.resolve_device(params.get("device", "auto"))
    fields = {k: v for k, v in params["config"].items() if k in TrainConfig.__dataclass_fields__}
    fields["tags"] = tuple(fields.get("tags") or ())
    config = TrainConfig(**fields)
    meta = {"workload": workload.name, "workload_spec": params["workload"], "options": params.get("options") or {},
            "device": devices.device_info(device).to_dict(), "versions": versions(), "launcher": params.get("launcher"),
            "role": params.get("role"), "recommendation_id": params.get("recommendation_id"),
            "primary_metric": workload.main_metric, "primary_metric_mode": workload.primary_metric_mode}
    result = train(workload, device, config, log=SpoolRunLog(emit, meta), progress=lambda phase, f: progress(phase, f),
                   save_to=save_to)
    if distributed.rank() == 0:
        emit(events.RUN_END, **asdict(result))
        progress("done", 1.0)


class SpoolRunLog:
    """A training run's reports (:class:`engine.measure.train.RunLog`) as spool events."""

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
