"""A profile that cannot be trusted never reaches a user as if it could (issue 23).

The profile the issue reports, replayed: fraud-mlp measured while another process kept about one of the
machine's two cores busy, so that a step took about 1 ms, or a whole scheduler slice (100 to 180 ms) when
one of torch's threads lost its core. Its medians land on either mode; its fastest steps are the hardware.
"""

from __future__ import annotations

import json
import time

import pytest
import tiny_workload
import torch
from helpers import open_page, run_cli, spool_job

from largestep import curve, store
from largestep.errors import UnusableProfile
from largestep.measure import profiler
from largestep.measure.profiler import ProfileConfig, ProfilePoint, run_profile

CPU = torch.device("cpu")

# issue 23's table: batch -> (median, fastest step, slowest step), in ms; every point stored under load
ISSUE_TABLE = {32: (0.93, 0.87, 125), 64: (2.07, 0.96, 129), 128: (9.46, 1.05, 124), 256: (2.07, 1.21, 183),
               512: (9.75, 1.41, 160), 1024: (2.52, 1.98, 164), 2048: (8.06, 3.23, 163), 4096: (14.9, 6.34, 167)}
OTHERS_BUSY = (0.93, 1.18)      # cores other processes kept busy, as the issue's profile stored
CYCLE = 20                      # steps in one pass of a size's script


def bimodal_steps(median_ms: float, fastest_ms: float, slowest_ms: float) -> list[float]:
    """Twenty step times (seconds) in timed order whose median, minimum and maximum are the table's: nine in
    the fast mode, nine a scheduler slice long, two at the median between them, the modes interleaved."""
    fast = [fastest_ms + (min(median_ms, fastest_ms * 1.05) - fastest_ms) * k / 9 for k in range(9)]
    slow = [100 + (slowest_ms - 100) * k / 8 for k in range(9)]
    steps = [t for pair in zip(fast, slow) for t in pair] + [median_ms, median_ms]
    return [t / 1e3 for t in steps]


def replay_issue_profile(monkeypatch) -> profiler.ProfileResult:
    """The sweep, its rounds and its physics check as the profiler runs them, each visit's steps taken in turn
    from its size's script and every visit contended (other processes kept about a core busy)."""
    taken: dict[int, int] = {}
    load = iter(x for _ in range(10_000) for x in OTHERS_BUSY)

    def visit(workload, device, batch_size, config, *args, **kwargs):
        script = bimodal_steps(*ISSUE_TABLE[batch_size])
        start = taken.get(batch_size, 0)
        taken[batch_size] = start + config.min_steps
        times = [script[(start + k) % CYCLE] for k in range(config.min_steps)]
        point = ProfilePoint(batch_size=batch_size, status="ok", peak_memory_bytes=2**20 + batch_size,
                             started_at=time.time(), ended_at=time.time(), others_busy_cores=next(load))
        return profiler._with_statistics(point, times, config)

    monkeypatch.setattr(profiler, "measure_point", visit)
    # torch's threads fill the machine's cores (the issue's two on two): no spare core for the others' load
    config = ProfileConfig(batch_sizes=tuple(ISSUE_TABLE), min_steps=CYCLE, min_seconds=0.0, rounds=2,
                           threads=torch.get_num_threads())
    monkeypatch.setattr(profiler.os, "cpu_count", lambda: torch.get_num_threads())
    return run_profile(tiny_workload.make(samples=8192), CPU, config)


def test_the_issue_profile_is_replayed_as_stored(monkeypatch):
    result = replay_issue_profile(monkeypatch)
    points = {p.batch_size: p for p in result.points}
    assert list(points) == list(ISSUE_TABLE)
    for b, (median, fastest, slowest) in ISSUE_TABLE.items():
        p = points[b]
        assert p.under_load and p.noisy
        assert p.median_s * 1e3 == pytest.approx(median) and min(p.step_times_s) * 1e3 == pytest.approx(fastest)
        assert max(p.step_times_s) * 1e3 == pytest.approx(slowest)


def test_the_physics_check_flags_the_issue_profile_where_quartiles_could_not(monkeypatch):
    result = replay_issue_profile(monkeypatch)
    points = {p.batch_size: p for p in result.points}
    # the old check, quartiles wholly below another's, could never fire on quartiles this wide
    assert not any(large.p75_s < small.p25_s for small in result.points for large in result.points
                   if large.batch_size > small.batch_size)
    problems = dict(curve.physics_problems(result.points))
    # the median at 256 is a fifth of that at 128: throughput 9.1x for twice the batch
    assert 128 in problems and 256 in problems
    assert problems[128].startswith("median throughput rises 9.14x from batch 128 to 256, more than the batch (2x)")
    assert result.inconsistency is not None and points[128].inconsistent and points[256].inconsistent
    # the quiet spread is the check's tolerance: no point was quiet, so it stays at its floor, never the loaded
    # points' spread (which would let anything pass)
    assert curve.quiet_spread(result.points) == curve.FALL_SLACK
    # no point is steady enough to be the saturation batch
    assert all(p.noisy for p in result.points) and result.saturation_batch is None


def test_a_noisy_point_is_never_the_saturation_batch():
    def point(b, ms, spread=0.05):
        t = ms / 1e3
        return ProfilePoint(b, "ok", median_s=t, estimate_s=t, p25_s=t * (1 - spread / 2), p75_s=t * (1 + spread / 2))

    # 256 looks fastest per sample, but its steps spread 80% of their median: of the others, 128 reaches 90%
    points = [point(64, 1.0), point(128, 1.5), point(256, 1.0, spread=0.8), point(512, 6.0)]
    assert curve.saturation_batch(points) == 128
    assert profiler.saturation_batch(points) == 128
    steady = [point(64, 1.0), point(128, 1.5), point(256, 1.0), point(512, 6.0)]
    assert curve.saturation_batch(steady) == 256
