"""What a noise-scale estimate needs without torch: its arguments, checked before any job is written, and
McCandlish's estimator from two averaged squared norms (which the training loop's live probe shares). Apart from
:mod:`largestep.measure.noise` so that submitting an estimate imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..units import check_int, check_number

if TYPE_CHECKING:
    from ..workloads.base import Workload

__all__ = [
    "DEFAULT_BIG_MULTIPLE",
    "NoiseRequest",
    "check_curve_fractions",
    "check_noise_args",
    "default_warm_steps",
    "noise_scale_from_norms",
]

DEFAULT_BIG_MULTIPLE = 8  # default batch_big = this many times batch_small (capped by the dataset)


@dataclass(frozen=True)
class NoiseRequest:
    """What `largestep noise` and ``largestep.noise`` ask for, before the workload is known (the batch sizes
    are checked against it when the job starts: :func:`check_noise_args`)."""

    batch_small: int | None = None  # None: the workload's baseline batch
    batch_big: int | None = None  # None: DEFAULT_BIG_MULTIPLE x batch_small, within the data
    batches: int = 32  # big batches averaged over
    warm_steps: int | None = None  # baseline training steps first; None: one epoch (default_warm_steps)
    at: tuple[float, ...] | None = None  # a curve at these fractions of one baseline run instead of one estimate
    seed: int = 0
    compile: bool = False

    @classmethod
    def from_options(
        cls, batch_small=None, batch_big=None, batches=32, warm_steps="auto", at=None, seed=0, compile=False
    ) -> "NoiseRequest":
        """The options as typed (text) or given from Python (numbers, a list of fractions); UsageError otherwise."""
        from ..units import parse_count, parse_fractions, parse_positive_int

        if at is not None and warm_steps not in ("auto", None):
            raise UsageError(
                "--at and --warm-steps do not go together: each point of a curve trains the baseline "
                "to its own fraction; drop --warm-steps"
            )
        return cls(
            batch_small=parse_positive_int(batch_small, "--batch-small") if batch_small is not None else None,
            batch_big=parse_positive_int(batch_big, "--batch-big") if batch_big is not None else None,
            batches=parse_positive_int(batches, "--batches"),
            warm_steps=None if warm_steps in ("auto", None) else parse_count(warm_steps, "--warm-steps"),
            at=parse_fractions(at) if at is not None else None,
            seed=check_int(seed, "--seed", low=0),
            compile=bool(compile),
        )


def default_warm_steps(workload: "Workload", cap: int = 500) -> int:
    """One epoch of baseline training (at most ``cap`` steps): at initialisation the gradient points
    almost one way and B_simple comes out far too small (fraud-gru: 0.6 before, ~770 after an epoch)."""
    return max(1, min(cap, workload.n_train // workload.baseline_batch_size))


def check_noise_args(
    workload: "Workload",
    batch_small: int | None,
    batch_big: int | None,
    batches: int,
    warm_steps: int,
    confidence: float = 0.9,
    bootstrap: int = 1000,
) -> tuple[int, int]:
    """The two batch sizes to use, or a one-line UsageError saying how to fix the input."""
    n = workload.n_train
    if batch_small is None:
        batch_small = workload.baseline_batch_size
    check_int(batch_small, "--batch-small", low=1)
    if batch_small >= n:
        raise UsageError(
            f"--batch-small {batch_small} leaves no room for a bigger batch in the "
            f"{n} training samples; use a smaller --batch-small"
        )
    if batch_big is None:
        batch_big = min(DEFAULT_BIG_MULTIPLE, n // batch_small) * batch_small
        if batch_big <= batch_small:
            raise UsageError(
                f"the {n} training samples cannot hold two batches of --batch-small "
                f"{batch_small}; use a smaller --batch-small"
            )
    check_int(batch_big, "--batch-big", low=1)
    if batch_big <= batch_small:
        raise UsageError(f"--batch-big {batch_big} must be larger than --batch-small {batch_small}")
    if batch_big % batch_small:
        raise UsageError(
            f"--batch-big {batch_big} must be a multiple of --batch-small {batch_small} "
            f"(e.g. {(batch_big // batch_small + 1) * batch_small})"
        )
    if batch_big > n:
        raise UsageError(
            f"--batch-big {batch_big} is larger than the {n} training samples; use at most "
            f"{n // batch_small * batch_small}"
        )
    check_int(batches, "--batches", low=2)
    check_int(warm_steps, "--warm-steps", low=0)
    check_int(bootstrap, "bootstrap resamples", low=0)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UsageError(f"confidence must be a number between 0 and 1, not {confidence!r}")
    return batch_small, batch_big


def check_curve_fractions(fractions: tuple[float, ...]) -> tuple[float, ...]:
    """Distinct fractions of training in [0, 1], sorted; a curve needs two points at least."""
    for fraction in fractions:
        check_number(fraction, "--at", low=0, high=1, low_inclusive=True)
    points = tuple(sorted(set(fractions)))
    if len(points) < 2:
        raise UsageError(
            f"--at needs two fractions of training at least to draw a curve, not {len(points)}; e.g. --at 0,0.25,0.5,1"
        )
    return points


def noise_scale_from_norms(g_small_sq: float, g_big_sq: float, batch_small: int, batch_big: int) -> tuple[float, float]:
    """(|G|², tr(Σ)) from averaged squared gradient norms at two batch sizes (McCandlish et al., app. A).

    Works elementwise on numpy arrays too (the bootstrap uses it that way).
    """
    g2 = (batch_big * g_big_sq - batch_small * g_small_sq) / (batch_big - batch_small)
    trace_sigma = (g_small_sq - g_big_sq) / (1.0 / batch_small - 1.0 / batch_big)
    return g2, trace_sigma
