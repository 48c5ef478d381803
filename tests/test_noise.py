"""The gradient noise scale against its closed form on linear regression, and on the tiny workload."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tiny_workload
import torch
from torch.nn import functional as F

from largestep import Workload
from largestep.errors import UsageError
from largestep.measure import noise as noise_module
from largestep.measure.noise import estimate_noise, estimate_noise_curve, noise_scale_from_norms
from largestep.units import parse_fractions

CPU = torch.device("cpu")
D = 8  # input dimension of the linear regression
BATCH_SMALL = 16  # its baseline batch; the default big batch is 8x: 128


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: on a busy 2-core machine, handing each small op to a second thread costs
    more than the op (measured: 8x slower with 2 threads while other jobs run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- linear regression, where the noise scale has a closed form --------------------------------
#
# x ~ N(0, I_d), y = x·w* + ε, ε ~ N(0, σ²); model ŷ = x·w at w0; loss (ŷ − y)², mean over the batch.
# With r = w0 − w*, the residual is xᵀr − ε, so one sample's gradient is
#     g = 2x(xᵀr − ε)
#     G = E[g] = 2 E[x xᵀ] r = 2r                                     (ε independent of x, mean 0)
#     E[g gᵀ] = 4 (E[x xᵀ r rᵀ x xᵀ] + σ² E[x xᵀ])
#             = 4 (2 r rᵀ + |r|² I + σ² I)                             (Isserlis: E[x_i x_j x_k x_l])
#     Σ = E[g gᵀ] − G Gᵀ = 4 (r rᵀ + (|r|² + σ²) I)
#     tr(Σ) = 4 (|r|² (1 + d) + d σ²),   |G|² = 4 |r|²
#     B_simple = tr(Σ)/|G|² = ((1 + d)|r|² + d σ²) / |r|²
# Σ has eigenvalue 4(2|r|² + σ²) along r and 4(|r|² + σ²) on the other d − 1 directions.


def true_g2(r2: float) -> float:
    return 4 * r2


def true_trace(r2: float, sigma: float, d: int = D) -> float:
    return 4 * (r2 * (1 + d) + d * sigma**2)


def true_b_simple(r2: float, sigma: float, d: int = D) -> float:
    return true_trace(r2, sigma, d) / true_g2(r2)


def relative_standard_errors(
    r2: float, sigma: float, batches: int, b: int = BATCH_SMALL, m: int = 8, d: int = D
) -> dict[str, float]:
    """Rough relative standard errors of the estimates, treating each chunk's mean gradient as
    Gaussian, c_j ~ N(G, Σ/b), j = 1..m per big batch (the per-sample gradient is heavier-tailed,
    so the truth is somewhat larger; the tests allow 5 of these).

    Per big batch the estimator is T = b/(m−1) Σ_j |c_j − c̄|² (a sample variance, so
    Var T = 2 tr(Σ²)/(m−1)) and |G|²_est = |c̄|² − T/(bm), with c̄ ~ N(G, Σ/(bm)) independent of T:
    Var |c̄|² = 4 GᵀΣG/(bm) + 2 tr(Σ²)/(bm)²; Cov(T, |G|²_est) = −Var T/(bm). The ratio by the
    delta method; everything averages over the big batches.
    """
    sigma2 = sigma**2
    along, across = 4 * (2 * r2 + sigma2), 4 * (r2 + sigma2)
    tr_sigma2 = along**2 + (d - 1) * across**2
    g_sigma_g = true_g2(r2) * along  # G lies along r
    var_t = 2 * tr_sigma2 / (m - 1)
    var_g = 4 * g_sigma_g / (b * m) + 2 * tr_sigma2 / (b * m) ** 2 + var_t / (b * m) ** 2
    cov = -var_t / (b * m)
    t, g = true_trace(r2, sigma, d), true_g2(r2)
    rel_var_ratio = var_t / t**2 + var_g / g**2 - 2 * cov / (t * g)
    return {
        "trace": math.sqrt(var_t / batches) / t,
        "g2": math.sqrt(var_g / batches) / g,
        "b_simple": math.sqrt(rel_var_ratio / batches),
    }


def linear_regression(
    sigma: float = 1.0, r2: float = 1.0, samples: int = 200_000, d: int = D, seed: int = 0, lr: float = 0.02
) -> Workload:
    """Samples from the distribution above; the model starts exactly at w0 = w* + r, |r|² = r2."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=g)
    direction = torch.randn(d, generator=g)
    w0 = w_star + direction / direction.norm() * math.sqrt(r2)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=g)
        return x, x @ w_star + sigma * torch.randn(n, generator=g)

    def model() -> torch.nn.Module:
        linear = torch.nn.Linear(d, 1, bias=False)
        with torch.no_grad():
            linear.weight.copy_(w0)
        return linear

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.squeeze(-1), target)

    return Workload(
        name="linear-regression",
        model=model,
        train=draw(samples),
        val=draw(1000),
        loss=loss,
        baseline_batch_size=BATCH_SMALL,
        baseline_lr=lr,
        optimizer="sgd",
    )


