"""The recommender on synthetic profiles whose right answer is known, and its arithmetic."""

from __future__ import annotations

import math

import pytest

from largestep.errors import UsageError
from largestep.plan.recommend import RecommendConfig, recommend, scale_lr, warmup_steps


def profile(
    step_ms: dict[int, float],
    memory: dict[int, int] | None = None,
    saturation: int | None = None,
    total_memory: int | None = None,
    baseline=(128, 1e-3),
    noisy=(),
):
    points = []
    for b, ms in sorted(step_ms.items()):
        points.append(
            {
                "batch_size": b,
                "status": "ok",
                "median_s": ms / 1e3,
                "samples_per_s": b / (ms / 1e3),
                "peak_memory_bytes": (memory or {}).get(b, 1000 * b),
                "noisy": b in noisy,
            }
        )
    if saturation is None:  # as the profiler computes it
        best = max(p["samples_per_s"] for p in points)
        saturation = min(p["batch_size"] for p in points if p["samples_per_s"] >= 0.9 * best)
    return {
        "id": "prof-synthetic",
        "workload": "w",
        "workload_spec": "w",
        "options": {},
        "device_id": "cuda:x",
        "device_name": "GPU",
        "device_kind": "cuda",
        "dtype": "fp32",
        "saturation_batch": saturation,
        "baseline_batch_size": baseline[0],
        "baseline_lr": baseline[1],
        "optimizer": "adam",
        "epochs": 10,
        "n_train": 1_000_000,
        "warmup_samples": 50_000,
        "device_total_memory_bytes": total_memory,
        "points": points,
    }


def test_perfect_scaling_takes_the_largest_batch_before_saturation():
    # step time constant up to 2048: throughput grows linearly, saturation at the end
    p = profile({128: 10, 256: 10, 512: 10, 1024: 10, 2048: 10})
    rec = recommend(p, RecommendConfig())
    assert rec["batch_size"] == 2048
    assert rec["learning_rate"] == pytest.approx(1e-3 * 16)
    assert rec["predicted_speedup"]["throughput"] == pytest.approx(16)
    assert rec["predicted_speedup"]["time_to_target"] == pytest.approx(16)  # perfect scaling assumed
    assert rec["assumed_perfect_scaling"] and any("perfect scaling" in r for r in rec["reasons"])
    assert rec["warmup_steps"] == math.ceil(50_000 / 2048)
    per_day = rec["experiments_per_gpu_day"]
    assert per_day["recommended"] / per_day["baseline"] == pytest.approx(16)


def test_early_saturation_stops_at_the_saturation_batch():
    # throughput: 12.8k, 25.6k, 28.4k, 29.3k, 29.5k samples/s -> saturation at 512 (>= 0.9 * 29.5k)
    p = profile({128: 10, 256: 10, 512: 18, 1024: 35, 2048: 69.4})
    assert p["saturation_batch"] == 512
    rec = recommend(p, RecommendConfig())
    assert rec["batch_size"] == 512
    excluded = {c["batch_size"]: c["excluded"] for c in rec["candidates"]}
    assert "saturation" in excluded[1024] and "saturation" in excluded[2048]
    assert any(r.startswith("saturation") for r in rec["reasons"])


def test_memory_headroom_excludes_batches_that_would_not_fit():
    memory = {128: 1e9, 256: 2e9, 512: 4e9, 1024: 8e9, 2048: 16e9}
    p = profile({128: 10, 256: 10, 512: 10, 1024: 10, 2048: 10}, memory=memory, total_memory=10e9)
    rec = recommend(p, RecommendConfig(memory_headroom=0.9))  # 9 GB usable: 2048 excluded
    assert rec["batch_size"] == 1024
    assert any(r.startswith("memory") for r in rec["reasons"])
    rec = recommend(p, RecommendConfig(memory_headroom=0.5))  # 5 GB usable: 1024 excluded too
    assert rec["batch_size"] == 512


