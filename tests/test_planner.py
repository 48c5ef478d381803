"""The planner's arithmetic on synthetic profiles, and its agreement with the recommendation."""

import math

import pytest

from largestep.errors import UsageError
from largestep.plan.planner import PlanConfig, plan_experiments
from largestep.plan.recommend import RecommendConfig, recommend
from largestep.ui.charts import recommend as reccharts

DAY_S = 86_400.0


def synthetic_profile(
    step_times: dict[int, float],
    baseline: int = 32,
    n_train: int = 10_000,
    epochs: int | None = 3,
    saturation: int | None = None,
) -> dict:
    points = [
        {"batch_size": b, "status": "ok", "median_s": t, "peak_memory_bytes": 1000 * b}
        for b, t in sorted(step_times.items())
    ]
    return {
        "id": "prof-synthetic",
        "workload": "synthetic",
        "points": points,
        "baseline_batch_size": baseline,
        "baseline_lr": 1e-3,
        "n_train": n_train,
        "epochs": epochs,
        "saturation_batch": saturation,
        "device_total_memory_bytes": None,
    }


def test_perfect_scaling_experiments_ratio_is_the_throughput_ratio():
    # step time grows slower than the batch: throughput 32/0.010 = 3,200 vs 512/0.020 = 25,600 samples/s
    profile = synthetic_profile({32: 0.010, 128: 0.012, 512: 0.020})
    plan = plan_experiments(profile, PlanConfig(), recommended_batch=512)
    base, rec = plan.row(32), plan.row(512)
    assert plan.ratio == pytest.approx((512 / 0.020) / (32 / 0.010))  # 8x
    # one run = 3 epochs of 10,000 samples = steps x step time at every batch size
    assert base.steps == pytest.approx(30_000 / 32) and rec.steps == pytest.approx(30_000 / 512)
    assert base.run_time_s == pytest.approx(30_000 / 32 * 0.010)
    assert base.experiments_per_day == pytest.approx(DAY_S / base.run_time_s)
    assert [r.role for r in plan.rows] == ["baseline", None, "recommended"]


def test_a_noise_scale_follows_the_steps_formula():
    noise = 256.0
    profile = synthetic_profile({32: 0.010, 128: 0.012, 512: 0.020})
    plan = plan_experiments(profile, PlanConfig(noise_scale=noise), recommended_batch=512)
    baseline_steps = 30_000 / 32
    for b, t in ((32, 0.010), (128, 0.012), (512, 0.020)):
        # S(B) = S_min (1 + B_noise/B), with S(32) the baseline's steps
        expected_steps = baseline_steps * (1 + noise / b) / (1 + noise / 32)
        assert plan.row(b).steps == pytest.approx(expected_steps)
        assert plan.row(b).run_time_s == pytest.approx(expected_steps * t)
    expected_ratio = ((1 + noise / 32) / (1 + noise / 512)) * 0.010 / 0.020  # the predicted speedup formula
    assert plan.ratio == pytest.approx(expected_ratio)
    # a finite noise scale always predicts less than perfect scaling does
    assert plan.ratio < plan_experiments(profile, PlanConfig(), recommended_batch=512).ratio


def test_the_budget_scales_experiments_and_whole_runs():
    profile = synthetic_profile({32: 0.010, 512: 0.020}, n_train=32_000, epochs=1)  # baseline run: 10 s
    one = plan_experiments(profile, PlanConfig(gpu_hours_per_day=1, gpus=1))
    four = plan_experiments(profile, PlanConfig(gpu_hours_per_day=8, gpus=4))
    assert one.row(32).run_time_s == pytest.approx(10.0)
    assert one.row(32).experiments_per_day == pytest.approx(360.0) and one.row(32).runs_per_day == 360
    assert four.row(32).experiments_per_day == pytest.approx(32 * 360.0)
    assert four.row(32).runs_per_day == 4 * math.floor(8 * 3600 / 10.0)
    assert one.ratio is None  # no recommendation: nothing to compare


