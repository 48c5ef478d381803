"""The profiler on real (tiny) models: timing statistics, memory, FLOPs and every stopping rule."""

from __future__ import annotations

import os
import time

import pytest
import tiny_workload
import torch
from helpers import clocked

from largestep.measure.profiler import (
    FlopCounts,
    ProfileConfig,
    ProfilePoint,
    StepRunner,
    Trainee,
    fit_memory,
    measure_point,
    physics_problems,
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
        # throughput follows the step time, the profile's estimate (its fastest step by default), not the median
        assert p.estimate_s == min(p.step_times_s) <= p.median_s
        assert abs(p.samples_per_s - p.batch_size / p.estimate_s) < 1e-6 * p.samples_per_s
        assert p.memory_is_estimate  # CPU has no allocator statistics: the estimate says so
    # FLOPs of a linear model grow exactly in proportion to the batch
    flops = {p.batch_size: p.flops_per_step for p in result.points}
    assert flops[32] == 4 * flops[8] and flops[128] == 4 * flops[32]
    # activations and the batch grow with B, parameters and optimizer state do not
    memory = [p.peak_memory_bytes for p in result.points]
    assert memory[0] < memory[1] < memory[2]
    assert result.memory_fit is not None and result.memory_fit.slope_bytes > 0
    assert result.saturation_batch in (8, 32, 128) or _all_noisy(result)


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
    assert result.saturation_batch in (16, 32, 64) or _all_noisy(result)


def test_a_model_error_becomes_an_error_point_not_a_crash():
    base = tiny_workload.make()

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 2)

        def forward(self, x):
            raise ValueError("shapes do not match")

    from largestep import Workload

    workload = Workload(
        name="broken",
        model=Broken,
        train=base.train,
        val=base.val,
        loss=base.loss,
        baseline_batch_size=8,
        baseline_lr=0.1,
    )
    result = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16), **QUICK))
    assert [(p.batch_size, p.status) for p in result.points] == [(8, "error")]
    assert "ValueError: shapes do not match" in result.points[0].error


@pytest.mark.slow
def test_memory_budget_stops_before_a_batch_predicted_over_it():
    workload = tiny_workload.make()
    first = run_profile(workload, CPU, ProfileConfig(batch_sizes=(8, 16), **QUICK))
    fit = first.memory_fit
    budget = int(fit.predict(64))  # 32 fits, 64 is exactly at the edge, 128 is predicted over
    result = run_profile(
        workload, CPU, ProfileConfig(batch_sizes=(8, 16, 32, 128, 256), memory_budget_bytes=budget, **QUICK)
    )
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


def _all_noisy(result) -> bool:
    """Every measured point noisy (a busy machine): then no point is the saturation batch, and there is none."""
    return result.saturation_batch is None and all(p.noisy for p in result.points if p.status == "ok")


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


def fake_visits(monkeypatch, step_time_s, others_busy_cores=lambda _b, _visit: None) -> list[int]:
    """Replace one visit to a batch size (measure_point) with ``step_time_s(batch_size, visit number)``
    seconds a step, as many steps as the visit asks for, while other processes keep
    ``others_busy_cores(batch_size, visit number)`` cores busy; returns the batch sizes in the order visited."""
    import largestep.measure.profiler as profiler

    visited: list[int] = []

    def fake_measure(workload, device, batch_size, config, *args, **kwargs):
        visited.append(batch_size)
        visit = visited.count(batch_size)
        step = step_time_s(batch_size, visit)
        now = time.time()
        point = ProfilePoint(
            batch_size=batch_size,
            status="ok",
            peak_memory_bytes=1000 + batch_size,
            started_at=now,
            ended_at=now,
            others_busy_cores=others_busy_cores(batch_size, visit),
        )
        return profiler._with_statistics(point, [step * (1 + 0.01 * k) for k in range(config.min_steps)], config)

    monkeypatch.setattr(profiler, "measure_point", fake_measure)
    return visited


def test_plateau_stops_a_power_of_two_sweep(monkeypatch):
    samples_per_s = {8: 100.0, 16: 150.0, 32: 152.0, 64: 153.0, 128: 500.0}  # gains 50%, 1.3%, 0.7%: a plateau
    fake_visits(monkeypatch, lambda b, _visit: b / samples_per_s[b])
    workload = tiny_workload.make()
    result = run_profile(workload, CPU, ProfileConfig(min_batch=8, max_batch=1024, include_baseline=False))
    assert [p.batch_size for p in result.points] == [8, 16, 32, 64]
    assert result.stop_reason == "plateau"
    full = run_profile(workload, CPU, ProfileConfig(min_batch=8, max_batch=128, include_baseline=False, full=True))
    assert [p.batch_size for p in full.points] == [8, 16, 32, 64, 128]