def test_the_noise_scale_trades_steps_against_throughput():
    # a GPU-like profile: throughput keeps growing to 4096; with B_noise = 512 the extra steps eat the gain
    p = profile({128: 10, 256: 10.5, 512: 11, 1024: 13, 2048: 18, 4096: 30})
    fast = recommend(p, RecommendConfig(noise_scale=1e9))  # no gradient noise: as perfect scaling
    assert fast["batch_size"] == 4096
    rec = recommend(p, RecommendConfig(noise_scale=512))
    # T(B)/T(128) = (1 + 512/B)/(1 + 512/128) * t(B)/t(128); check the chosen one is the minimum within 5%
    ratios = {c["batch_size"]: c["time_ratio"] for c in rec["candidates"]}
    for b, ms in {128: 10, 256: 10.5, 512: 11, 1024: 13, 2048: 18, 4096: 30}.items():
        assert ratios[b] == pytest.approx((1 + 512 / b) / 5 * ms / 10)
    best = min(ratios.values())
    assert ratios[rec["batch_size"]] <= best * 1.05
    assert rec["batch_size"] < 4096
    assert rec["predicted_speedup"]["time_to_target"] == pytest.approx(1 / ratios[rec["batch_size"]])
    assert any(r.startswith("noise scale") for r in rec["reasons"])


def test_a_near_tie_prefers_the_smaller_batch():
    p = profile({128: 10, 256: 10, 512: 10, 1024: 19.6})  # 1024 is 2% faster than 512 per sample
    rec = recommend(p, RecommendConfig(noise_scale=1e12))
    assert rec["batch_size"] == 512
    assert any("smaller batch was preferred" in r for r in rec["reasons"])


def test_a_noisy_profile_still_recommends_only_measured_batches():
    p = profile({128: 10, 256: 10.2, 512: 10.1, 1024: 10.3}, noisy=(256, 1024))
    rec = recommend(p, RecommendConfig())
    assert rec["batch_size"] in {c["batch_size"] for c in rec["candidates"]} == {128, 256, 512, 1024}


def test_a_baseline_past_saturation_is_kept_unchanged():
    p = profile({32: 10, 64: 11, 128: 21, 256: 42}, baseline=(128, 1e-3))
    assert p["saturation_batch"] <= 128
    rec = recommend(p, RecommendConfig())
    assert rec["batch_size"] == 128 and rec["learning_rate"] == 1e-3
    assert "already at or past the saturation batch" in rec["reasons"][0]


def test_max_lr_caps_the_batch():
    p = profile({128: 10, 256: 10, 512: 10, 1024: 10})
    rec = recommend(p, RecommendConfig(max_lr=4e-3))
    assert rec["batch_size"] == 512 and rec["learning_rate"] == pytest.approx(4e-3)
    assert any(r.startswith("max lr") for r in rec["reasons"])


def test_rules_and_warmup_arithmetic():
    assert scale_lr(1e-3, 128, 1024, "linear") == pytest.approx(8e-3)
    assert scale_lr(1e-3, 128, 1024, "sqrt") == pytest.approx(1e-3 * math.sqrt(8))
    assert scale_lr(0.1, 256, 256, "sqrt") == pytest.approx(0.1)
    # the warm-up keeps its length in samples: fewer steps as the batch grows, never zero
    assert warmup_steps(50_000, 128) == 391 and warmup_steps(50_000, 4096) == 13
    assert warmup_steps(0, 512) == 0
    p = profile({128: 10, 256: 10, 512: 10})
    rec = recommend(p, RecommendConfig(rule="sqrt"))
    assert rec["learning_rate"] == pytest.approx(1e-3 * 2) and rec["rule"] == "sqrt"
    rec = recommend(p, RecommendConfig(baseline_batch=256, baseline_lr=0.01))
    assert rec["baseline"] == {"batch_size": 256, "learning_rate": 0.01}
    assert rec["learning_rate"] == pytest.approx(0.02)


@pytest.mark.parametrize(
    "config, says",
    [
        (RecommendConfig(baseline_lr=0.0), "positive"),
        (RecommendConfig(baseline_lr=-1e-3), "positive"),
        (RecommendConfig(baseline_batch=100), "not measured"),
        (RecommendConfig(memory_headroom=1.5), "headroom"),
        (RecommendConfig(noise_scale=-5), "noise"),
        (RecommendConfig(max_lr=0), "max-lr"),
    ],
)
def test_bad_configs_are_usage_errors(config, says):
    with pytest.raises(UsageError, match=says):
        recommend(profile({128: 10, 256: 10}), config)