@pytest.mark.slow
def test_matches_the_closed_form_at_the_known_point():
    # 500 big batches of 256 in chunks of 32 (128,000 of the 200,000 samples, one epoch: the
    # finite-population correction is ~1/n). Gaussian-approximation relative standard errors
    # (relative_standard_errors): B_simple 1.3%, |G|² 1.3%, tr(Σ) 0.9%; over 20 seeds (1000
    # batches of 128) the measured spread was 0.9-1.1x the formula's. So the estimates must
    # lie within 5 SEs of the truth, and the 99% bootstrap interval must be about ±2.58 SEs wide.
    # The finite sample itself: G from 200,000 samples is off by ~sqrt(λ/n) ≈ 0.008 per component of |G| = 2.
    batches, r2, sigma, small, big = 500, 1.0, 1.0, 32, 256
    se = relative_standard_errors(r2, sigma, batches, b=small, m=big // small)
    result = estimate_noise(
        linear_regression(sigma, r2), CPU, batch_small=small, batch_big=big, batches=batches, confidence=0.99
    )

    assert (result.batch_small, result.batch_big, result.batches) == (small, big, batches)
    assert not result.unreliable and result.reason is None
    # warm_steps=0 measures at w0 itself: |G|² = 4|r|², and E|G_B|² = |G|² + tr(Σ)/B at both sizes
    assert result.warm_steps == 0
    assert result.g2 == pytest.approx(true_g2(r2), rel=5 * se["g2"])
    assert result.trace_sigma == pytest.approx(true_trace(r2, sigma), rel=5 * se["trace"])
    assert result.g_small_sq == pytest.approx(true_g2(r2) + true_trace(r2, sigma) / small, rel=0.03)
    assert result.g_big_sq == pytest.approx(true_g2(r2) + true_trace(r2, sigma) / big, rel=0.03)
    # the ratio of the averaged estimates, not an average of ratios
    g2, trace = noise_scale_from_norms(result.g_small_sq, result.g_big_sq, small, big)
    assert (result.g2, result.trace_sigma) == pytest.approx((g2, trace), rel=1e-12)
    assert result.b_simple == pytest.approx(trace / g2, rel=1e-12)

    truth = true_b_simple(r2, sigma)  # 17
    assert result.b_simple == pytest.approx(truth, rel=5 * se["b_simple"])
    assert result.ci_low < result.b_simple < result.ci_high
    half_width = (result.ci_high - result.ci_low) / 2 / result.b_simple
    assert 0.6 * 2.58 * se["b_simple"] < half_width < 1.6 * 2.58 * se["b_simple"]
    # cost: 500 x 256 samples through forward and backward, in baseline steps of 16
    assert result.step_equivalents == batches * big / BATCH_SMALL


def test_the_bootstrap_interval_covers_the_truth_at_its_stated_level_on_each_side():
    """Calibration: 400 synthetic estimates of a known noise scale (per-sample gradients G + noise, |G|² = 1,
    tr(Σ) = 50, so B_simple = 50; 64 big batches of 8 chunks of 16). The 90% interval must miss the truth about
    5% of the time on each side: an interval with 10% in each tail (an 80% interval called 90%) misses about
    20% and fails, as does one built one-sided."""
    rng = np.random.default_rng(0)
    datasets, big_batches, chunks, dims, small, trace = 400, 64, 8, 50, 16, 50.0
    g = np.zeros(dims)
    g[0] = 1.0
    chunk_means = g + math.sqrt(trace / dims / small) * rng.standard_normal((datasets, big_batches, chunks, dims))
    small_sq = (chunk_means**2).sum(-1).mean(-1)  # [dataset, big batch]: mean |G_small|² of its chunks
    big_sq = (chunk_means.mean(2) ** 2).sum(-1)  # |G_big|² of the big batch
    below = above = 0
    for k in range(datasets):
        low, high, _, _ = noise_module._bootstrap(small_sq[k], big_sq[k], small, small * chunks, 0.9, 1000, k)
        below += low is None or trace < low
        above += high is None or trace > high
    assert below / datasets <= 0.08 and above / datasets <= 0.08, (below, above)
    assert 0.85 <= 1 - (below + above) / datasets <= 0.97, (below, above)


def test_warm_up_trains_the_baseline_first():
    # SGD at the baseline lr on loss |w − w*|² + σ² shrinks r quickly, so |G|² = 4|r|² falls
    result = estimate_noise(linear_regression(), CPU, batches=100, warm_steps=20)
    assert result.warm_steps == 20
    assert result.g2 < 0.5 * true_g2(1.0)
    assert result.step_equivalents == (20 * 16 + 100 * 128) / 16


@pytest.mark.slow
def test_grows_with_label_noise():
    batches = 200
    quiet = estimate_noise(linear_regression(sigma=0.5), CPU, batches=batches)
    loud = estimate_noise(linear_regression(sigma=3.0), CPU, batches=batches)
    # closed form: 11 and 81; the intervals must not even overlap
    assert quiet.b_simple < loud.b_simple
    assert quiet.ci_high < loud.ci_low
    for result, sigma in ((quiet, 0.5), (loud, 3.0)):
        se = relative_standard_errors(1.0, sigma, batches)["b_simple"]  # 2.6% and 5.1%
        assert result.b_simple == pytest.approx(true_b_simple(1.0, sigma), rel=5 * se)


@pytest.mark.slow
def test_pure_noise_is_flagged_never_negative():
    # At w0 = w* the true gradient is zero: B_simple is infinite and |G|² estimates scatter
    # around 0. With 4 big batches a seed should say "unreliable": either the point estimate of
    # |G|² is not positive (about half the seeds) or its 90% bootstrap interval reaches zero
    # (a one-sided 5% test, anti-conservative with 4 batches). Over 200 seeds 89.5% were
    # flagged; fewer than 6 flagged of 10 would happen by chance about 0.2% of the time.
    workload = linear_regression(r2=0.0, samples=20_000)
    flagged = 0
    for seed in range(10):
        result = estimate_noise(workload, CPU, batches=4, seed=seed)
        assert result.unreliable == (result.b_simple is None)
        if result.unreliable:
            flagged += 1
            assert "|G|²" in result.reason or "tr(Σ)" in result.reason
            assert "--batches" in result.reason and "\n" not in result.reason
            if "|G|²" in result.reason:  # a |G|² that may be zero leaves B_simple without an upper bound
                assert result.ci_high is None
        else:
            assert result.b_simple > 0 and math.isfinite(result.b_simple)
        assert result.ci_low is None or result.ci_low > 0
        assert result.ci_high is None or result.ci_high > 0
        if result.g2 <= 0:
            assert result.b_simple is None and "not positive" in result.reason
    assert flagged >= 6


def test_formula_recovers_g2_and_trace_from_exact_expectations():
    # E|G_B|² = |G|² + tr(Σ)/B exactly: the two-size estimator must invert it
    g2, trace = 3.0, 250.0
    assert noise_scale_from_norms(g2 + trace / 32, g2 + trace / 512, 32, 512) == pytest.approx((g2, trace))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(batch_small=16, batch_big=16), "larger than"),
        (dict(batch_small=32, batch_big=16), "larger than"),
        (dict(batch_small=16, batch_big=40), "multiple"),
        (dict(batches=1), "--batches"),
        (dict(batches=0), "--batches"),
        (dict(batch_small=0), "--batch-small"),
        (dict(batch_small=-16), "--batch-small"),
        (dict(batch_big=-128), "--batch-big"),
        (dict(batch_small=16, batch_big=1024), "training samples"),
        (dict(batch_small=1000), "training samples"),
        (dict(warm_steps=-1), "--warm-steps"),
        (dict(confidence=1.5), "confidence"),
    ],
)
def test_bad_arguments_raise_one_line_usage_errors(kwargs, words):
    workload = linear_regression(samples=1000)
    with pytest.raises(UsageError) as error:
        estimate_noise(workload, CPU, **kwargs)
    message = str(error.value)
    assert words in message and "\n" not in message


