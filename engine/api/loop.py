"""The loop from Python: ``largestep.profile``, ``.noise``, ``.recommend`` and ``.autopilot``.

Each takes the options of the CLI command of the same name (``--min-batch 32`` is ``min_batch=32``; ``--set
samples=4000`` is ``options={"samples": 4000}``), checks them with the same code, starts the same job
(:mod:`largestep.jobs.start`) on the same home and store, follows it with a progress bar (``quiet=True``: none),
and returns a small result object (:mod:`largestep.api.results`). Bad input raises the one-line error the CLI
prints (a :class:`largestep.errors.LargestepError`), and writes nothing.

``workload`` is a spec string, as ``--workload`` takes it, or a :class:`largestep.Workload` built in Python.
There is no ``detach``: each call returns once its job has ended (``largestep profile --detach`` starts one and
returns).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..home import Home, resolve_home
from .progress import follow
from .results import Autopilot, NoiseCurve, NoiseEstimate, Profile, Recommendation
from .workload import workload_options, workload_spec

__all__ = ["profile", "noise", "recommend", "autopilot"]


def _home(home) -> Home:
    return resolve_home(home).check()


def profile(
    workload,
    *,
    options: Mapping[str, object] | None = None,
    data: str | None = None,
    label: str | None = None,
    device: str = "auto",
    batch_sizes: Sequence[int] | str | None = None,
    min_batch: int | None = None,
    max_batch: int | None = None,
    dtype: str = "fp32",
    memory_budget: str | int | None = None,
    full: bool = False,
    min_steps: int = 10,
    min_seconds: float = 1.0,
    warmup_steps: int = 3,
    rounds: int = 3,
    seed: int = 0,
    compile: bool = False,
    tf32: bool | None = None,
    nproc: int = 1,
    launcher: str = "local",
    ray_address: str | None = None,
    home=None,
    quiet: bool = False,
    estimator: str | None = None,
    threads: int | None = None,
) -> Profile:
    """Measure step time, throughput and memory against batch size, as `largestep profile` does (a job).

    ``batch_sizes``: explicit sizes, e.g. ``[32, 128, 512]`` (else powers of two from ``min_batch``, default a
    quarter of the baseline, to ``max_batch``, default 65536). ``memory_budget``: bytes, or text such as
    ``"12GiB"``. ``tf32``: TF32 in float32 matmuls and convolutions (None: the workload's field). ``home``: the
    largestep home (default ``$LARGESTEP_HOME`` or ``./.largestep``). ``estimator``: which statistic of a size's
    timed steps is its step time (default a low quantile, see docs/profiling.md); ``threads``: torch's intra-op
    threads on the CPU, stored with the profile for the runs trained from it. Returns the profile whatever its end,
    as long as it measured a batch size (its ``state`` says how it ended).
    """
    from ..jobs.follow import describe_profile_event
    from ..jobs.ray import launcher_from_cli
    from ..jobs.start import start_profile
    from ..measure.profiler_config import ProfileConfig
    from ..store.outcomes import profile_outcome

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
        compile=compile,
        tf32=tf32,
        threads=threads,
        **({"estimator": estimator} if estimator is not None else {}),
    )
    run_on = launcher_from_cli(launcher, ray_address)
    where = _home(home)
    chosen = workload_options(options, data, label)
    with workload_spec(where, workload, chosen, launcher) as spec:
        job_id = start_profile(where, spec, chosen, device, config, launcher=run_on)
    state = follow(where, job_id, describe_profile_event, quiet)
    return Profile.of(profile_outcome(where, job_id, state))


def noise(
    workload,
    *,
    options: Mapping[str, object] | None = None,
    data: str | None = None,
    label: str | None = None,
    device: str = "auto",
    batch_small: int | None = None,
    batch_big: int | None = None,
    batches: int = 32,
    warm_steps: int | str = "auto",
    at: Sequence[float] | str | None = None,
    seed: int = 0,
    compile: bool = False,
    home=None,
    quiet: bool = False,
) -> NoiseEstimate | NoiseCurve:
    """Estimate the gradient noise scale B_simple with its 90% interval, as `largestep noise` does (a job).

    ``batch_small``: default the workload's baseline batch; ``batch_big``: a multiple of it (default 8x).
    ``warm_steps``: baseline training steps first ("auto": one epoch, at most 500). ``at``: fractions of one
    baseline run's training, e.g. ``[0, 0.25, 0.5, 1]``, for a :class:`NoiseCurve` instead of one estimate.
    """
    from ..jobs.start import start_noise_request
    from ..measure.noise_config import NoiseRequest
    from ..store.outcomes import ended, noise_curve_outcome, noise_outcome

    request = NoiseRequest.from_options(batch_small, batch_big, batches, warm_steps, at, seed, compile)
    where = _home(home)
    chosen = workload_options(options, data, label)
    with workload_spec(where, workload, chosen) as spec:
        job_id = start_noise_request(where, spec, chosen, device, request)
    what = "noise curve" if request.at is not None else "noise estimate"
    ended(where, job_id, follow(where, job_id, quiet=quiet), what)
    if request.at is not None:
        return NoiseCurve.of(noise_curve_outcome(where, job_id))
    return NoiseEstimate.of(noise_outcome(where, job_id))


def recommend(
    profile: "Profile | str" = "latest",
    *,
    baseline_batch: int | None = None,
    baseline_lr: float | None = None,
    rule: str = "linear",
    noise_scale: float | None = None,
    estimate_noise: bool = False,
    noise: "NoiseEstimate | str | None" = None,
    noise_curve: "NoiseCurve | str | None" = "latest",
    memory_headroom: float = 0.9,
    max_lr: float | None = None,
    warmup_samples: int | None = None,
    check_stability: bool = False,
    device: str = "auto",
    home=None,
    quiet: bool = False,
    accept_load: bool = False,
) -> Recommendation:
    """Recommend a batch size and learning rate from a profile, as `largestep recommend` does; saved in the store.

    ``profile``: a :class:`Profile`, its id, or "latest". The noise scale: ``noise_scale`` (a number),
    ``noise`` (a :class:`NoiseEstimate` or its id), or ``estimate_noise=True`` (runs a job); by default the
    workload's newest reliable estimate, else perfect scaling is assumed and said. ``noise_curve``: plan a growing
    batch schedule from a :class:`NoiseCurve` or its id ("latest": the workload's newest, if any; None: none).
    ``check_stability``: train briefly at the chosen batch with the rate ramped past it, and back off if it
    diverges below it (a job on ``device``). A profile that cannot be trusted (measured under load, failing the
    physics check) is refused with :class:`largestep.errors.UnusableProfile`; ``accept_load=True`` uses it, and
    the recommendation carries why (``accepted_load``).
    """
    from ..plan.recommend import RecommendConfig
    from ..store.outcomes import ended, recommend_and_save

    config = RecommendConfig.from_options(
        baseline_batch, baseline_lr, rule, noise_scale, memory_headroom, max_lr, warmup_samples, accept_load
    )
    where = _home(home)

    def follow_to_end(job_id: str, what: str) -> None:
        ended(where, job_id, follow(where, job_id, quiet=quiet), what)

    rec = recommend_and_save(
        where,
        _id(profile, Profile, "profile"),
        config,
        _id(noise, NoiseEstimate, "noise"),
        _id(noise_curve, NoiseCurve, "noise_curve") or "none",
        estimate_noise,
        check_stability,
        device,
        follow=follow_to_end,
    )
    return Recommendation.of(rec)


def autopilot(
    workload,
    *,
    options: Mapping[str, object] | None = None,
    data: str | None = None,
    label: str | None = None,
    repeats: int = 3,
    epochs: float | None = None,
    rule: str = "linear",
    arms: Sequence[str] | str | None = None,
    until_decisive: bool = False,
    max_repeats: int = 10,
    quality_tolerance: float = 0.01,
    compile: bool = False,
    device: str = "auto",
    nproc: int = 1,
    launcher: str = "local",
    ray_address: str | None = None,
    home=None,
    quiet: bool = False,
    accept_load: bool = False,
    quiet_timeout: float | None = None,
    threads: int | None = None,
    until_verified: bool = False,
    max_attempts: int = 2,
    **settings,
) -> Autopilot:
    """The whole loop in one job, as `largestep autopilot` does: profile, noise scale, recommend, train the baseline
    and the recommendation (``repeats`` seeds each, one after the other on the device), compare, and one headline.

    ``arms``: ``["baseline", "recommended"]`` trains both even when the recommendation is the baseline;
    ``["baseline", "fixed", "schedule"]`` adds an arm growing its batch on a schedule planned from a noise curve.
    ``settings``: the autopilot config's own knobs beyond the CLI's options, for short runs: ``min_seconds``
    (timed seconds per batch size in its profile, default 1), ``max_batch`` (65536), ``noise_batches`` (32),
    ``tolerance`` (the target: the baseline's best validation loss plus this share, default 0.01).
    A profile that cannot be trusted: the autopilot waits for a quiet window (at most ``quiet_timeout`` seconds,
    default 600), measures its untrusted sizes again, and stops if the machine never quietens;
    ``accept_load=True`` trains on it as it is. ``threads``: torch's threads in the profile and every run.
    ``until_verified=True``: a pair that is not verified (faster, with a quality equivalent or better) is recorded
    as a calibration point and the next pair the corrected noise model ranks is tried, at most ``max_attempts``
    pairs, each at its share of the error rate; ``Autopilot.verified`` says whether one was.
    """
    from ..jobs.autopilot import AutopilotConfig
    from ..jobs.follow import describe_autopilot_event
    from ..jobs.start import start_autopilot
    from ..store import ingest
    from ..store.outcomes import autopilot_outcome, ended

    config = AutopilotConfig.from_options(
        repeats,
        epochs,
        rule,
        arms,
        until_decisive,
        max_repeats,
        quality_tolerance,
        compile,
        nproc,
        launcher,
        ray_address,
        accept_load=accept_load,
        quiet_timeout=quiet_timeout,
        threads=threads,
        until_verified=until_verified,
        max_attempts=max_attempts,
        **settings,
    )
    where = _home(home)
    chosen = workload_options(options, data, label)
    with workload_spec(where, workload, chosen, launcher) as spec:
        job_id = start_autopilot(where, spec, chosen, device, config)
    ingest(where)
    ended(where, job_id, follow(where, job_id, describe_autopilot_event, quiet), "autopilot")
    return Autopilot.of(autopilot_outcome(where, job_id))


def _id(value, kind: type, what: str) -> str | None:
    """The id of a result object, or the id (or "latest") given as text; None stays None."""
    from ..errors import UsageError

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, kind):
        return value.id
    raise UsageError(f"{what} must be a {kind.__name__} or its id, not {type(value).__name__}")