def test_rounds_visit_every_batch_size_in_a_shuffled_order_until_each_has_its_steps(monkeypatch):
    visited = fake_visits(monkeypatch, lambda b, _visit: 0.001 * (1 + b / 64))
    config = ProfileConfig(batch_sizes=(8, 16, 32, 64), min_steps=9, min_seconds=0.0, rounds=3)
    result = run_profile(tiny_workload.make(), CPU, config)
    first_pass, rounds = visited[:4], [visited[4:8], visited[8:12]]
    assert first_pass == [8, 16, 32, 64] and len(visited) == 12  # the range (the first visits), two rounds more
    assert all(sorted(r) == [8, 16, 32, 64] for r in rounds)  # every size in every round ...
    assert len({tuple(r) for r in rounds} | {tuple(first_pass)}) > 1  # ... not always in the same order
    for point in result.points:  # three visits of 3 steps: the first pass's and the rounds'
        assert (point.visits, point.n, point.inconsistent) == (3, 9, False)
    assert result.inconsistency is None


def test_contiguous_measures_each_size_once_in_one_block(monkeypatch):
    visited = fake_visits(monkeypatch, lambda b, _visit: 0.001 * (1 + b / 64))
    result = run_profile(
        tiny_workload.make(), CPU, ProfileConfig(batch_sizes=(8, 16, 32), min_steps=9, min_seconds=0.0, rounds=1)
    )
    assert visited == [8, 16, 32] and [p.n for p in result.points] == [9, 9, 9]


def test_a_point_slowed_by_background_load_is_measured_again_and_the_profile_holds(monkeypatch):
    # batch 32 is slowed on its first visits of the rounds (another job was running), then the machine is quiet
    visited = fake_visits(monkeypatch, lambda b, visit: 0.001 * (1 + b / 64) * (5 if b == 32 and visit <= 3 else 1))
    result = run_profile(
        tiny_workload.make(),
        CPU,
        ProfileConfig(batch_sizes=(8, 16, 32, 64, 128), min_steps=6, min_seconds=0.0, rounds=3),
    )
    points = {p.batch_size: p for p in result.points}
    assert visited.count(32) == 1 + 2 + 3  # the first pass, two rounds more, one re-measure's rounds
    assert points[32].remeasured == 1 and points[32].median_s < points[64].median_s
    assert result.inconsistency is None and not any(p.inconsistent for p in result.points)


# more than any machine's spare cores: every core is busy with other processes
CONTENDED = float(os.cpu_count() or 1) + 1.0


def test_visits_other_processes_contended_are_set_aside_and_the_size_visited_again(monkeypatch):
    # another job takes the cores during batch 32's first two visits of the rounds, and slows them fivefold
    def loaded(b, visit):
        return b == 32 and visit in (2, 3)

    visited = fake_visits(
        monkeypatch,
        lambda b, visit: 0.001 * (1 + b / 64) * (5 if loaded(b, visit) else 1),
        lambda b, visit: CONTENDED if loaded(b, visit) else 0.0,
    )
    result = run_profile(
        tiny_workload.make(), CPU, ProfileConfig(batch_sizes=(8, 16, 32, 64), min_steps=6, min_seconds=0.0, rounds=3)
    )
    points = {p.batch_size: p for p in result.points}
    assert visited.count(32) == 3 + 2 and visited.count(16) == 3  # two more visits, for 32 alone
    slow = points[32]
    assert (slow.visits, slow.loaded_visits, slow.under_load, slow.remeasured) == (3, 2, False, 0)
    assert slow.median_s == pytest.approx(0.0015, rel=0.05)  # the uncontended visits' time, not five times it
    assert slow.others_busy_cores == 0.0
    assert result.inconsistency is None


def test_a_size_never_uncontended_is_measured_from_all_its_visits_and_flagged_under_load(monkeypatch):
    from largestep.jobs.follow import describe_profile_event
    from largestep.measure.profiler import QUIET_PATIENCE

    visited = fake_visits(
        monkeypatch, lambda b, _visit: 0.001 * (1 + b / 64), lambda b, _visit: CONTENDED if b == 16 else 0.0
    )
    result = run_profile(
        tiny_workload.make(), CPU, ProfileConfig(batch_sizes=(8, 16, 32), min_steps=6, min_seconds=0.0, rounds=3)
    )
    points = {p.batch_size: p for p in result.points}
    assert visited.count(16) == QUIET_PATIENCE * 3 and visited.count(8) == 3  # patience, then all of them
    assert points[16].under_load and points[16].visits == QUIET_PATIENCE * 3
    assert points[16].others_busy_cores == pytest.approx(CONTENDED)
    assert not points[8].under_load and points[8].loaded_visits == 0
    line = describe_profile_event({"type": "point", **points[16].to_dict()})
    assert line.endswith("measured under load (other processes took the cores it needs)")