def test_a_profile_flagged_inconsistent_makes_the_recommendation_say_it_is_uncertain_and_why():
    p = profile({128: 10, 256: 10, 512: 10})
    assert recommend(p, RecommendConfig())["uncertain"] is None
    p["inconsistency"] = "step time falls from 514 ms at batch 16 to 331 ms at 32, beyond their quartiles"
    rec = recommend(p, RecommendConfig())
    assert rec["uncertain"].startswith(
        "uncertain: profile prof-synthetic stayed inconsistent after re-measuring "
        "(step time falls from 514 ms at batch 16"
    )
    assert rec["reasons"][0] == rec["uncertain"]  # first among the reasons, not ranked on silently


def test_the_noise_rule_stops_growing_the_rate_near_the_noise_scale_and_the_linear_rule_says_when_it_goes_past():
    """McCandlish et al.: the optimal SGD rate is eps_max/(1 + B_noise/B), calibrated so the baseline keeps its own."""
    assert scale_lr(1e-3, 128, 128, "noise", 1000.0) == pytest.approx(1e-3)
    assert scale_lr(1e-3, 128, 8192, "noise", 1000.0) == pytest.approx(1e-3 * (1 + 1000 / 128) / (1 + 1000 / 8192))
    assert scale_lr(1e-3, 128, 10**9, "noise", 1000.0) < 1e-3 * (1 + 1000 / 128) * 1.0001  # its ceiling: ~8.8x
    p = profile({128: 10, 1024: 10, 4096: 10})  # perfect hardware scaling: the largest batch wins
    linear = recommend(p, RecommendConfig(noise_scale=500.0))
    assert linear["batch_size"] == 4096 and linear["learning_rate"] == pytest.approx(32e-3)
    assert any(
        "linear rule scales the learning rate past the noise scale" in r and "--rule noise" in r
        for r in linear["reasons"]
    )
    noise = recommend(p, RecommendConfig(noise_scale=500.0, rule="noise"))
    assert noise["learning_rate"] == pytest.approx(1e-3 * (1 + 500 / 128) / (1 + 500 / 4096))  # 4.4x, not 32x
    assert not any("past the noise scale" in r for r in noise["reasons"])
    with pytest.raises(UsageError, match="--rule noise needs a gradient noise scale"):
        recommend(p, RecommendConfig(rule="noise"))


def test_candidates_are_ranked_by_the_lower_end_of_their_prediction_interval():
    """Batch 1024's profile visits disagree (its point estimate is the best, its lower end is not); 512's agree:
    512 is recommended, and the table shows both the point and the interval."""
    import numpy as np

    p = profile({128: 10, 512: 12, 1024: 22})
    rng = np.random.default_rng(0)
    for point, spread in zip(p["points"], (0.01, 0.01, 0.6)):
        point["visits"] = 6
        point["step_times_s"] = list(point["median_s"] * np.exp(spread * np.repeat(rng.standard_normal(6), 10)))
    rec = recommend(p, RecommendConfig(noise_scale=100_000.0))
    by_batch = {c["batch_size"]: c for c in rec["candidates"]}
    assert by_batch[1024]["speedup_time_to_target"] > by_batch[512]["speedup_time_to_target"]  # the point says 1024
    assert by_batch[1024]["speedup_interval"][0] < by_batch[512]["speedup_interval"][0]  # its low end does not
    assert rec["batch_size"] == 512 and by_batch[512]["rank"] == 1
    assert rec["predicted_speedup"]["coverage"] == 0.9


def test_a_candidate_faster_on_its_point_but_not_on_its_interval_leaves_the_baseline_and_says_why():
    """A profile measured while other processes came and went: its visits disagree several-fold, so no batch's
    interval lies above 1, and the baseline stays with the numbers that kept it."""
    import numpy as np

    p = profile({128: 10, 512: 30})
    rng = np.random.default_rng(1)
    for point in p["points"]:
        point["visits"] = 6
        point["step_times_s"] = list(point["median_s"] * np.exp(0.9 * np.repeat(rng.standard_normal(6), 10)))
    rec = recommend(p, RecommendConfig(noise_scale=100_000.0))
    candidate = next(c for c in rec["candidates"] if c["batch_size"] == 512)
    assert candidate["speedup_time_to_target"] > 1 > candidate["speedup_interval"][0]
    assert rec["batch_size"] == 128
    assert any(
        r.startswith("no measured batch's prediction interval lies above 1: the best, batch 512, is predicted")
        for r in rec["reasons"]
    )
