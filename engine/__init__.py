"""largestep's engine: everything but the Streamlit pages. Never imports streamlit.

``Workload`` and ``track`` are imported lazily: a queued job process imports this package while it
waits for its device, and must not spend CPU importing torch while another job is being timed.
"""

__all__ = ["Workload", "track", "__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("largestep")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.1.0"


def track(name, *, batch_size, lr=None, seed=None, tags=(), recommendation=None, home=None, device=None, run_id=None,
          **options):
    """A training run of your own code, seen by largestep as any run: ``with engine.track(...) as run``.

    ``recommendation``: ``"latest"`` or a recommendation id ties the run to it: its role becomes
    ``baseline`` or ``recommended`` when ``batch_size`` is that batch (and ``lr`` defaults to its
    rate). ``home``: the largestep home (default ``$LARGESTEP_HOME`` or ``./.largestep``).
    ``device``: where the model trains (default: the best there is). ``run_id``: the run's id, when
    it must be known before the run starts (a framework's log folder). ``options``: the other fields
    of :class:`engine.jobs.track.TrackConfig` (accumulate, world_size, epochs, total_steps, group,
    primary_metric, primary_metric_mode, hyperparameters). Bad input raises
    :class:`engine.errors.UsageError` before anything is written.
    """
    from engine.errors import UsageError
    from engine.home import resolve_home
    from engine.jobs.track import TrackConfig, TrackedRun, lr_for, role_for

    unknown = sorted(set(options) - set(TrackConfig.__dataclass_fields__) - {"name", "batch_size", "lr", "seed", "tags"})
    if unknown:
        allowed = sorted(set(TrackConfig.__dataclass_fields__) - {"name"})
        raise UsageError(f"track: unknown option {unknown[0]!r}; use one of {', '.join(allowed)}")
    where = resolve_home(home)
    rec = None
    if recommendation is not None:
        from engine.store import read_recommendation  # one short read: the run never holds the database

        rec = read_recommendation(where, str(recommendation))
        if lr is None:
            lr = lr_for(rec, role_for(rec, batch_size))
    config = TrackConfig(name=name, batch_size=batch_size, lr=lr, seed=seed,
                         tags=(tags,) if isinstance(tags, str) else tuple(tags or ()), **options)
    return TrackedRun(where, config, device=device, recommendation=rec, run_id=run_id)


def __getattr__(name: str):
    if name == "Workload":
        from engine.workloads.base import Workload

        return Workload
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
