"""The profiler on real (tiny) models: timing statistics, memory, FLOPs and every stopping rule."""

from __future__ import annotations

import pytest
import tiny_workload
import torch

from engine.measure.profiler import (
    ProfileConfig,
    ProfilePoint,
    fit_memory,
    plan_batch_sizes,
    run_profile,
    saturation_batch,
)

CPU = torch.device("cpu")
QUICK = dict(min_steps=4, min_seconds=0.0, warmup_steps=1)


@pytest.mark.slow
def test_explicit_list_measures_every_batch_with_raw_times_and_quartiles():
    workload = tiny_workload.make()
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 32, 128), **QUICK))
    assert [p.batch_size for p in result.points] == [8, 32, 128]
    assert result.stop_reason == "list"
    for p in result.points:
        assert p.status == "ok"
        assert p.n >= 4 and len(p.step_times_s) == p.n
        assert p.p25_s <= p.median_s <= p.p75_s
        assert abs(p.samples_per_s - p.batch_size / p.median_s) < 1e-6 * p.samples_per_s
        assert p.memory_is_estimate  # CPU has no allocator statistics: the estimate says so
    # FLOPs of a linear model grow exactly in proportion to the batch
    flops = {p.batch_size: p.flops_per_step for p in result.points}
    assert flops[32] == 4 * flops[8] and flops[128] == 4 * flops[32]
    # activations and the batch grow with B, parameters and optimizer state do not
    memory = [p.peak_memory_bytes for p in result.points]
    assert memory[0] < memory[1] < memory[2]
    assert result.memory_fit is not None and result.memory_fit.slope_bytes > 0
    assert result.saturation_batch in (8, 32, 128)


@pytest.mark.slow
def test_timed_steps_run_until_both_minimums_are_met():
    workload = tiny_workload.make()
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(16,), min_steps=3, min_seconds=0.3, warmup_steps=1))
    point = result.points[0]
    assert point.n >= 3 and sum(point.step_times_s) >= 0.3


@pytest.mark.slow
def test_out_of_memory_records_the_ceiling_and_stops_cleanly():
    workload = tiny_workload.make_oom(limit=64)
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(16, 32, 64, 128, 256), **QUICK))
    statuses = {p.batch_size: p.status for p in result.points}
    assert statuses == {16: "ok", 32: "ok", 64: "ok", 128: "oom"}  # 256 never tried
    assert result.stop_reason == "oom"
    oom = result.points[-1]
    assert "OutOfMemoryError" in oom.error and oom.n == 0
    assert result.saturation_batch in (16, 32, 64)


def test_a_model_error_becomes_an_error_point_not_a_crash():
    base = tiny_workload.make()

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 2)

        def forward(self, x):
            raise ValueError("shapes do not match")

    from engine import Workload

    workload = Workload(name="broken", model=Broken, train=base.train, val=base.val, loss=base.loss,
                        baseline_batch_size=8, baseline_lr=0.1)
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16), **QUICK))
    assert [(p.batch_size, p.status) for p in result.points] == [(8, "error")]
    assert "ValueError: shapes do not match" in result.points[0].error


@pytest.mark.slow
def test_memory_budget_stops_before_a_batch_predicted_over_it():
    workload = tiny_workload.make()
    first = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16), **QUICK))
    fit = first.memory_fit
    budget = int(fit.predict(64))  # 32 fits, 64 is exactly at the edge, 128 is predicted over
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16, 32, 128, 256),
                                                      memory_budget_bytes=budget, **QUICK))
    statuses = [(p.batch_size, p.status) for p in result.points]
    assert statuses[:3] == [(8, "ok"), (16, "ok"), (32, "ok")]
    assert statuses[3] == (128, "over_budget") and len(statuses) == 4
    assert result.points[3].predicted_memory_bytes > budget and result.points[3].n == 0
    assert result.stop_reason == "over_budget"


@pytest.mark.slow
def test_a_measured_peak_over_budget_is_flagged():
    workload = tiny_workload.make()
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16), memory_budget_bytes=1000, **QUICK))
    assert [(p.batch_size, p.status) for p in result.points] == [(8, "over_budget")]


@pytest.mark.slow
def test_the_sweep_stops_at_the_dataset_size():
    workload = tiny_workload.make(samples=256)
    result = run_profile(workload, CPU, ProfileConfig(min_batch=64, max_batch=4096, full=True, **QUICK))
    assert [p.batch_size for p in result.points] == [64, 128, 256]
    assert result.stop_reason == "dataset"


def test_powers_of_two_include_the_baseline_and_respect_bounds():
    workload = tiny_workload.make()  # baseline 32
    assert plan_batch_sizes(ProfileConfig(max_batch=256), workload) == [8, 16, 32, 64, 128, 256]
    assert plan_batch_sizes(ProfileConfig(min_batch=5, max_batch=40), workload) == [5, 10, 20, 32, 40]
    assert plan_batch_sizes(ProfileConfig(batch_sizes=(300, 7, 7)), workload) == [7, 300]


def _point(b, sps, mem=None):
    return ProfilePoint(batch_size=b, status="ok", median_s=b / sps, samples_per_s=sps, peak_memory_bytes=mem)


def test_saturation_is_the_smallest_batch_at_ninety_percent_of_the_best():
    points = [_point(32, 100), _point(64, 180), _point(128, 275), _point(256, 300), _point(512, 290)]
    assert saturation_batch(points) == 128  # 275 >= 0.9 * 300
    assert saturation_batch([]) is None
    assert saturation_batch([ProfilePoint(64, "oom")]) is None


def test_memory_fit_is_least_squares():
    fit = fit_memory([_point(10, 1, 1000 + 10 * 50), _point(20, 1, 1000 + 20 * 50), _point(40, 1, 1000 + 40 * 50)])
    assert abs(fit.slope_bytes - 50) < 1e-6 and abs(fit.intercept_bytes - 1000) < 1e-3
    assert fit.max_batch(1000 + 50 * 100) == 100
    assert fit_memory([_point(10, 1, 5)]) is None


def test_plateau_stops_a_power_of_two_sweep(monkeypatch):
    import engine.measure.profiler as profiler

    fake = iter([100.0, 150.0, 152.0, 153.0, 500.0])  # gains: 50%, 1.3%, 0.7% -> plateau after 3rd doubling

    def fake_measure(workload, device, batch_size, config, *args, **kwargs):
        sps = next(fake)
        return ProfilePoint(batch_size=batch_size, status="ok", median_s=batch_size / sps, samples_per_s=sps,
                            step_times_s=(batch_size / sps,))

    monkeypatch.setattr(profiler, "measure_point", fake_measure)
    workload = tiny_workload.make()
    result = run_profile(workload, CPU, ProfileConfig(min_batch=8, max_batch=1024, include_baseline=False))
    assert [p.batch_size for p in result.points] == [8, 16, 32, 64]
    assert result.stop_reason == "plateau"
    fake = iter([100.0, 150.0, 152.0, 153.0, 500.0])
    full = run_profile(workload, CPU, ProfileConfig(min_batch=8, max_batch=128, include_baseline=False, full=True))
    assert [p.batch_size for p in full.points] == [8, 16, 32, 64, 128]
