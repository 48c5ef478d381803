"""Starting a job, for the CLI, the dashboard and the autopilot: validate the request, then submit.

Every check that can fail on bad input (the workload, the device, the dtype, the config, the
home) runs before the job's folder is written, so bad input starts nothing and writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict

from .. import jobs
from ..errors import LargestepError, UsageError
from ..home import Home, check_database_file
from ..measure import devices_config
from ..measure.profiler_config import ProfileConfig, plan_batch_sizes
from ..units import INT32_MAX, check_int

MAX_REPEATS = 1000  # runs queued by one request (each is a job folder and a process)

__all__ = [
    "start_profile",
    "start_reprofile",
    "start_noise",
    "start_noise_curve",
    "start_noise_request",
    "start_stability",
    "start_train",
    "start_autopilot",
    "load_checked",
]


def undone_on_bad_input(home: Home):
    """Around loading a workload and the checks that need it: a request refused there leaves no cache entry
    (and no home) behind, though loading it had written one."""
    from ..workloads.cache import cache_of

    return cache_of(home).undone_on((LargestepError,))


def load_checked(home: Home, workload: str, options: dict):
    """The workload, loaded and given one trial forward pass: what only running it shows (an output
    without its loss, dict batches without labels, a factory returning no optimizer) is refused
    here as a one-line WorkloadError, before a job is written. Loaded through the home's workload
    cache, so the job it starts reads what this built, and a cached workload that passed its trial
    is not tried again (which spares this process importing what the trial's optimizer imports).
    A request loaded and tried before from this folder, nothing it depends on changed, is not loaded
    at all: its :class:`~largestep.workloads.cache.WorkloadFacts` (name, sizes, baseline) are returned,
    read without importing torch."""
    from ..workloads.cache import cache_of
    from ..workloads.loader import cached_facts, load_workload

    cache = cache_of(home)
    # a request loaded and tried before, nothing it depends on changed: its facts are all these checks need
    facts = cached_facts(workload, options, cache)
    return facts if facts is not None else load_workload(workload, options, cache, check=True)


def start_profile(
    home: Home,
    workload: str,
    options: dict,
    device: str,
    config: ProfileConfig,
    launcher: dict | None = None,
    carry_from: str | None = None,
) -> str:
    """Validate everything, then start a profiling job; returns its id (also the profile's id).

    Every check that can fail on bad input runs before the job's folder is written.
    ``config.nproc > 1``: a data-parallel profile (each batch size is a global batch split over
    the ranks; the step time includes the gradient all-reduce). ``launcher``: see
    :func:`largestep.jobs.ray.check_launcher` (``None`` runs here). ``carry_from``: a re-profile (see
    :func:`start_reprofile`): the points of that profile this one does not measure are carried over.
    """
    from .ray import absolute_workload_spec, check_launcher
    from ..measure.devices_config import check_nproc, lock_names

    config.validate()
    launcher = check_launcher(launcher, device, config.nproc)
    carried = {"carry_from": carry_from} if carry_from else {}
    if launcher is not None:
        workload = absolute_workload_spec(workload)
        home.check()
        check_database_file(home.database)
        params = {
            "workload": workload,
            "options": dict(options),
            "device": device,
            "config": asdict(config),
            "launcher": launcher,
            **carried,
        }
        return jobs.submit(home, "profile", params, device="ray", workload=workload, launcher="ray")
    check_nproc(config.nproc, device)
    resolved = devices_config.resolve_name(device)
    devices_config.check_dtype(resolved, config.dtype)
    home.check()
    check_database_file(home.database)
    with undone_on_bad_input(home):
        loaded = load_checked(home, workload, options)  # a bad workload fails here, before anything is written
        params = {
            "workload": workload,
            "options": dict(options),
            "device": resolved,
            "config": asdict(config),
            **carried,
        }
        if min(plan_batch_sizes(config, loaded), default=loaded.n_train + 1) > loaded.n_train:
            raise UsageError(
                f"every batch size to profile is larger than the {loaded.n_train} training samples of "
                f"{loaded.name}; use batch sizes up to {loaded.n_train}"
            )
        if config.nproc > 1:
            for b in plan_batch_sizes(config, loaded):
                if b % config.nproc == 0:
                    break
            else:
                raise UsageError(f"no batch size to profile is divisible by --nproc {config.nproc}")
    return jobs.submit(
        home, "profile", params, device=resolved, workload=loaded.name, locks=lock_names(resolved, config.nproc)
    )


def start_reprofile(
    home: Home, profile: dict, batch_sizes: list[int], device: str, launcher: dict | None = None
) -> str:
    """Measure again the ``batch_sizes`` of a stored ``profile`` (a record as
    :func:`largestep.store.load_profile` or :func:`largestep.jobs.events.profile_record` gives it: the sizes
    it measured under load, or that failed the physics check), with its workload, options and config, on
    ``device`` (the one it was measured on, as its job was asked); its other points are carried over, so the
    new profile is whole. Returns its id."""
    from ..measure.profiler_config import profile_config_of

    if not batch_sizes:
        raise UsageError(f"profile {profile.get('id')} has no batch size to measure again")
    config = profile_config_of(profile.get("config") or {}, batch_sizes=tuple(sorted(batch_sizes)))
    spec = profile.get("workload_spec") or profile.get("workload")
    return start_profile(
        home, spec, profile.get("options") or {}, device, config, launcher=launcher, carry_from=profile["id"]
    )


def start_noise(
    home: Home,
    workload: str,
    options: dict,
    device: str,
    batch_small: int | None = None,
    batch_big: int | None = None,
    batches: int = 32,
    warm_steps: int | None = None,
    seed: int = 0,
    launcher: dict | None = None,
    compile: bool = False,
) -> str:
    """Validate, then start a gradient-noise-scale job; returns its id (also the estimate's id).

    ``warm_steps=None`` trains the baseline for one epoch first (see ``default_warm_steps``).
    """
    from .ray import absolute_workload_spec, check_launcher
    from ..measure.noise_config import check_noise_args, default_warm_steps

    check_int(seed, "--seed", low=0)
    launcher = check_launcher(launcher, device)
    resolved = devices_config.resolve_name(device) if launcher is None else device
    home.check()
    check_database_file(home.database)
    with undone_on_bad_input(home):
        loaded = load_checked(home, workload, options)
        if warm_steps is None:
            warm_steps = default_warm_steps(loaded)
        batch_small, batch_big = check_noise_args(loaded, batch_small, batch_big, batches, warm_steps)
    params = {
        "workload": workload,
        "options": dict(options),
        "device": resolved,
        "batch_small": batch_small,
        "batch_big": batch_big,
        "batches": batches,
        "warm_steps": warm_steps,
        "seed": seed,
        "compile": bool(compile),
    }
    if launcher is not None:
        params.update(workload=absolute_workload_spec(workload), launcher=launcher)
        return jobs.submit(home, "noise", params, device="ray", workload=loaded.name, launcher="ray")
    return jobs.submit(
        home, "noise", params, device=resolved, workload=loaded.name, locks=[devices_config.lock_name(resolved)]
    )


def start_noise_curve(
    home: Home,
    workload: str,
    options: dict,
    device: str,
    at: tuple[float, ...],
    batch_small: int | None = None,
    batch_big: int | None = None,
    batches: int = 32,
    seed: int = 0,
    compile: bool = False,
) -> str:
    """Validate, then start a job estimating the noise scale at the fractions ``at`` of one baseline
    run's training; returns its id (also the curve's id)."""
    from ..measure.noise_config import check_curve_fractions, check_noise_args

    check_int(seed, "--seed", low=0)
    at = check_curve_fractions(at)
    resolved = devices_config.resolve_name(device)
    home.check()
    check_database_file(home.database)
    with undone_on_bad_input(home):
        loaded = load_checked(home, workload, options)
        batch_small, batch_big = check_noise_args(loaded, batch_small, batch_big, batches, 0)
    params = {
        "workload": workload,
        "options": dict(options),
        "device": resolved,
        "at": list(at),
        "batch_small": batch_small,
        "batch_big": batch_big,
        "batches": batches,
        "seed": seed,
        "compile": bool(compile),
    }
    return jobs.submit(
        home, "noise_curve", params, device=resolved, workload=loaded.name, locks=[devices_config.lock_name(resolved)]
    )


def start_noise_request(home: Home, workload: str, options: dict, device: str, request) -> str:
    """Validate, then start what a :class:`~largestep.measure.noise_config.NoiseRequest` asks for: one estimate, or a
    curve when it gives fractions ``at``; returns the job's id."""
    if request.at is not None:
        return start_noise_curve(
            home,
            workload,
            options,
            device,
            request.at,
            request.batch_small,
            request.batch_big,
            request.batches,
            request.seed,
            compile=request.compile,
        )
    return start_noise(
        home,
        workload,
        options,
        device,
        request.batch_small,
        request.batch_big,
        request.batches,
        request.warm_steps,
        request.seed,
        compile=request.compile,
    )


def start_stability(home: Home, rec: dict, device: str, steps: int = 60) -> str:
    """Start a stability check of a recommendation's batch and rate on ``device``."""
    resolved = devices_config.resolve_name(device)
    params = {
        "workload": rec["workload_spec"],
        "options": rec.get("workload_options") or {},
        "device": resolved,
        "batch_size": rec["batch_size"],
        "lr": rec["learning_rate"],
        "steps": steps,
        "dtype": rec.get("dtype", "fp32"),
    }
    return jobs.submit(
        home,
        "stability",
        params,
        device=resolved,
        workload=rec.get("workload"),
        locks=[devices_config.lock_name(resolved)],
    )


def start_train(
    home: Home,
    workload: str,
    options: dict,
    device: str,
    config,
    repeats: int = 1,
    role: str | None = None,
    recommendation_id: str | None = None,
    launcher: dict | None = None,
    save_weights: bool = False,
) -> list[str]:
    """Validate, then queue ``repeats`` training runs (seeds seed, seed+1, ...) as one group.

    They run one after another on the device (the per-device lock), so they never time each other.
    ``config.nproc > 1``: each run is data-parallel over that many ranks (largestep.jobs.torchrun). ``launcher``
    (see :func:`largestep.jobs.ray.check_launcher`): the runs go to a Ray cluster as tasks, side by
    side, each on a device of its own. ``save_weights``: rank 0 saves the final state_dict to
    ``jobs/<id>/model.pt``.
    """
    import secrets
    from dataclasses import replace

    from .ray import absolute_workload_spec, check_launcher
    from ..measure.devices_config import check_nproc, lock_names

    config.validate()
    check_int(repeats, "--repeats", high=MAX_REPEATS)
    if config.seed + repeats - 1 > INT32_MAX:
        raise UsageError(
            f"--seed {config.seed} with --repeats {repeats} runs seeds beyond {INT32_MAX:,}; "
            f"use a --seed up to {INT32_MAX - repeats + 1:,}"
        )
    launcher = check_launcher(launcher, device, config.nproc)
    if launcher is None:  # here: the device, its dtype and the workload are checked on this machine
        check_nproc(config.nproc, device)
        resolved = devices_config.resolve_name(device)
        devices_config.check_dtype(resolved, config.dtype)
        device = resolved
    else:  # on the cluster: Ray picks the device; the workload loads on the worker
        workload = absolute_workload_spec(workload)
    home.check()
    check_database_file(home.database)
    if launcher is None:
        with undone_on_bad_input(home):
            loaded = load_checked(home, workload, options)
            if config.batch_size > loaded.n_train:
                raise UsageError(
                    f"--batch-size {config.batch_size} is larger than the {loaded.n_train} training "
                    f"samples of {loaded.name}"
                )
            if config.batch_schedule:
                from ..measure.batch_schedule import check_batch_schedule

                check_batch_schedule(tuple(tuple(p) for p in config.batch_schedule), loaded.n_train)
        where = {"device": device, "workload": loaded.name, "locks": lock_names(device, config.nproc)}
    else:
        where = {"device": "ray", "workload": workload, "launcher": "ray"}
    group = config.group or (f"grp-{secrets.token_hex(4)}" if repeats > 1 else None)
    job_ids = []
    for k in range(repeats):
        run_config = replace(config, seed=config.seed + k, group=group)
        params = {
            "workload": workload,
            "options": dict(options),
            "device": device,
            "config": asdict(run_config),
            "role": role,
            "recommendation_id": recommendation_id,
            "save_weights": save_weights,
        }
        if launcher is not None:
            params["launcher"] = launcher
        job_ids.append(jobs.submit(home, "train", params, **where))
    return job_ids


def start_autopilot(home: Home, workload: str, options: dict, device: str, config) -> str:
    """Validate, then start the one-click flow as a job of its own; returns its id.

    The orchestrator waits on a lock of its own, so its children can take the device's lock: it touches
    no device itself, and each child (profile, noise scale, noise curve, training runs) holds the device's.
    """
    config.validate()
    from .ray import check_launcher
    from ..measure.devices_config import check_nproc

    check_launcher(config.launcher, device, config.nproc)
    check_nproc(config.nproc, device)
    resolved = devices_config.resolve_name(device) if config.launcher is None else device
    home.check()
    check_database_file(home.database)
    with undone_on_bad_input(home):
        loaded = load_checked(home, workload, options)
        if loaded.baseline_batch_size % config.nproc:
            raise UsageError(
                f"--nproc {config.nproc} does not divide {loaded.name}'s baseline batch "
                f"{loaded.baseline_batch_size}: every rank needs an equal share of every batch"
            )
    params = {"workload": workload, "options": dict(options), "device": resolved, "autopilot": asdict(config)}
    return jobs.submit(home, "autopilot", params, device=f"autopilot-{resolved}", workload=loaded.name)