def test_a_profile_that_stays_inconsistent_is_flagged_with_the_reason(monkeypatch):
    # batch 16 is always slower than 32 (the issue's 514 ms at 16, 331 ms at 32): it cannot be the hardware
    fake_visits(monkeypatch, lambda b, _visit: {8: 0.30, 16: 0.514, 32: 0.331, 64: 0.40}[b])
    result = run_profile(
        tiny_workload.make(),
        CPU,
        ProfileConfig(batch_sizes=(8, 16, 32, 64), min_steps=3, min_seconds=0.0, rounds=3, remeasure=2),
    )
    points = {p.batch_size: p for p in result.points}
    # 16 is slower than 32 and than 64 too (four times the batch in less time): any two sizes are compared
    assert [b for b, p in points.items() if p.inconsistent] == [16, 32, 64]
    assert points[16].remeasured == 2
    assert result.inconsistency.startswith(
        "throughput rises 3.11x from batch 16 to 32, more than the batch (2x): "
        "the step time falls from 514 ms to 331 ms"
    )
    assert "after 2 re-measures" in result.inconsistency


def _measured(times_ms: dict[int, float], spread: float = 0.05) -> list[ProfilePoint]:
    return [
        ProfilePoint(b, "ok", median_s=t / 1e3, p25_s=t / 1e3 * (1 - spread), p75_s=t / 1e3 * (1 + spread))
        for b, t in times_ms.items()
    ]


def test_the_physics_check_names_what_cannot_be_the_hardware():
    # the profile from the issue: measured in one contiguous block each while other processes came and went
    issue = _measured({16: 514, 32: 331, 64: 120, 128: 455, 256: 239, 512: 384, 1024: 720})
    problems = dict(physics_problems(issue))
    assert set(problems) == {16, 32, 64, 128, 256, 512}  # 512 is faster than 128 at four times the batch
    assert problems[16] == (
        "throughput rises 3.11x from batch 16 to 32, more than the batch (2x): the step time "
        "falls from 514 ms to 331 ms, beyond the machine's quiet spread of 10%"
    )
    # a real curve: flat while the device is underused, then growing; noisy points whose quartiles overlap
    real = _measured({16: 10.0, 32: 10.4, 64: 9.9, 128: 14.0, 256: 26.0, 512: 51.0}, spread=0.08)
    assert physics_problems(real) == []
    # a point far above its neighbours' trend, though nothing falls
    spike = _measured({64: 10.0, 128: 40.0, 256: 41.0})
    assert [b for b, _ in physics_problems(spike)] == [128]


def test_a_profiled_step_clips_gradients_as_training_does(monkeypatch):
    import dataclasses

    from largestep.measure.profiler import StepRunner

    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda params, norm: clipped.append(norm) or real(params, norm)
    )
    workload = tiny_workload.make()
    StepRunner(workload, CPU, 32).step()
    assert clipped == []  # no max_grad_norm: no clipping, as in training
    StepRunner(dataclasses.replace(workload, max_grad_norm=0.5), CPU, 32).step()
    assert clipped == [0.5]  # its cost is part of the step the profile times


# -- warm-up: untimed steps until the steady state ------------------------------------------------------------


def proportional_counts(workload) -> FlopCounts:
    """FLOP counts at two small sizes that prove the workload's FLOPs proportional to the batch, so that a
    larger size's first step counts none and is a step like the others, timed for the warm-up to compare."""
    return FlopCounts({b: StepRunner(workload, CPU, b).first_step()[0] for b in (2, 4)})


STEADY = lambda _b, _k: 0.010  # noqa: E731  every step alike
SETTLING = lambda _b, k: {1: 0.030, 2: 0.020}.get(k, 0.010)  # noqa: E731  two slow steps, then the steady state


