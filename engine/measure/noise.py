"""The gradient noise scale B_simple = tr(Σ) / |G|², measured at two batch sizes.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training",
appendix A: the squared norm of a mean gradient over B samples has expectation

    E|G_B|² = |G|² + tr(Σ) / B

(G the true gradient, Σ the per-sample gradient covariance), so two batch sizes give two
equations and two unknowns:

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each of |G_small|² and |G_big|² is averaged over many batches first; only then are the two
estimates formed, and then their ratio (a ratio of averages: the average of per-batch ratios
is biased and heavy-tailed, because a single batch's |G|² estimate is often near zero).

One pass serves both batch sizes. Each big batch is cut into B_big/B_small equal chunks; each
chunk's mean gradient (one forward and backward) is a |G_small|² sample, and because the loss
is a mean over equal-sized chunks, the mean of the chunk gradients is exactly the big batch's
gradient: a |G_big|² sample at no extra cost. (With batch norm in train mode the chunks
normalise separately, as "ghost batches" of B_small.)

Batches are drawn without replacement from a fresh shuffle of the training set per epoch, so
for a big batch close to the dataset's size the finite-population correction matters:
tr(Σ) comes out about n/(n−1) too large and |G|² about tr(Σ)/(n−1) too small. Negligible for
the batch sizes this tool deals with (n in the thousands at least).

Any workload shape works: a Dataset's big batches come through its DataLoader (in a seeded
order of their own), dict batches are cut key by key, and a model that returns its own loss
(``loss=None``) is differentiated through that loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import DeviceError
from . import devices
from .noise_config import check_curve_fractions, check_noise_args, noise_scale_from_norms
from .profiler import StepRunner, shuffled_on_device
from .train import compile_before_clock
from ..workloads.base import Workload
from ..workloads.batches import Batch, EpochOrder, make_loader, model_output, slice_batch, to_device

__all__ = [
    "NoiseEstimate",
    "NoiseCurvePoint",
    "estimate_noise",
    "estimate_noise_curve",
    "noise_scale_from_norms",
    "baseline_training_steps",
]

FP16_INIT_LOSS_SCALE = 2.0**16  # as torch.amp.GradScaler; halved on overflow (fp16 on CUDA only)
FP16_MAX_BACKOFFS = 24  # halvings of the loss scale before a chunk's gradient is called non-finite

_MORE_DATA = "more batches (--batches) or a larger --batch-big"


@dataclass(frozen=True)
class NoiseEstimate:
    b_simple: float | None  # tr(Σ)/|G|² in samples; None when unreliable (see reason)
    ci_low: float | None  # bootstrap percentile interval over big batches; None: unbounded
    ci_high: float | None  # ... on that side, or no bootstrap
    g2: float  # the |G|² estimate (squared norm of the true gradient)
    trace_sigma: float  # the tr(Σ) estimate (per-sample gradient variance, summed)
    g_small_sq: float  # mean |G_small|² over all chunks
    g_big_sq: float  # mean |G_big|² over all big batches
    batch_small: int
    batch_big: int
    batches: int  # number of big batches used
    warm_steps: int  # baseline training steps taken before measuring
    unreliable: bool
    reason: str | None  # plain words when unreliable
    elapsed_s: float  # wall time of the whole estimate: warm-up, gradients, bootstrap
    step_equivalents: float  # (warm_steps·baseline_batch + batches·batch_big) / baseline_batch
    confidence: float = 0.9  # of the interval
    seed: int = 0
    dtype: str = "fp32"
    compile_s: float | None = None  # --compile: compiling for the baseline's and the small batch's shapes,
    # before the clock (not in elapsed_s)

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_noise(
    workload: Workload,
    device: torch.device,
    batch_small: int | None = None,
    batch_big: int | None = None,
    batches: int = 32,
    warm_steps: int = 0,
    seed: int = 0,
    confidence: float = 0.9,
    bootstrap: int = 1000,
    dtype: str = "fp32",
    compile: bool = False,
    on_progress: Callable[[str, float], None] = lambda phase, frac: None,
) -> NoiseEstimate:
    """Estimate B_simple for ``workload`` at the point reached after ``warm_steps`` baseline steps.

    ``on_progress(phase, fraction)`` is called with phase "warm-up", "gradients", then
    "bootstrap", each fraction going from 0 to 1.
    """
    device = torch.device(device)
    batch_small, batch_big = check_noise_args(
        workload, batch_small, batch_big, batches, warm_steps, confidence, bootstrap
    )
    devices.check_dtype(device, dtype)
    started = time.perf_counter()

    data = shuffled_on_device(workload, device, seed)
    model = None
    try:
        # warm-up: the baseline's own training steps, since the noise scale grows as the loss falls
        runner = StepRunner(workload, device, workload.baseline_batch_size, dtype, seed, data, compile=compile)
        compile_s = _compile(runner, workload, device, dtype, batch_small) if compile else None
        started += compile_s or 0.0  # the estimate's time leaves compiling out
        on_progress("warm-up", 0.0)
        for step in range(warm_steps):
            runner.step()
            on_progress("warm-up", (step + 1) / warm_steps)
        if warm_steps == 0:
            on_progress("warm-up", 1.0)
        model = runner.forward  # fresh from torch.manual_seed(seed), in train mode (compiled with --compile)
        del runner  # drops the optimizer and its state: no more updates from here on

        # gradients: one forward and backward per chunk, nothing else
        small_sq, big_sq = _gradient_norms(
            model, workload, device, data, batch_small, batch_big, batches, dtype, seed, on_progress
        )
    except Exception as exc:  # narrow: running out of memory is the user's to fix, anything else a bug
        if not devices.is_out_of_memory(exc):
            raise
        raise _out_of_memory(exc, "the noise scale", workload, device, batch_small) from None
    finally:
        del data, model
        devices.free_memory(device)

    return replace(
        _estimate_from_norms(
            workload,
            small_sq,
            big_sq,
            batch_small,
            batch_big,
            batches,
            warm_steps,
            started,
            confidence,
            bootstrap,
            seed,
            dtype,
            on_progress,
        ),
        compile_s=compile_s,
    )


def _out_of_memory(
    exc: BaseException, what: str, workload: Workload, device: torch.device, batch_small: int
) -> DeviceError:
    """Running out of memory estimating ``what``, as one line saying what to lower."""
    return DeviceError(
        f"out of memory on {device} estimating {what} ({type(exc).__name__}); it trains at the "
        f"baseline batch {workload.baseline_batch_size}, then runs forward and backward at "
        f"--batch-small {batch_small}: use a smaller --batch-small"
    )


@contextlib.contextmanager
def _optimizer_state_on_the_host(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The optimizer's state waits in host memory for the block, and comes back as it was: an estimate along a
    run holds on the device what one on its own does, not the optimizer's state beside its sums (Adam's is 8
    bytes a parameter)."""
    host = {
        param: {name: value.to("cpu") if isinstance(value, torch.Tensor) else value for name, value in state.items()}
        for param, state in optimizer.state.items()
    }
    where = {
        param: {name: value.device for name, value in state.items() if isinstance(value, torch.Tensor)}
        for param, state in optimizer.state.items()
    }
    optimizer.state.clear()  # the device's copies go: the caching allocator gives their memory to the estimate
    try:
        yield
    finally:
        for param, state in host.items():
            optimizer.state[param] = {
                name: value.to(where[param][name]) if name in where[param] else value for name, value in state.items()
            }