def test_default_big_batch_is_capped_by_the_dataset():
    # 8 x 16 = 128 would not fit in 100 samples: the largest multiple of 16 that does is 96
    result = estimate_noise(linear_regression(samples=100), CPU, batches=4, bootstrap=0)
    assert (result.batch_small, result.batch_big) == (16, 96)
    assert result.ci_low is None and result.ci_high is None  # no bootstrap, no interval


def test_loss_scaling_path_gives_the_same_gradients(monkeypatch):
    # The fp16-on-CUDA path scales the loss by a power of two and unscales the gradients, which
    # is exact; force it on CPU, starting at a scale that overflows fp32, so it must back off.
    workload = linear_regression(samples=20_000)
    plain = estimate_noise(workload, CPU, batches=8)
    monkeypatch.setattr(noise_module.devices, "needs_grad_scaler", lambda device, dtype: True)
    monkeypatch.setattr(noise_module, "FP16_INIT_LOSS_SCALE", 2.0**140)
    scaled = estimate_noise(workload, CPU, batches=8)
    assert (scaled.g_small_sq, scaled.g_big_sq) == pytest.approx((plain.g_small_sq, plain.g_big_sq), rel=1e-12)


def test_tiny_workload_end_to_end_with_warm_up_and_progress():
    workload = tiny_workload.make()
    seen: list[tuple[str, float]] = []
    result = estimate_noise(workload, CPU, warm_steps=5, on_progress=lambda phase, frac: seen.append((phase, frac)))
    assert (result.batch_small, result.batch_big, result.batches, result.warm_steps) == (32, 256, 32, 5)
    # seeded, so one answer: reliable, B_simple from the two averaged squared norms by McCandlish
    # et al.'s formulas, about 62 samples (measured with torch 2.13 on CPU; 5% leaves room for
    # another BLAS's rounding, not for a changed estimator)
    assert not result.unreliable and result.reason is None
    b_small, b_big = 32, 256
    g_sq = (b_big * result.g_big_sq - b_small * result.g_small_sq) / (b_big - b_small)
    trace = (result.g_small_sq - result.g_big_sq) / (1 / b_small - 1 / b_big)
    assert result.b_simple == pytest.approx(trace / g_sq, rel=1e-9)
    assert result.b_simple == pytest.approx(62.5, rel=0.05)
    assert result.ci_low < result.b_simple < result.ci_high
    # cost: samples through forward and backward (5 warm-up steps of 32, 32 big batches of 256),
    # in baseline steps of 32
    assert result.step_equivalents == (5 * 32 + 32 * 256) / 32
    assert result.elapsed_s > 0
    # progress: each phase in order, fractions rising to 1
    phases = [phase for phase, _ in seen]
    assert phases.index("warm-up") < phases.index("gradients") < phases.index("bootstrap")
    for phase in ("warm-up", "gradients", "bootstrap"):
        fractions = [frac for p, frac in seen if p == phase]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    # the record survives JSON
    assert json.loads(json.dumps(result.to_dict()))["batch_big"] == 256