def test_the_planner_agrees_with_the_recommendations_experiments_per_gpu_day():
    profile = synthetic_profile({32: 0.010, 64: 0.011, 128: 0.012, 256: 0.016, 512: 0.020})
    for noise in (None, 300.0):
        rec = recommend(profile, RecommendConfig(noise_scale=noise))
        plan = plan_experiments(profile, PlanConfig(noise_scale=noise), recommended_batch=rec["batch_size"])
        per_day = rec["experiments_per_gpu_day"]
        assert plan.row(32).experiments_per_day == pytest.approx(per_day["baseline"])
        assert plan.row(rec["batch_size"]).experiments_per_day == pytest.approx(per_day["recommended"])


def test_only_measured_batch_sizes_are_planned():
    profile = synthetic_profile({32: 0.010, 128: 0.012})
    profile["points"].append({"batch_size": 1024, "status": "oom", "median_s": None})
    plan = plan_experiments(profile, PlanConfig())
    assert [r.batch_size for r in plan.rows] == [32, 128]
    with pytest.raises(UsageError, match="not measured"):
        plan_experiments(profile, PlanConfig(), recommended_batch=1024)
    with pytest.raises(UsageError, match="not measured"):
        plan_experiments(profile, PlanConfig(), baseline_batch=64)


@pytest.mark.parametrize(
    "config, says",
    [
        (PlanConfig(gpu_hours_per_day=0), "GPU hours"),
        (PlanConfig(gpu_hours_per_day=25), "GPU hours"),
        (PlanConfig(gpus=0), "GPUs"),
        (PlanConfig(epochs=0), "epochs"),
        (PlanConfig(noise_scale=-1.0), "noise scale"),
    ],
)
def test_bad_budgets_say_what_to_fix(config, says):
    with pytest.raises(UsageError, match=says):
        plan_experiments(synthetic_profile({32: 0.01}), config)


def test_the_planner_chart_colours_the_baseline_and_the_recommendation():
    plan = plan_experiments(synthetic_profile({32: 0.010, 128: 0.012, 512: 0.020}), PlanConfig(), recommended_batch=512)
    fig = reccharts.planner_figure(plan)
    (bars,) = fig.data
    assert list(bars.x) == ["32", "128", "512"]
    assert len(set(bars.marker.color)) == 3  # baseline, other, recommended
    assert "8.0× as many experiments" in fig.layout.title.subtitle.text


def test_the_time_to_target_chart_marks_the_choice_and_the_excluded():
    profile = synthetic_profile({32: 0.010, 128: 0.012, 512: 0.020}, saturation=128)
    rec = recommend(profile, RecommendConfig())
    fig = reccharts.time_to_target_figure(rec)
    names = [t.name for t in fig.data]
    assert f"recommended {rec['batch_size']}" in names
    excluded = next(t for t in fig.data if t.name.startswith("excluded"))
    assert list(excluded.x) == [512] and "saturation" in excluded.hovertext[0]


def test_a_profile_without_the_baseline_batch_is_planned_with_what_was_measured_and_says_so():
    # `largestep profile -w fraud-mlp --batch-sizes 64,256`: the workload's baseline, 128, was not measured
    profile = synthetic_profile({64: 0.010, 256: 0.020}, baseline=128)
    plan = plan_experiments(profile, PlanConfig())
    assert [r.batch_size for r in plan.rows] == [64, 256]
    assert plan.baseline_batch == 64 and plan.row(64).vs_baseline == 1.0
    assert len(plan.notes) == 1
    assert "baseline batch 128 was not measured" in plan.notes[0]
    assert "--batch-sizes 64,128,256" in plan.notes[0]
    measured = synthetic_profile({64: 0.010, 128: 0.012, 256: 0.020}, baseline=128)
    assert plan_experiments(measured, PlanConfig()).notes == ()