def _compile(runner: StepRunner, workload: Workload, device: torch.device, dtype: str, batch_small: int) -> float:
    """--compile: compile the runner's model for the shapes an estimate runs (the baseline's training
    steps, the small batch's gradients), before any clock; the seconds it took."""
    return compile_before_clock(runner.forward, workload, device, dtype, (workload.baseline_batch_size, batch_small))


@dataclass(frozen=True)
class NoiseCurvePoint:
    fraction: float  # of the baseline's training (its optimizer steps) done before estimating
    step: int  # baseline steps trained before estimating (the estimate's warm_steps)
    estimate: NoiseEstimate

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "step": self.step, **self.estimate.to_dict()}


def baseline_training_steps(workload: Workload) -> int:
    """Optimizer steps of the workload's baseline run: its epochs at the baseline batch."""
    return max(1, math.ceil(workload.epochs * (workload.n_train // workload.baseline_batch_size)))


def estimate_noise_curve(
    workload: Workload,
    device: torch.device,
    fractions: tuple[float, ...],
    batch_small: int | None = None,
    batch_big: int | None = None,
    batches: int = 32,
    seed: int = 0,
    confidence: float = 0.9,
    bootstrap: int = 1000,
    dtype: str = "fp32",
    compile: bool = False,
    on_point: Callable[[NoiseCurvePoint], None] = lambda point: None,
    on_progress: Callable[[str, float], None] = lambda phase, frac: None,
) -> list[NoiseCurvePoint]:
    """B_simple along one baseline trajectory: train the baseline (as the warm-up of :func:`estimate_noise`
    does) and pause at each fraction of its training steps to estimate the noise scale there.

    The estimates only read gradients (``torch.autograd.grad``), so the pauses leave the optimizer and
    the trajectory as they were. ``on_point`` gets each point as soon as it is estimated;
    ``on_progress(phase, fraction)`` the fraction of the whole curve done.
    """
    device = torch.device(device)
    fractions = check_curve_fractions(fractions)
    batch_small, batch_big = check_noise_args(workload, batch_small, batch_big, batches, 0, confidence, bootstrap)
    devices.check_dtype(device, dtype)
    total_steps = baseline_training_steps(workload)
    # the work, in baseline-step equivalents: training steps plus each point's gradients
    point_cost = batches * batch_big / workload.baseline_batch_size
    work = round(fractions[-1] * total_steps) + len(fractions) * point_cost

    points: list[NoiseCurvePoint] = []
    data = shuffled_on_device(workload, device, seed)
    runner = None
    try:
        # memory as estimate_noise's: running out of it is the user's to fix (a one-line error), anything else a bug
        runner = StepRunner(workload, device, workload.baseline_batch_size, dtype, seed, data, compile=compile)
        compile_s = _compile(runner, workload, device, dtype, batch_small) if compile else None
        step = 0
        for index, fraction in enumerate(fractions):
            started = time.perf_counter()
            # train: the baseline's own steps up to this point of its run
            target = round(fraction * total_steps)
            while step < target:
                runner.step()
                step += 1
                if step % 50 == 0:
                    on_progress(f"training to {fraction:g} of the baseline", (step + index * point_cost) / work)

            # estimate: gradients only, no update
            def progress(phase: str, frac: float, at=fraction, before=step + index * point_cost) -> None:
                on_progress(f"estimating at {at:g}: {phase}", (before + frac * point_cost) / work)

            # only the gradients' sums beside the model, as an estimate on its own holds: the last step's
            # gradients are dropped (the next step zeroes them first anyway), the optimizer's state waits on the host
            runner.optimizer.zero_grad(set_to_none=True)
            with _optimizer_state_on_the_host(runner.optimizer):
                small_sq, big_sq = _gradient_norms(
                    runner.forward, workload, device, data, batch_small, batch_big, batches, dtype, seed, progress
                )
            estimate = _estimate_from_norms(
                workload,
                small_sq,
                big_sq,
                batch_small,
                batch_big,
                batches,
                step,
                started,
                confidence,
                bootstrap,
                seed,
                dtype,
                progress,
            )
            if index == 0:  # the first point's estimate holds the compile time (the later ones reuse it)
                estimate = replace(estimate, compile_s=compile_s)
            point = NoiseCurvePoint(fraction=fraction, step=step, estimate=estimate)
            points.append(point)
            on_point(point)
    except Exception as exc:
        if not devices.is_out_of_memory(exc):
            raise
        raise _out_of_memory(exc, "the noise curve", workload, device, batch_small) from None
    finally:
        del data, runner
        devices.free_memory(device)
    return points


def _estimate_from_norms(
    workload: Workload,
    small_sq: np.ndarray,
    big_sq: np.ndarray,
    batch_small: int,
    batch_big: int,
    batches: int,
    warm_steps: int,
    started: float,
    confidence: float,
    bootstrap: int,
    seed: int,
    dtype: str,
    on_progress: Callable[[str, float], None],
) -> NoiseEstimate:
    """The estimate and its judgement from the per-big-batch squared norms (averages first, then the ratio)."""
    used = len(big_sq)
    g_small_sq, g_big_sq = float(np.mean(small_sq)), float(np.mean(big_sq))
    g2, trace_sigma = noise_scale_from_norms(g_small_sq, g_big_sq, batch_small, batch_big)

    on_progress("bootstrap", 0.0)
    ci_low, ci_high, g2_unsure, trace_unsure = _bootstrap(
        small_sq, big_sq, batch_small, batch_big, confidence, bootstrap, seed
    )
    on_progress("bootstrap", 1.0)

    reason = _unreliable_reason(used < batches, g2, trace_sigma, g2_unsure, trace_unsure, confidence)
    b_simple = None if reason else trace_sigma / g2
    baseline = workload.baseline_batch_size
    return NoiseEstimate(
        b_simple=b_simple,
        ci_low=ci_low,
        ci_high=ci_high,
        g2=g2,
        trace_sigma=trace_sigma,
        g_small_sq=g_small_sq,
        g_big_sq=g_big_sq,
        batch_small=batch_small,
        batch_big=batch_big,
        batches=used,
        warm_steps=warm_steps,
        unreliable=reason is not None,
        reason=reason,
        elapsed_s=time.perf_counter() - started,
        step_equivalents=(warm_steps * baseline + used * batch_big) / baseline,
        confidence=confidence,
        seed=seed,
        dtype=dtype,
    )


# -- arguments ---------------------------------------------------------------------------------


# -- gradients ---------------------------------------------------------------------------------


def _gradient_norms(
    model: torch.nn.Module,
    workload: Workload,
    device: torch.device,
    data: tuple[torch.Tensor, ...],
    batch_small: int,
    batch_big: int,
    batches: int,
    dtype: str,
    seed: int,
    on_progress: Callable[[str, float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Per big batch: the mean of its chunks' |g|² (a (K,) array) and |mean of chunk g|² (a (K,) array).

    Stops early, returning only the batches done, at the first non-finite gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    chunks = batch_big // batch_small
    big_batches = _big_batches(workload, device, data, batch_big, seed + 1)  # apart from the warm-up's order
    loss_scale = FP16_INIT_LOSS_SCALE if devices.needs_grad_scaler(device, dtype) else None
    # the sum of the chunks' gradients, per parameter in fp32: one more copy of the gradient (4 bytes a
    # parameter), never a float64 one; only the scalar norms are kept in float64
    big_sum = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    small_sq, big_sq = [], []
    on_progress("gradients", 0.0)
    for k in range(batches):
        big_batch = next(big_batches)
        torch._foreach_zero_(big_sum)
        chunk_sq = torch.zeros(chunks, dtype=torch.float64, device=device)
        for j in range(chunks):
            chunk = slice_batch(big_batch, j * batch_small, (j + 1) * batch_small)
            grads, loss_scale = _chunk_gradient(model, workload, device, dtype, params, chunk, loss_scale)
            chunk_sq[j] = _squared_norm(grads)
            torch._foreach_add_(big_sum, grads)
            del grads
        # sync: one read of the device per big batch; |mean of the chunks|² = |sum|² / chunks²
        mean_small, norm_big = float(chunk_sq.mean()), float(_squared_norm(big_sum)) / chunks**2
        small_sq.append(mean_small)
        big_sq.append(norm_big)
        on_progress("gradients", (k + 1) / batches)
        if not (math.isfinite(mean_small) and math.isfinite(norm_big)):
            break
    return np.asarray(small_sq, dtype=np.float64), np.asarray(big_sq, dtype=np.float64)


def _big_batches(
    workload: Workload, device: torch.device, data: tuple[torch.Tensor, ...] | None, batch_big: int, seed: int
) -> Iterator[Batch]:
    """Big batches on the device, without end: a fresh shuffle per epoch; a big batch never straddles two."""
    if workload.uses_dataset:
        order = EpochOrder(workload.n_train, batch_big, seed)
        loader = make_loader(workload, "train", device, sampler=order)
        while True:
            for batch in loader:
                yield to_device(batch, device, non_blocking=loader.pin_memory)
            order.set_epoch(order.epoch + 1)
    n = int(data[0].shape[0])
    generator = torch.Generator().manual_seed(seed)
    while True:
        permutation = torch.randperm(n, generator=generator).to(data[0].device)  # where the data is (see
        for lo in range(0, n // batch_big * batch_big, batch_big):  # shuffled_on_device)
            index = permutation[lo : lo + batch_big]
            yield to_device(tuple(t[index] for t in data), device, non_blocking=True)


def _chunk_gradient(
    model: torch.nn.Module,
    workload: Workload,
    device: torch.device,
    dtype: str,
    params: list[torch.nn.Parameter],
    chunk: Batch,
    loss_scale: float | None,
) -> tuple[list[torch.Tensor], float | None]:
    """The chunk's mean gradient, one fp32 tensor per parameter.

    fp16 on CUDA scales the loss so small gradients do not underflow, halving the scale and
    redoing the chunk on overflow, as torch.amp.GradScaler would; the scale is a power of two,
    so unscaling is exact.
    """
    for _ in range(FP16_MAX_BACKOFFS + 1):
        with devices.autocast(device, dtype):
            loss = workload.loss_of(model_output(model, chunk), chunk)
        scaled = loss if loss_scale is None else loss * loss_scale
        grads = [g.float() for g in torch.autograd.grad(scaled, params, allow_unused=True, materialize_grads=True)]
        if loss_scale is None:
            return grads, None
        if math.isfinite(float(_squared_norm(grads))):  # sync: the overflow check needs the values
            torch._foreach_div_(grads, loss_scale)
            return grads, loss_scale
        loss_scale /= 2
    return grads, loss_scale  # non-finite at every scale: the caller reports it


def _squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ|t|² over the tensors, as a float64 scalar on their device (inf or NaN if any value is).

    Each tensor's norm is reduced in float64 (an fp32 one would overflow for values above 2^64, which
    a loss-scaled gradient can hold); at most one tensor at a time is ever widened, never the model.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]).square().sum()


# -- judgement ---------------------------------------------------------------------------------


def _bootstrap(
    small_sq: np.ndarray,
    big_sq: np.ndarray,
    batch_small: int,
    batch_big: int,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float | None, float | None, bool, bool]:
    """Percentile interval for B_simple, resampling the big batches with replacement.

    A resample whose |G|² is not positive (but tr(Σ) is) stands for an unbounded noise scale;
    one whose tr(Σ) is not positive stands for a noise scale of zero. They stay in the sample,
    at +inf and 0, so the percentiles are honest; a bound that lands on one of them is None.
    Also says whether |G|² (resp. tr(Σ)) is not clearly positive: more than the interval's tail
    share of resamples at or below zero.
    """
    k = len(big_sq)
    if resamples == 0 or k < 2 or not (np.isfinite(small_sq).all() and np.isfinite(big_sq).all()):
        return None, None, False, False
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, k, size=(resamples, k))
    g2, trace_sigma = noise_scale_from_norms(
        small_sq[picks].mean(axis=1), big_sq[picks].mean(axis=1), batch_small, batch_big
    )
    values = np.full(resamples, np.nan)
    both = (g2 > 0) & (trace_sigma > 0)
    values[both] = trace_sigma[both] / g2[both]
    values[(g2 <= 0) & (trace_sigma > 0)] = np.inf
    values[(g2 > 0) & (trace_sigma <= 0)] = 0.0
    tail = (1 - confidence) / 2
    g2_unsure = float(np.mean(g2 <= 0)) > tail
    trace_unsure = float(np.mean(trace_sigma <= 0)) > tail
    defined = values[~np.isnan(values)]
    if len(defined) < (1 - tail) * resamples:  # both estimates at or below zero too often: no interval
        return None, None, g2_unsure, trace_unsure
    low, high = np.quantile(defined, [tail, 1 - tail], method="inverted_cdf")
    return _finite_positive(low), _finite_positive(high), g2_unsure, trace_unsure


def _finite_positive(value: float) -> float | None:
    return float(value) if np.isfinite(value) and value > 0 else None


def _unreliable_reason(
    stopped_early: bool, g2: float, trace_sigma: float, g2_unsure: bool, trace_unsure: bool, confidence: float
) -> str | None:
    if stopped_early or not (math.isfinite(g2) and math.isfinite(trace_sigma)):
        return (
            "the gradients are not finite (NaN or inf) at this point: check the model and loss, "
            "or use fewer --warm-steps if the warm-up diverged"
        )
    if g2 <= 0:
        return f"the |G|² estimate is not positive (noise hides the gradient): {_MORE_DATA}"
    if trace_sigma <= 0:
        return f"the tr(Σ) estimate is not positive (the big batch's gradient is no smaller): {_MORE_DATA}"
    if g2_unsure:
        return (
            f"the |G|² estimate is not clearly above zero (its {confidence:.0%} bootstrap interval "
            f"reaches zero, so the noise scale has no upper bound): {_MORE_DATA}"
        )
    if trace_unsure:
        return (
            f"the tr(Σ) estimate is not clearly above zero (its {confidence:.0%} bootstrap interval "
            f"reaches zero): {_MORE_DATA}"
        )
    return None
