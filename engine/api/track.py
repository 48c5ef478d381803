"""``largestep.track``: a run of the user's own training code, opened from their process."""

from __future__ import annotations

from ..errors import UsageError
from ..home import resolve_home
from ..jobs.track import TrackConfig, TrackedRun, lr_for, role_for

__all__ = ["track"]


def track(
    name,
    *,
    batch_size,
    lr=None,
    seed=None,
    tags=(),
    recommendation=None,
    home=None,
    device=None,
    run_id=None,
    **options,
):
    """A training run of your own code, seen by largestep as any run: ``with largestep.track(...) as run``.

    ``recommendation``: ``"latest"`` or a recommendation id ties the run to it: its role becomes
    ``baseline`` or ``recommended`` when ``batch_size`` is that batch (and ``lr`` defaults to its
    rate). ``home``: the largestep home (default ``$LARGESTEP_HOME`` or ``./.largestep``).
    ``device``: where the model trains (default: the best there is). ``run_id``: the run's id, when
    it must be known before the run starts (a framework's log folder). ``options``: the other fields
    of :class:`largestep.jobs.track.TrackConfig` (accumulate, world_size, epochs, total_steps, group,
    primary_metric, primary_metric_mode, hyperparameters). Bad input raises
    :class:`largestep.errors.UsageError` before anything is written.
    """
    unknown = sorted(
        set(options) - set(TrackConfig.__dataclass_fields__) - {"name", "batch_size", "lr", "seed", "tags"}
    )
    if unknown:
        allowed = sorted(set(TrackConfig.__dataclass_fields__) - {"name"})
        raise UsageError(f"track: unknown option {unknown[0]!r}; use one of {', '.join(allowed)}")
    where = resolve_home(home)
    rec = None
    if recommendation is not None:
        from ..store import read_recommendation  # one short read: the run never holds the database

        rec = read_recommendation(where, str(recommendation))
        if lr is None:
            lr = lr_for(rec, role_for(rec, batch_size))
    config = TrackConfig(
        name=name,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        tags=(tags,) if isinstance(tags, str) else tuple(tags or ()),
        **options,
    )
    return TrackedRun(where, config, device=device, recommendation=rec, run_id=run_id)
