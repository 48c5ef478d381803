"""A short stability check: does training at the chosen batch survive the recommended rate?

Trains a fresh model at the chosen batch while the learning rate rises geometrically from a
tenth of the recommendation to past it (as a learning-rate range test does). The loss,
smoothed, diverging to several times its best marks the first unstable rate. If that happens
below the recommended rate, the recommendation backs off to the largest rate that stayed stable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .profiler import StepRunner
from ..workloads.base import Workload

__all__ = ["StabilityResult", "check_stability", "apply_stability"]


@dataclass(frozen=True)
class StabilityResult:
    batch_size: int
    recommended_lr: float
    lrs: tuple[float, ...]  # the rate used at each step
    losses: tuple[float, ...]  # the training loss at each step (NaN/inf kept as None)
    diverged_at_lr: float | None  # first rate at which the loss diverged, if any
    max_stable_lr: float  # the largest rate reached before divergence
    stable: bool  # True when nothing diverged at or below the recommendation

    def to_dict(self) -> dict:
        return asdict(self)


def check_stability(
    workload: Workload,
    device: torch.device,
    batch_size: int,
    lr: float,
    steps: int = 60,
    start_factor: float = 0.1,
    end_factor: float = 3.0,
    divergence_factor: float = 4.0,
    smoothing: float = 0.9,
    dtype: str = "fp32",
    seed: int = 0,
    on_progress: Callable[[float], None] = lambda _f: None,
) -> StabilityResult:
    runner = StepRunner(workload, device, batch_size, dtype=dtype, seed=seed)
    # each group's rate relative to the one the optimizer was made with: a factory's groups ramp together
    group_scales = [group["lr"] / workload.baseline_lr for group in runner.optimizer.param_groups]
    growth = (end_factor / start_factor) ** (1.0 / max(1, steps - 1))
    lrs, losses = [], []
    best = math.inf
    smooth = None
    diverged_at = None
    try:
        for i in range(steps):
            rate = lr * start_factor * growth**i
            for group, scale in zip(runner.optimizer.param_groups, group_scales):
                group["lr"] = rate * scale
            loss = runner.step()
            value = float(loss)  # sync: a short check reads every loss
            lrs.append(rate)
            losses.append(value if math.isfinite(value) else None)
            on_progress((i + 1) / steps)
            if not math.isfinite(value):
                diverged_at = rate
                break
            smooth = value if smooth is None else smoothing * smooth + (1 - smoothing) * value
            corrected = smooth / (1 - smoothing ** (i + 1)) if i < 50 else smooth
            best = min(best, corrected)
            if i >= 5 and corrected > divergence_factor * best:
                diverged_at = rate
                break
    finally:
        runner.close()
    stable_rates = lrs[:-1] if diverged_at is not None else lrs
    max_stable = stable_rates[-1] if stable_rates else lrs[0] / growth
    return StabilityResult(
        batch_size=batch_size,
        recommended_lr=lr,
        lrs=tuple(lrs),
        losses=tuple(losses),
        diverged_at_lr=diverged_at,
        max_stable_lr=max_stable,
        stable=diverged_at is None or diverged_at > lr,
    )


def apply_stability(rec: dict, result: dict) -> dict:
    """The recommendation after the check: backed off to the largest stable rate where needed."""
    rec = dict(rec, stability=result, reasons=list(rec["reasons"]))
    if result["stable"]:
        if result["diverged_at_lr"] is not None:
            tail = f"it first diverged at {result['diverged_at_lr']:.3g}, above the recommendation"
        else:
            tail = f"no divergence up to {result['lrs'][-1]:.3g}"
        rec["reasons"].append(
            f"stability check: the loss stayed stable at batch {result['batch_size']} up to and past "
            f"the recommended rate {rec['learning_rate']:.3g} ({tail})"
        )
        return rec
    old = rec["learning_rate"]
    rec["learning_rate"] = result["max_stable_lr"]
    rec["reasons"].append(
        f"stability check: the loss diverged at lr {result['diverged_at_lr']:.3g}, below the "
        f"recommended {old:.3g}; backed off to {result['max_stable_lr']:.3g}, the largest rate "
        f"that stayed stable"
    )
    return rec
