"""The batch schedule optimiser on synthetic profiles and noise curves whose best answer is known."""

from __future__ import annotations

import math

import pytest

from largestep.errors import UsageError
from largestep.plan.recommend import RecommendConfig, recommend
from largestep.plan.schedule import plan_schedule

BATCHES = (32, 64, 128, 256, 512, 1024)


def profile(step_time, batches=BATCHES, b0=32, lr0=1e-3) -> dict:
    """A stored profile whose step time at batch B is ``step_time(B)``."""
    points = [
        {
            "batch_size": b,
            "status": "ok",
            "median_s": step_time(b),
            "p25_s": step_time(b),
            "p75_s": step_time(b),
            "peak_memory_bytes": 1000 * b,
        }
        for b in batches
    ]
    return {
        "id": "prof-synthetic",
        "workload": "synthetic",
        "points": points,
        "baseline_batch_size": b0,
        "baseline_lr": lr0,
        "epochs": 10,
        "n_train": 100_000,
        "warmup_samples": 5000,
        "device_total_memory_bytes": None,
    }


def linear_time(overhead: float, per_sample: float):
    """t(B) = a + b·B: (1 + B_n/B)(a + bB) is least at B* = sqrt(a B_n / b)."""
    return lambda b: overhead + per_sample * b


def curve(*points: tuple[float, float | None]) -> list[dict]:
    return [{"curve_id": "nois-test", "fraction": f, "b_simple": s} for f, s in points]


def rec_for(prof: dict, rule: str = "linear") -> dict:
    return recommend(prof, RecommendConfig(rule=rule))


def predicted_time(batch: int, noise: float, b0: int, t) -> float:
    """T(B)/T(B0) over a stretch at a constant noise scale."""
    return (1 + noise / batch) / (1 + noise / b0) * t(batch) / t(b0)


def test_a_noise_scale_that_jumps_gives_two_phases_at_each_halfs_best_batch():
    # a/b = 64: B* = sqrt(64 B_n): 64 while B_n = 64, 256 once B_n = 1024
    t = linear_time(64e-4, 1e-4)
    plan = plan_schedule(rec_for(profile(t)), curve((0.0, 64), (0.5, 64), (0.501, 1024), (1.0, 1024)))
    phases = plan["phases"]
    assert [p["batch_size"] for p in phases] == [64, 256]
    assert phases[0]["baseline_fraction"] == 0.0 and phases[1]["baseline_fraction"] == pytest.approx(0.5)
    # lr/batch fixed at every phase, each increase warmed up over the workload's samples
    assert [p["learning_rate"] for p in phases] == pytest.approx([2e-3, 8e-3])
    assert [p["warmup_samples"] for p in phases] == [5000, 5000]
    # speedups: the closed form, half the run at each batch, against the baseline and the best fixed batch
    schedule = 0.5 * predicted_time(64, 64, 32, t) + 0.5 * predicted_time(256, 1024, 32, t)
    fixed = {b: 0.5 * predicted_time(b, 64, 32, t) + 0.5 * predicted_time(b, 1024, 32, t) for b in BATCHES}
    best = min(fixed, key=fixed.get)
    assert plan["best_fixed"]["batch_size"] == best == 128
    assert plan["predicted_speedup"]["over_baseline"] == pytest.approx(1 / schedule, rel=0.01)
    assert plan["predicted_speedup"]["over_best_fixed"] == pytest.approx(fixed[best] / schedule, rel=0.01)
    assert plan["predicted_speedup"]["over_best_fixed"] > 1
    # the second phase starts where the samples of the first end: steps x batch over the first half
    first = 0.5 * (1 + 64 / 64) / (1 + 64 / 32) * 64
    second = 0.5 * (1 + 1024 / 256) / (1 + 1024 / 32) * 256
    assert phases[1]["start_fraction"] == pytest.approx(first / (first + second), rel=0.01)
    assert plan["samples_ratio"] == pytest.approx((first + second) / 32, rel=0.01)
    assert plan["spec"] == f"64:0,256:{round(first / (first + second), 3):g}"
    assert any("grows as the noise scale does" in r for r in plan["reasons"])


def test_a_flat_noise_curve_gives_the_best_fixed_batch_and_no_gain():
    t = linear_time(64e-4, 1e-4)
    plan = plan_schedule(rec_for(profile(t)), curve((0.0, 256), (1.0, 256)))
    assert [p["batch_size"] for p in plan["phases"]] == [128] == [plan["best_fixed"]["batch_size"]]
    assert plan["predicted_speedup"]["over_best_fixed"] == pytest.approx(1.0)
    assert plan["spec"] == "128:0"
    assert any("one batch (128) is best over the whole run" in r for r in plan["reasons"])


def test_free_parallelism_takes_the_largest_batch_and_says_it_limited_the_plan():
    plan = plan_schedule(rec_for(profile(lambda b: 0.01)), curve((0.0, 10), (1.0, 5000)))
    assert plan["phases"][-1]["batch_size"] == 1024
    assert any("largest eligible batch (1024) limited" in r for r in plan["reasons"])


def test_the_batch_never_shrinks_even_where_the_noise_scale_dips():
    t = linear_time(64e-4, 1e-4)
    plan = plan_schedule(rec_for(profile(t)), curve((0.0, 64), (0.3, 4096), (0.6, 64), (1.0, 4096)))
    sizes = [p["batch_size"] for p in plan["phases"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_sqrt_rule_and_excluded_batches_carry_over_from_the_recommendation():
    t = linear_time(64e-4, 1e-4)
    prof = profile(t)
    prof["device_total_memory_bytes"] = 300_000  # 90% of it: batches above 270 do not fit
    plan = plan_schedule(rec_for(prof, rule="sqrt"), curve((0.0, 64), (1.0, 100_000)))
    assert max(p["batch_size"] for p in plan["phases"]) == 256
    for p in plan["phases"]:
        assert p["learning_rate"] == pytest.approx(1e-3 * math.sqrt(p["batch_size"] / 32))


def test_unreliable_points_are_left_out_and_too_few_refused():
    t = linear_time(64e-4, 1e-4)
    rec = rec_for(profile(t))
    plan = plan_schedule(rec, curve((0.0, None), (0.5, 64), (1.0, 1024)))
    assert [p["fraction"] for p in plan["noise_curve"]] == [0.5, 1.0]
    assert any("0 were unreliable" in r for r in plan["reasons"])
    with pytest.raises(UsageError, match="1 reliable point"):
        plan_schedule(rec, curve((0.0, None), (1.0, 64)))