def test_non_finite_gradients_are_reported_not_raised():
    base = tiny_workload.make()

    def nan_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target) * float("nan")

    workload = Workload(
        name="nan",
        model=base.model,
        train=base.train,
        val=base.val,
        loss=nan_loss,
        baseline_batch_size=32,
        baseline_lr=1e-2,
    )
    result = estimate_noise(workload, CPU, batches=4)
    assert result.unreliable and result.b_simple is None and "not finite" in result.reason
    assert result.batches == 1  # stopped at the first bad batch


# -- on a GPU: memory ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_float64_copy_of_the_gradient_is_ever_made():
    """A 1B-parameter model cannot afford 8 bytes a parameter more: only scalar norms are float64."""
    from torch.overrides import TorchFunctionMode

    largest_float64 = [0]

    class Float64Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for value in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                    largest_float64[0] = max(largest_float64[0], value.numel())
            return out

    workload = tiny_workload.make()
    n_params = sum(p.numel() for p in workload.model().parameters())  # 610
    with Float64Watch():
        result = estimate_noise(workload, CPU, batches=4, bootstrap=0)
    assert result.g_small_sq > result.g_big_sq > 0
    assert largest_float64[0] <= result.batch_big // result.batch_small < n_params  # the chunks' norms at most


@pytest.mark.slow
def test_running_out_of_gpu_memory_is_a_one_line_error_saying_what_to_lower(monkeypatch):
    from fake_nvml import FakeAllocator, cuda_on_cpu, cuda_properties, install_fake_cuda

    from largestep.errors import DeviceError

    gpu = install_fake_cuda(monkeypatch, [cuda_properties("6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")])
    with cuda_on_cpu(gpu, FakeAllocator(oom_above=16)), pytest.raises(DeviceError) as error:
        estimate_noise(tiny_workload.make(), torch.device("cuda:0"), batches=2, bootstrap=0)
    message = str(error.value)
    assert "out of memory" in message and "use a smaller --batch-small" in message and "\n" not in message


# -- the noise scale along training --------------------------------------------------------------


