"""The experiment planner: how many training runs fit into a day's compute, batch by batch.

For every batch size a profile measured (never an extrapolated one), the predicted wall time of
one training run and the number of runs a budget of GPU hours buys, with the baseline and the
recommended batch side by side: the "ten times as many experiments" claim, for the user's own
model and hardware.

A run is defined by the baseline: ``epochs`` passes over the training set at the baseline batch
B0 reach the target. At batch B it takes

    steps(B) = steps(B0) · S(B) / S(B0)       S(B) = S_min (1 + B_noise / B)   (McCandlish et al. 2018)
    run time = steps(B) · t(B)                t(B) the measured median step time

Without a noise-scale estimate, perfect scaling: S(B) ∝ 1/B, so every batch sees the same number
of samples and the run time is samples / throughput. The steps factor is the one
:mod:`largestep.plan.recommend` ranks candidates by, so the planner and the recommendation agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from .recommend import step_time, steps_factor

__all__ = ["PlanConfig", "PlanRow", "Plan", "plan_experiments", "SECONDS_PER_HOUR"]

SECONDS_PER_HOUR = 3600.0
HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class PlanConfig:
    gpu_hours_per_day: float = 24.0  # hours each GPU is free for these experiments, per day (0..24]
    gpus: int = 1  # GPUs, each running one experiment at a time
    epochs: float | None = None  # passes over the training set per baseline run; None: the profile's
    noise_scale: float | None = None  # B_noise; None: perfect scaling (S(B) B constant)

    def validate(self) -> None:
        hours = self.gpu_hours_per_day
        if not (isinstance(hours, (int, float)) and math.isfinite(hours) and 0 < hours <= HOURS_PER_DAY):
            raise UsageError(f"GPU hours per day must lie in (0, 24], not {hours!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise UsageError(f"the number of GPUs must be a positive whole number, not {self.gpus!r}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UsageError(f"epochs per run must be a positive number, not {self.epochs!r}")
        if self.noise_scale is not None and not (math.isfinite(self.noise_scale) and self.noise_scale > 0):
            raise UsageError(f"the noise scale must be a positive number, not {self.noise_scale!r}")

    @property
    def budget_s(self) -> float:
        """Compute seconds per day, all GPUs together."""
        return self.gpu_hours_per_day * SECONDS_PER_HOUR * self.gpus


@dataclass(frozen=True)
class PlanRow:
    batch_size: int
    step_time_s: float
    steps: float  # optimizer steps per run
    run_time_s: float  # predicted wall time of one run (training only)
    experiments_per_day: float  # budget seconds / run time, all GPUs together
    runs_per_day: int  # whole runs that fit: floor(per GPU) x GPUs
    vs_baseline: float  # experiments_per_day / the baseline's
    role: str | None  # "baseline" | "recommended" | None


@dataclass(frozen=True)
class Plan:
    rows: tuple[PlanRow, ...]
    baseline_batch: int
    recommended_batch: int | None
    config: PlanConfig
    epochs: float
    samples_per_run: float  # at the baseline batch
    notes: tuple[str, ...] = ()  # what the profile lacks and what was compared instead

    def row(self, batch: int | None) -> PlanRow | None:
        return next((r for r in self.rows if r.batch_size == batch), None)

    @property
    def ratio(self) -> float | None:
        """Experiments per day at the recommendation over the baseline's; None without a recommendation."""
        rec = self.row(self.recommended_batch)
        return rec.vs_baseline if rec is not None else None


def plan_experiments(
    profile: dict, config: PlanConfig, baseline_batch: int | None = None, recommended_batch: int | None = None
) -> Plan:
    """The plan for a stored profile (see :func:`largestep.store.load_profile`).

    ``baseline_batch`` defaults to the workload's; both it and ``recommended_batch`` must have
    been measured. Raises UsageError, saying how to fix it, when the plan cannot be made.
    """
    config.validate()
    measured = {
        p["batch_size"]: step_time(p)
        for p in profile.get("points", [])
        if p.get("status") == "ok" and p.get("median_s")
    }
    if not measured:
        raise UsageError(f"profile {profile.get('id')} has no measured batch sizes; run `largestep profile` again")
    n_train = profile.get("n_train")
    if not n_train:
        raise UsageError(f"profile {profile.get('id')} does not record the training-set size; profile it again")
    listing = ", ".join(str(b) for b in sorted(measured))
    if baseline_batch is not None and baseline_batch not in measured:
        raise UsageError(
            f"the baseline batch {baseline_batch} was not measured in profile {profile.get('id')} (measured: {listing})"
        )
    b0, notes = _reference_batch(profile, measured)
    b0 = baseline_batch or b0
    if recommended_batch is not None and recommended_batch not in measured:
        raise UsageError(
            f"the recommended batch {recommended_batch} was not measured in profile "
            f"{profile.get('id')} (measured: {listing})"
        )
    epochs = config.epochs if config.epochs is not None else (profile.get("epochs") or 1)
    samples = epochs * n_train
    baseline_steps = samples / b0
    base_factor = steps_factor(b0, config.noise_scale)
    per_gpu_s = config.gpu_hours_per_day * SECONDS_PER_HOUR

    raw = []
    for b in sorted(measured):
        t = measured[b]
        steps = baseline_steps * steps_factor(b, config.noise_scale) / base_factor
        run_time = steps * t
        raw.append((b, t, steps, run_time))
    baseline_rate = config.budget_s / next(run for b, _, _, run in raw if b == b0)
    rows = []
    for b, t, steps, run_time in raw:
        rate = config.budget_s / run_time
        role = "baseline" if b == b0 else "recommended" if b == recommended_batch else None
        rows.append(
            PlanRow(
                batch_size=b,
                step_time_s=t,
                steps=steps,
                run_time_s=run_time,
                experiments_per_day=rate,
                runs_per_day=math.floor(per_gpu_s / run_time) * config.gpus,
                vs_baseline=rate / baseline_rate,
                role=role,
            )
        )
    return Plan(
        rows=tuple(rows),
        baseline_batch=b0,
        recommended_batch=recommended_batch,
        config=config,
        epochs=epochs,
        samples_per_run=samples,
        notes=notes,
    )


def _reference_batch(profile: dict, measured: dict[int, float]) -> tuple[int, tuple[str, ...]]:
    """The workload's baseline batch if the profile measured it; else the measured batch nearest to it
    (on a log scale), with a note saying so and how to measure the baseline."""
    b0 = profile.get("baseline_batch_size")
    if b0 in measured:
        return b0, ()
    if not b0:
        nearest = min(measured)
        return nearest, (
            f"profile {profile.get('id')} does not record the workload's baseline batch; "
            f"compared with the smallest measured batch, {nearest}",
        )
    nearest = min(measured, key=lambda b: (abs(math.log(b / b0)), b))
    sizes = ",".join(str(b) for b in sorted({*measured, b0}))
    return nearest, (
        f"the baseline batch {b0} was not measured in profile {profile.get('id')}; compared with "
        f"the nearest measured batch, {nearest}. Measure it with `largestep profile --batch-sizes "
        f"{sizes}`",
    )