@pytest.mark.parametrize(
    "step_s, warmup_steps, untimed",
    [
        # the first step (under instruments) and one that agrees with it: the steady state; that one is timed
        (STEADY, 3, 1),
        (SETTLING, 3, 3),  # still settling: the full warm-up, none of it timed
        (SETTLING, 6, 2),  # 30, 20, 10, 10 ms: ends at the step that agrees with the one before it, both timed
        (STEADY, 1, 1),  # --warmup-steps 1 and 0: the first step only, as before
        (STEADY, 0, 1),
        # 13, 10, 13 ms: the third is slower than the second, noise that more warm-up would not remove
        (lambda _b, k: 0.010 * (1 + 0.3 * (k % 2)), 5, 1),
        (lambda _b, k: 0.010 * 0.8 ** min(k, 6), 5, 5),  # 20% faster every step: settling to the last one allowed
    ],
)
def test_warm_up_ends_at_the_first_step_not_faster_than_the_one_before(monkeypatch, step_s, warmup_steps, untimed):
    workload, clock = clocked(monkeypatch, step_s, tiny_workload.make())
    config = ProfileConfig(min_steps=3, min_seconds=0.0, warmup_steps=warmup_steps)
    point = measure_point(
        workload,
        CPU,
        64,
        config,
        telemetry_tag=clock.tag,
        flop_counts=proportional_counts(workload),
        trainee=Trainee.build(workload, CPU),
    )  # a model of its own would be collected: slower
    assert point.status == "ok" and point.warmup_steps == untimed
    # every step after the first is either untimed warm-up or one of the point's timed steps, and the
    # steady warm-up steps count towards --min-steps
    assert clock.steps[64] == untimed + point.n and point.n == 3
    assert clock.untimed == [1]  # on the CPU the clock (the load window) starts after the instrumented step
    assert point.median_s == pytest.approx(step_s(64, 100))  # the timed steps: the steady state


def test_a_step_counting_flops_is_not_compared_with_the_next(monkeypatch):
    # the first step runs under FlopCounterMode (no counts to scale from): its time says nothing, so two
    # plain steps are compared after it
    workload, clock = clocked(monkeypatch, STEADY, tiny_workload.make())
    point = measure_point(
        workload,
        CPU,
        64,
        ProfileConfig(min_steps=3, min_seconds=0.0),
        telemetry_tag=clock.tag,
        trainee=Trainee.build(workload, CPU),
    )
    assert point.status == "ok" and point.flops_per_step and point.warmup_steps == 1
    # the two plain steps agreed: both steady, the first two of the three timed steps
    assert clock.steps[64] == 1 + 3 and point.n == 3


@pytest.mark.slow
def test_a_sweep_counts_flops_at_two_sizes_and_scales_them_when_proportional(monkeypatch):
    import largestep.measure.profiler as profiler
    from largestep import Workload

    counts = []

    class Counting(profiler.FlopCounterMode):
        def __exit__(self, *exc):
            counts.append(self.get_total_flops())
            return super().__exit__(*exc)

    monkeypatch.setattr(profiler, "FlopCounterMode", Counting)
    config = ProfileConfig(batch_sizes=(8, 16, 32, 64), **QUICK)
    linear = tiny_workload.make()
    result = run_profile(linear, CPU, config)
    assert len(counts) == 2  # 8 and 16, the same FLOPs a sample: 32 and 64 take theirs scaled
    counted = {b: StepRunner(linear, CPU, b).first_step()[0] for b in (8, 16, 32, 64)}
    assert {p.batch_size: p.flops_per_step for p in result.points} == counted  # exactly what counting finds

    class FixedCost(torch.nn.Module):  # a term that does not grow with the batch: FLOPs not proportional
        def __init__(self):
            super().__init__()
            self.mlp, self.table = linear.model(), torch.nn.Parameter(torch.randn(64, 64))

        def forward(self, x):
            return self.mlp(x) + (self.table @ self.table).mean()

    fixed = Workload(
        name="fixed-cost",
        model=FixedCost,
        train=linear.train,
        val=linear.val,
        loss=linear.loss,
        baseline_batch_size=32,
        baseline_lr=1e-2,
    )
    counts.clear()
    result = run_profile(fixed, CPU, config)
    assert len(counts) == 4  # every size counted
    counted = {b: StepRunner(fixed, CPU, b).first_step()[0] for b in (8, 16, 32, 64)}
    assert {p.batch_size: p.flops_per_step for p in result.points} == counted


def test_a_datasets_warm_up_steps_through_its_loader_and_sizes_the_blocks(monkeypatch):
    import model_workloads

    # every step reads its batch through the workload's DataLoader, the warm-up's as the timed ones
    step_s = 2**-7  # 7.8 ms, exact in binary as the clock's sums are
    workload, clock = clocked(monkeypatch, lambda _b, _k: step_s, model_workloads.make_tuples())
    point = measure_point(
        workload,
        CPU,
        64,
        ProfileConfig(min_steps=3, min_seconds=0.0),
        telemetry_tag=clock.tag,
        trainee=Trainee.build(workload, CPU),
    )
    assert point.status == "ok" and clock.untimed == [3]  # the FLOP-counting step and two that agree
    # each round a block through the loader and one without, 50 ms of steps (7 steps), sized from the warm-up
    assert clock.steps[64] - 3 == 2 * 7 * len(point.step_times_s)
    assert point.median_s == pytest.approx(step_s) and point.compute_median_s == pytest.approx(step_s)