def short_regression() -> Workload:
    """The linear regression above with 4,000 samples: 250 baseline steps an epoch, 2,500 a run."""
    return linear_regression(samples=4000)


def test_curve_rises_as_the_baseline_trains_and_pausing_leaves_the_trajectory_alone():
    workload = short_regression()
    seen = []
    points = estimate_noise_curve(
        workload, CPU, (0.0, 0.004, 0.02), batch_big=64, batches=16, bootstrap=0, on_point=seen.append
    )
    assert [p.fraction for p in points] == [0.0, 0.004, 0.02]
    assert [p.step for p in points] == [0, 10, 50] == [p.estimate.warm_steps for p in points]
    assert seen == points  # each point is handed over as soon as it is estimated
    # SGD shrinks |w − w*| quickly, so |G|² falls while tr(Σ) stays about σ²-driven: B_simple rises
    values = [p.estimate.b_simple for p in points]
    assert values[0] < values[1] < values[2] and values[2] > 4 * values[0]
    # the estimates read gradients only: the point at step 50 is what one estimate after 50 steps gives
    alone = estimate_noise(workload, CPU, batch_big=64, batches=16, bootstrap=0, warm_steps=50)
    assert points[-1].estimate.b_simple == pytest.approx(alone.b_simple, rel=1e-9)


@pytest.mark.parametrize(
    "at, words",
    [
        ((0.5,), "two fractions"),
        ((0.0, 1.5), "at most 1"),
        ((-0.1, 0.5), "at least 0"),
        ((0.0, float("nan")), "finite"),
    ],
)
def test_curve_refuses_bad_fractions(at, words):
    with pytest.raises(UsageError, match=words):
        estimate_noise_curve(short_regression(), CPU, at, batches=4)


def test_parse_fractions_says_how_to_fix_the_input():
    assert parse_fractions("1, 0,0.25,0.5,0.25") == (0.0, 0.25, 0.5, 1.0)
    for text, words in (("", "empty"), ("0,half", "'half'"), ("0,2", "between 0 and 1"), ("nan", "between 0 and 1")):
        with pytest.raises(UsageError, match=words):
            parse_fractions(text)


@pytest.mark.slow
def test_the_curve_running_out_of_gpu_memory_is_the_same_one_line_error(monkeypatch):
    from fake_nvml import FakeAllocator, cuda_on_cpu, cuda_properties, install_fake_cuda

    from largestep.errors import DeviceError

    gpu = install_fake_cuda(monkeypatch, [cuda_properties("6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")])
    with cuda_on_cpu(gpu, FakeAllocator(oom_above=16)), pytest.raises(DeviceError) as error:
        estimate_noise_curve(tiny_workload.make(), torch.device("cuda:0"), (0.0, 1.0), batches=2, bootstrap=0)
    message = str(error.value)
    assert "out of memory" in message and "use a smaller --batch-small" in message and "\n" not in message


@pytest.mark.slow
def test_the_curve_estimates_holding_no_optimizer_state_or_gradients_beside_its_sums(monkeypatch):
    """On a GPU an estimate along the curve holds what one on its own does (the parameters, the sum of the chunks'
    gradients and one chunk's): the optimizer's state (Adam: 8 bytes a parameter) waits on the host meanwhile, and
    the last step's gradients are gone. Training then goes on from the same state (see the test above)."""
    from fake_nvml import FakeAllocator, cuda_on_cpu, cuda_properties, install_fake_cuda

    from largestep.measure import noise

    gpu = install_fake_cuda(monkeypatch, [cuda_properties("6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f")])
    runners, held = [], []

    class Runner(noise.StepRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    real_norms = noise._gradient_norms

    def gradient_norms(model, *args, **kwargs):
        [runner] = runners
        held.append(
            {
                "optimizer state": sum(len(s) for s in runner.optimizer.state.values()),
                "gradients": sum(p.grad is not None for p in model.parameters()),
            }
        )
        return real_norms(model, *args, **kwargs)

    monkeypatch.setattr(noise, "StepRunner", Runner)
    monkeypatch.setattr(noise, "_gradient_norms", gradient_norms)
    workload = tiny_workload.make()  # Adam
    with cuda_on_cpu(gpu, FakeAllocator(fixed_bytes=0, bytes_per_sample=0)):
        points = estimate_noise_curve(workload, torch.device("cuda:0"), (0.0, 0.1), batches=2, bootstrap=0)
    assert [p.step for p in points] == [0, 19] and len(held) == 2
    assert held == [{"optimizer state": 0, "gradients": 0}] * 2
