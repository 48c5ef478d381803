"""One model of the steps a batch needs to reach the target, for the recommender and the schedule planner.

McCandlish et al. (2018): S(B) = S_min (1 + B_noise/B). The noise scale grows as the loss falls, so
where a noise curve was measured (B_noise at fractions of one baseline run's training) the baseline's
training is cut into ``CELLS`` equal stretches, each at the curve's noise scale there, and a fixed batch
B takes, over the stretch the baseline covers in ΔS0 steps, ΔS0 (1 + B_noise/B)/(1 + B_noise/B0). Its
steps factor (the baseline's steps over B's, the half of a predicted speedup that is not step time) is

    S(B0)/S(B) = 1 / mean over stretches of (1 + B_noise/B)/(1 + B_noise/B0),

which for a single estimate (one stretch) is the familiar (1 + B_noise/B0)/(1 + B_noise/B), and for
perfect scaling (B_noise infinite) B/B0. The recommender ranks fixed batches by it and the schedule
planner prices each stretch with the same terms, so the two cannot disagree on the best fixed batch.

McCandlish et al. relate the critical batch to B_simple (what largestep measures) only up to a factor
that depends on the problem; a *correction* multiplies every noise scale of the model by a factor that
verifications measured (:mod:`largestep.plan.calibration`). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "CELLS",
    "StepsModel",
    "steps_factor_draws",
    "scaled_noise",
    "cell_centres",
    "noise_draws",
    "NOISE_CONFIDENCE",
]

CELLS = 200  # equal stretches of the baseline's training a noise curve is applied over
NOISE_CONFIDENCE = 0.90  # of a stored noise estimate's bootstrap interval (largestep noise's default)


def noise_draws(noise_scale: float | None, interval: tuple | None, draws: int, rng) -> np.ndarray:
    """Draws of B_noise: a two-piece log-normal through the estimate and its bootstrap interval's ends
    (each end NOISE_CONFIDENCE's quantile); an open end is drawn from a tail ten times as wide as the
    estimate (an open upper end reaches perfect scaling, B_noise = inf, in a twentieth of the draws).
    None (perfect scaling assumed): inf throughout. No interval: the estimate alone."""
    if noise_scale is None:
        return np.full(draws, np.inf)
    if not interval:
        return np.full(draws, float(noise_scale))
    z = NormalDist().inv_cdf(0.5 + NOISE_CONFIDENCE / 2)
    low, high = interval
    wide = math.log(10.0) / z
    sigma_low = math.log(noise_scale / low) / z if low and 0 < low < noise_scale else wide
    sigma_high = math.log(high / noise_scale) / z if high and high > noise_scale else wide
    normal = rng.standard_normal(draws)
    out = noise_scale * np.exp(np.where(normal < 0, sigma_low, sigma_high) * normal)
    if interval[1] is None:
        out[normal > z] = np.inf
    return out


def cell_centres() -> np.ndarray:
    """The middle of each stretch, as a fraction of the baseline's training."""
    return (np.arange(CELLS) + 0.5) / CELLS


@dataclass(frozen=True)
class StepsModel:
    """Where the noise scale comes from: one estimate, a curve, or none (perfect scaling assumed).

    ``fractions`` and ``scales``: the reliable points (one for an estimate, placed at 0); ``intervals``: each
    point's bootstrap interval (None: not resampled; an end None: open)."""

    kind: str  # "estimate" | "curve" | "perfect scaling"
    fractions: tuple[float, ...] = (0.0,)
    scales: tuple[float, ...] = (math.inf,)
    intervals: tuple[tuple | None, ...] = (None,)
    source_id: str | None = None  # the noise estimate's or the curve's id

    @classmethod
    def perfect(cls) -> "StepsModel":
        return cls("perfect scaling")

    @classmethod
    def from_estimate(
        cls, noise_scale: float, interval: tuple | None = None, source_id: str | None = None
    ) -> "StepsModel":
        return cls("estimate", (0.0,), (float(noise_scale),), (tuple(interval) if interval else None,), source_id)

    @classmethod
    def from_curve(cls, curve: list[dict]) -> "StepsModel | None":
        """The curve's reliable points (B_simple finite and positive) by fraction; None with fewer than two."""
        kept = sorted(
            (p for p in curve if p.get("b_simple") is not None and math.isfinite(p["b_simple"]) and p["b_simple"] > 0),
            key=lambda p: p["fraction"],
        )
        if len(kept) < 2:
            return None
        return cls(
            "curve",
            tuple(float(p["fraction"]) for p in kept),
            tuple(float(p["b_simple"]) for p in kept),
            tuple((p.get("ci_low"), p.get("ci_high")) for p in kept),
            kept[0].get("curve_id"),
        )

    @property
    def perfect_scaling(self) -> bool:
        return self.kind == "perfect scaling"

    @property
    def single(self) -> float | None:
        """The one noise scale of an estimate; None for a curve or perfect scaling."""
        return self.scales[0] if self.kind == "estimate" else None

    def cell_noise(self) -> np.ndarray:
        """B_noise over each stretch, ``[cells]`` (one cell for an estimate or perfect scaling); flat beyond a
        curve's ends."""
        if len(self.scales) == 1:
            return np.asarray(self.scales, dtype=float)
        return np.interp(cell_centres(), self.fractions, self.scales)

    def noise_draws(self, draws: int, rng) -> np.ndarray:
        """Draws of B_noise over each stretch, ``[cells, draws]``: each point within its bootstrap interval
        (:func:`largestep.plan.recommend.noise_draws`), a curve's stretches interpolated between its points."""
        if self.perfect_scaling:
            return np.full((1, draws), np.inf)
        points = np.stack([noise_draws(s, i, draws, rng) for s, i in zip(self.scales, self.intervals)])
        if len(self.scales) == 1:
            return points
        points = np.minimum(points, 1e300)  # interpolation needs finite values
        weights = np.stack(
            [np.interp(cell_centres(), self.fractions, np.eye(len(self.scales))[k]) for k in range(len(self.scales))]
        )  # [point, cell]
        return weights.T @ points

    def factor(self, b0: int, b: int, correction: float = 1.0) -> float:
        """S(B0)/S(B) at the model's noise scales times ``correction`` (the point prediction)."""
        return float(steps_factor_draws(scaled_noise(self.cell_noise()[:, None], np.array([correction])), b0, b)[0])

    def describe(self, correction: float | None = None) -> str:
        """ "B_noise ≈ 1,234" / "the noise curve nois-… (B_noise 650 to 2,971)" / "perfect scaling", corrected."""
        if self.perfect_scaling:
            return "perfect scaling assumed (no noise-scale estimate)"
        k = correction if correction is not None and correction != 1.0 else None
        if self.kind == "estimate":
            text = f"B_noise ≈ {self.scales[0]:,.0f}"
            return text + (f", corrected ×{k:.2g} to {self.scales[0] * k:,.0f}" if k is not None else "")
        low, high = min(self.scales), max(self.scales)
        text = f"the noise curve {self.source_id or ''} (B_noise {low:,.0f} to {high:,.0f})".replace("  ", " ")
        return text + (f", corrected ×{k:.2g}" if k is not None else "")


def scaled_noise(noise: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """``noise`` ``[cells, draws]`` times a correction per draw ``[draws]`` (0 stays 0 even where B_noise is
    infinite: a critical batch of 0 means the steps do not fall with the batch at all)."""
    correction = np.asarray(correction, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(correction[None, :] == 0, 0.0, noise * correction[None, :])


def steps_factor_draws(noise: np.ndarray, b0: int, b: int) -> np.ndarray:
    """S(B0)/S(B) for each draw of ``noise`` ``[cells, draws]``: one over the mean over the stretches of
    (1 + B_noise/B)/(1 + B_noise/B0); B/B0 where B_noise is infinite (perfect scaling)."""
    noise = np.asarray(noise, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        local = np.where(np.isinf(noise), b0 / b, (1 + noise / b) / (1 + noise / b0))
    return 1.0 / local.mean(axis=0)
