"""Predictions that learn from their own verifications, on synthetic runs whose truth is known.

The synthetic world: a step takes t(B) = a + b·B; a run at batch B needs S(B) = S_min (1 + B_crit/B) steps to
its floor (varying 2% between seeds), its validation loss falling linearly to the floor and staying there, so
its time to the baseline's target is S(B)·t(B) up to the evaluation grid. The noise estimate a recommendation
is made from says B_simple, while the runs behave with B_crit = 3·B_simple, as McCandlish et al. allow.
"""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, open_page, run_cli, spool_job

from largestep import store
from largestep.errors import UsageError
from largestep.plan.calibration import (
    correction_from,
    implied_correction,
    implied_critical_batch,
    next_attempt,
    verification_point,
)
from largestep.plan.compare import compare_groups
from largestep.plan.recommend import RecommendConfig, choose, recommend
from largestep.plan.schedule import with_batch_schedule
from largestep.plan.steps import StepsModel

B_SIMPLE = 100.0
B_CRIT = 3 * B_SIMPLE
FLOOR = 0.5  # every run's validation loss ends here; the target is 1% above it
S_MIN = 400  # steps at an infinite batch


def step_time(b: float) -> float:
    return 0.002 + 1e-5 * b


BATCHES = (32, 64, 128, 256, 512, 1024, 2048)


def profile(batches=BATCHES, b0=32, lr0=1e-3, seed=0) -> dict:
    """A stored profile whose visits agree to 1%."""
    rng = np.random.default_rng(seed)
    points = []
    for b in batches:
        t = step_time(b)
        steps = list(t * (1 + 0.01 * np.repeat(rng.standard_normal(4), 10)))
        points.append(
            {
                "batch_size": b,
                "status": "ok",
                "median_s": t,
                "estimate_s": t,
                "p25_s": t,
                "p75_s": t,
                "visits": 4,
                "step_times_s": steps,
                "peak_memory_bytes": 1000 * b,
            }
        )
    return {
        "id": "prof-synthetic",
        "workload": "synthetic",
        "device_id": "cpu",
        "device_name": "test cpu",
        "points": points,
        "baseline_batch_size": b0,
        "baseline_lr": lr0,
        "epochs": 10,
        "n_train": 100_000,
        "warmup_samples": 5000,
        "device_total_memory_bytes": None,
    }


NOISE = {"b_simple": B_SIMPLE, "ci_low": 80.0, "ci_high": 125.0, "id": "noise-synthetic"}


def true_speedup(b0: int, b: int, critical: float = B_CRIT) -> float:
    return (1 + critical / b0) / (1 + critical / b) * step_time(b0) / step_time(b)


def simulated_runs(
    name: str,
    batch: int,
    seeds: int,
    rng,
    critical: float = B_CRIT,
    role: str = "recommended",
    rec_id: str = "rec-x",
    lr: float = 1e-3,
    metric: float = 0.9,
    reach: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Runs of one arm and their evaluations (``reach`` False: each trains to 60% of its steps and stops)."""
    runs, evals = [], []
    for k in range(seeds):
        run_id = f"{name}-{k}"
        s_run = S_MIN * (1 + critical / batch) * math.exp(0.02 * rng.standard_normal())
        t = step_time(batch) * math.exp(0.01 * rng.standard_normal())
        every = max(1, int(s_run / 200))
        total = int((1.5 if reach else 0.6) * s_run)
        for step in range(every, total + 1, every):
            evals.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "epoch": step / 100,
                    "samples": step * batch,
                    "wall_time_s": step * t * 1.1,
                    "train_time_s": step * t,
                    "val_loss": max(FLOOR, 1 - (1 - FLOOR) * step / s_run),
                }
            )
        final = evals[-1]["val_loss"]
        runs.append(
            {
                "id": run_id,
                "seed": k,
                "state": "FINISHED",
                "batch_size": batch,
                "lr": lr,
                "role": role,
                "recommendation_id": rec_id,
                "steps": total,
                "train_time_s": total * t,
                "final_val_loss": final,
                "best_val_loss": final,
                "final_primary_metric": metric + 0.0005 * rng.standard_normal(),
                "primary_metric": "accuracy",
                "primary_metric_mode": "max",
            }
        )
    return runs, evals


def verify(rec: dict, seeds: int, rng, critical: float = B_CRIT, **recommended) -> dict:
    """The comparison of ``rec``'s baseline and recommended arms, simulated."""
    base, base_evals = simulated_runs(
        "base", rec["baseline"]["batch_size"], seeds, rng, critical, role="baseline", rec_id=rec["recommendation_id"]
    )
    other, other_evals = simulated_runs(
        f"b{rec['batch_size']}",
        rec["batch_size"],
        seeds,
        rng,
        critical,
        rec_id=rec["recommendation_id"],
        lr=rec["learning_rate"],
        **recommended,
    )
    return compare_groups([("baseline", base), ("recommended", other)], pd.DataFrame(base_evals + other_evals))


def candidate(rec: dict, batch: int) -> dict:
    return next(c for c in rec["candidates"] if c["batch_size"] == batch)


# -- the "done when" simulation --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_after_one_verification_the_corrected_prediction_for_a_second_batch_is_within_ten_percent(seed):
    """The raw model recommends 128; its runs are verified (3 seeds an arm), and the model corrected by that one
    verification predicts the next batch, 256, within 10% of what its simulated runs measure, where the raw model
    misses by a third. (Over 40 simulation seeds the corrected error at 256 stays below 10%, a mean of 3%; the
    raw one is never closer than 35%.)"""
    rng = np.random.default_rng(seed)
    raw = recommend(profile(), RecommendConfig(), NOISE)
    assert raw["batch_size"] == 128
    point = verification_point(raw, verify(raw, 3, rng), source="compare", created_at=0.0)
    # the runs behaved as if the critical batch were 3x the estimate, and the point says so with its interval
    assert point["implied_b_crit"] == pytest.approx(B_CRIT, rel=0.2)
    assert point["b_crit_low"] < point["implied_b_crit"] < point["b_crit_high"]
    assert point["ratio"] == pytest.approx(3.0, rel=0.2) and point["noise_model"] == "estimate"

    corrected = recommend(profile(), RecommendConfig(), NOISE, calibration=[point])
    second = candidate(corrected, 256)
    simulated = verify(choose(corrected, 256, "linear", "the second batch"), 3, rng)["groups"][1]["speedup"]
    assert simulated == pytest.approx(true_speedup(32, 256), rel=0.05)  # the simulation is what it claims
    assert abs(second["speedup_time_to_target"] / simulated - 1) < 0.10  # the corrected prediction
    assert abs(second["raw_speedup"] / simulated - 1) > 0.10  # ... where the raw one misses
    assert corrected["correction"]["verifications"] == 1
    assert corrected["predicted_speedup"]["model"] == "corrected"
    assert corrected["correction"]["factor"] == pytest.approx(point["ratio"], rel=0.02)
    said = f"corrected noise model: B_crit ≈ {corrected['correction']['factor']:.2f}× B_simple"
    assert any(r.startswith(said) for r in corrected["reasons"])


def test_the_corrected_model_ranks_the_candidates_and_the_raw_one_is_kept_beside():
    rng = np.random.default_rng(3)
    raw = recommend(profile(), RecommendConfig(), NOISE)
    point = verification_point(raw, verify(raw, 3, rng), source="compare", created_at=0.0)
    corrected = recommend(profile(), RecommendConfig(), NOISE, calibration=[point])
    # the true optimum of (1 + 300/B)·t(B) over the measured batches is larger than the raw model's choice
    best = max(BATCHES, key=lambda b: true_speedup(32, b))
    assert raw["batch_size"] < best and abs(math.log2(corrected["batch_size"] / best)) <= 1
    for b in (256, 512, 1024):  # the correction raises every larger batch's prediction towards the truth
        c = candidate(corrected, b)
        assert c["raw_speedup"] < c["speedup_time_to_target"] and c["raw_interval"][1] < true_speedup(32, b)
    ranks = {c["batch_size"]: c["rank"] for c in corrected["candidates"] if c["eligible"]}
    lows = {c["batch_size"]: c["speedup_interval"][0] for c in corrected["candidates"] if c["eligible"]}
    assert sorted(ranks, key=ranks.get) == sorted(lows, key=lambda b: (-lows[b], b))  # ranked on the corrected
    chosen = candidate(corrected, corrected["batch_size"])
    assert chosen["raw_speedup"] == pytest.approx(candidate(raw, corrected["batch_size"])["speedup_time_to_target"])
    assert corrected["predicted_speedup"]["raw"]["time_to_target"] == pytest.approx(chosen["raw_speedup"])


# -- the critical batch a steps factor implies ------------------------------------------------------------------


def test_the_implied_critical_batch_inverts_the_steps_model_and_saturates_at_its_ends():
    for critical in (10.0, 300.0, 3000.0, 1e5):
        factor = (1 + critical / 128) / (1 + critical / 1024)
        assert implied_critical_batch(factor, 128, 1024) == pytest.approx(critical, rel=1e-9)
    assert implied_critical_batch(0.9, 128, 1024) == 0.0  # no steps saved at all
    assert implied_critical_batch(8.0, 128, 1024) == math.inf  # perfect scaling
    assert implied_critical_batch(2.0, 128, 128) is None  # the baseline against itself


def test_a_noise_curve_is_corrected_by_the_factor_that_makes_it_give_the_measured_steps():
    model = StepsModel.from_curve(
        [{"curve_id": "c", "fraction": 0.0, "b_simple": 200.0}, {"curve_id": "c", "fraction": 1.0, "b_simple": 2000.0}]
    )
    measured = model.factor(128, 1024, 2.5)
    assert implied_correction(model, measured, 128, 1024) == pytest.approx(2.5, rel=1e-6)
    estimate = StepsModel.from_estimate(1000.0)
    assert implied_correction(estimate, estimate.factor(128, 1024, 3.0), 128, 1024) == pytest.approx(3.0)


def test_verifications_pool_into_one_correction_whose_interval_spans_what_they_saw():
    points = [
        {"id": "a", "ratio": 2.0, "ratio_low": 1.5, "ratio_high": 2.6},
        {"id": "b", "ratio": 4.0, "ratio_low": 3.0, "ratio_high": 5.5},
        {"id": "c", "ratio": None},
    ]  # a verification that measured no steps corrects nothing
    correction = correction_from(points, StepsModel.from_estimate(1000.0))
    assert correction.verifications == 2 and 2.0 < correction.factor < 4.0
    low, high = correction.interval
    assert 1.4 < low < 2.0 and 4.0 < high < 6.0
    assert correction_from([points[2]], StepsModel.from_estimate(1000.0)) is None


def test_steps_cut_as_fast_as_the_batch_grew_never_correct_the_noise_scale_down():
    # fraud-gru, 128 -> 256: steps to the target 2.25x fewer (90% interval 1.78-2.86x), more than the batch grew,
    # so B_crit is unbounded; the interval's low end alone implies 0.22x B_simple. Centred there, the correction
    # shrank B_noise from 4,097 to 896 and the next autopilot kept the baseline
    point = {"id": "v", "ratio": math.inf, "ratio_low": 0.2187, "ratio_high": math.inf}
    correction = correction_from([point], StepsModel.from_estimate(4097.0))
    assert correction.factor == pytest.approx(1.0, rel=0.05)  # the raw model stands, its doubt widened below
    assert correction.interval[0] == pytest.approx(0.2187, rel=0.1) and correction.interval[1] is None
    assert "(90% interval 0.2" in correction.describe() and "× or more)" in correction.describe()


# -- failed verifications ---------------------------------------------------------------------------------------


def test_a_failed_verification_is_recorded_as_a_bound_and_a_diverged_one_teaches_nothing_about_steps():
    rng = np.random.default_rng(4)
    rec = choose(recommend(profile(), RecommendConfig(), NOISE), 1024, "linear", "test")
    never = verification_point(rec, verify(rec, 3, rng, reach=False), source="compare", created_at=0.0)
    assert not never["verified"] and never["measured_bound"] == "at most" and never["steps_bound"] == "at most"
    assert never["ratio"] is not None and never["ratio_high"] == pytest.approx(never["ratio"])  # an upper bound
    assert never["learned"].startswith("the runs behaved as if the critical batch were at most")
    diverged = verify(rec, 3, rng)
    for run in diverged["groups"][1]["runs"]:  # runs that ended without a time: censored at infinity
        run.update(time_to_target_s=None, censored_at_s=None, steps_to_target=None, steps=None, state="DIVERGED")
    diverged["groups"][1]["steps_to_target_median"] = {"median": None, "at_least": math.inf}
    point = verification_point(rec, diverged, source="compare", created_at=0.0)
    assert point["implied_b_crit"] is None and point["ratio"] is None
    assert "says more about the learning rate" in point["learned"]


def test_after_a_loss_of_quality_the_square_root_rule_is_tried_then_a_smaller_batch():
    rec = recommend(profile(), RecommendConfig(), NOISE)
    big = choose(rec, 1024, "linear", "test")
    worse = {"batch_size": 1024, "rule": "linear", "quality": "worse", "verdict": "faster"}
    assert next_attempt(rec, [(1024, "linear")], worse)[:2] == (1024, "sqrt")
    slow = {"batch_size": 1024, "rule": "sqrt", "quality": "equivalent", "verdict": "no measurable difference"}
    batch, rule, why = next_attempt(rec, [(1024, "linear"), (1024, "sqrt")], slow)
    assert batch < 1024 and rule == "sqrt" and "ranks batch" in why
    assert big["recommendation_id"] != rec["recommendation_id"] and big["batch_size"] == 1024
    # nothing left whose interval lies above the baseline's: none
    assert next_attempt(rec, [(64, "linear")], {**slow, "batch_size": 64, "rule": "linear"}) is None


# -- one model of steps -----------------------------------------------------------------------------------------


def test_the_recommender_and_the_schedule_planner_agree_on_the_best_fixed_batch():
    # the single estimate (4096) favours large batches; the curve measured along training (64 then 256) small ones
    curve = [
        {"curve_id": "nois-c", "fraction": f, "b_simple": s, "ci_low": s * 0.8, "ci_high": s * 1.25}
        for f, s in ((0.0, 64.0), (0.5, 128.0), (1.0, 256.0))
    ]
    prof = profile(batches=(32, 64, 128, 256, 512, 1024), b0=32)
    noise = {"b_simple": 4096.0, "ci_low": 3000.0, "ci_high": 5000.0, "id": "n"}
    rec = with_batch_schedule(recommend(prof, RecommendConfig(), noise, curve=curve), curve)
    plan = rec["batch_schedule"]
    assert plan["best_fixed"]["batch_size"] == rec["batch_size"]
    assert plan["best_fixed"]["speedup_over_baseline"] == pytest.approx(
        candidate(rec, rec["batch_size"])["speedup_time_to_target"], rel=1e-9
    )  # priced by the same terms
    assert rec["steps_model"]["kind"] == "curve" and any(
        "as the batch schedule is planned" in r for r in rec["reasons"]
    )
    single = recommend(prof, RecommendConfig(), noise)
    assert single["batch_size"] > rec["batch_size"]  # what the two models disagreed on


def test_the_batches_the_model_cannot_tell_apart_are_said_with_the_recommendation():
    rec = recommend(profile(), RecommendConfig(), {"b_simple": B_SIMPLE, "ci_low": 30.0, "ci_high": 400.0})
    assert len(rec["indistinguishable"]) >= 2 and rec["batch_size"] in rec["indistinguishable"]
    text = next(r for r in rec["reasons"] if "indistinguishable here" in r)
    others = [b for b in rec["indistinguishable"] if b != rec["batch_size"]]
    low, high = candidate(rec, rec["batch_size"])["speedup_interval"]
    assert all(low <= candidate(rec, b)["speedup_time_to_target"] <= high for b in others)
    assert text.startswith(", ".join(map(str, rec["indistinguishable"][:-1])))
    from largestep.ui.overview import _recommendation_text

    assert f"{rec['indistinguishable'][-1]} are indistinguishable here" in _recommendation_text(rec)  # the Overview


# -- the error rate of trying again ------------------------------------------------------------------------------


def test_trying_again_on_identical_arms_stays_within_the_stated_rate_only_with_the_rate_spread_over_the_attempts():
    """Five attempts, 5 seeds an arm, no pair truly faster: stopping at the first "faster" calls one verified at
    most 10% of the time with each attempt at 10%/5 (3.8% here), and 16% of the time with each at the full 10%."""
    from test_headline_errors import MARGIN, SIMS, called, seeds

    rng = np.random.default_rng(11)
    attempts = [(seeds(rng, 5), seeds(rng, 5)) for _ in range(5)]
    spread = np.zeros(SIMS, dtype=bool)
    full = np.zeros(SIMS, dtype=bool)
    for base, other in attempts:
        spread |= called(base, other, 0.1 / 5) == 1
        full |= called(base, other, 0.1) == 1
    assert spread.mean() <= 0.1 + MARGIN, spread.mean()
    assert full.mean() > 0.1 + MARGIN, full.mean()


def test_until_verified_needs_seeds_that_can_reach_its_level_and_fixed_arms(capsys, home):
    from largestep.jobs.autopilot import AutopilotConfig

    with pytest.raises(UsageError, match="use --repeats 4 or more"):
        AutopilotConfig(until_verified=True, repeats=3).validate()
    AutopilotConfig(until_verified=True, repeats=4).validate()
    with pytest.raises(UsageError, match="drop --arms"):
        AutopilotConfig(until_verified=True, repeats=4, arms=("baseline", "fixed", "schedule")).validate()
    code, out, err = run_cli(capsys, "autopilot", "--workload", TINY, "--until-verified", "--repeats", "3")
    assert code == 2 and err.count("\n") == 1 and "--repeats 4 or more" in err
    code, _, err = run_cli(capsys, "autopilot", "--workload", TINY, "--until-verified", "--max-attempts", "zero")
    assert code == 2 and "--max-attempts" in err
    assert not home.jobs.exists() or not any(home.jobs.iterdir())  # nothing started


# -- the autopilot, in process, with its children's spools written by a synthetic world ---------------------------

WORLD_BATCHES = (32, 64, 128, 256, 512)
WORLD_CRITICAL = 600.0  # 3x the noise estimate below


def world_step(b: int) -> float:
    return 0.002 + 2e-5 * b


def spool_profile(home, profile_id: str) -> None:
    device = {"id": "cpu", "kind": "cpu", "name": "test cpu", "total_memory_bytes": 8 * 2**30}
    start = (
        "profile_start",
        {
            "profile_id": profile_id,
            "workload": "tiny-mlp",
            "workload_spec": TINY,
            "device": device,
            "config": {"dtype": "fp32"},
            "baseline_batch_size": 32,
            "baseline_lr": 1e-2,
            "optimizer": "adam",
            "n_train": 2048,
            "epochs": 3,
        },
    )
    rng = np.random.default_rng(0)
    points = [
        (
            "point",
            {
                "profile_id": profile_id,
                "batch_size": b,
                "status": "ok",
                "visits": 4,
                "step_times_s": list(world_step(b) * (1 + 0.005 * np.repeat(rng.standard_normal(4), 10))),
                "median_s": world_step(b),
                "estimate_s": world_step(b),
                "p25_s": world_step(b),
                "p75_s": world_step(b),
                "noisy": False,
                "samples_per_s": b / world_step(b),
                "peak_memory_bytes": 10_000 * b,
                "memory_is_estimate": True,
            },
        )
        for b in WORLD_BATCHES
    ]
    spool_job(
        home,
        profile_id,
        "profile",
        [start, *points, ("profile_end", {"profile_id": profile_id, "stop_reason": "list"})],
    )


def fake_children(monkeypatch, home) -> list[dict]:
    """start_profile, start_noise and start_train write finished spools of the synthetic world; returns the
    trained runs' configs. A rate above the square-root rule's loses 5% of accuracy (the linear rule overshoots)."""
    import largestep.jobs.start as start

    trained: list[dict] = []
    counter = iter(range(10_000))

    def profile(home_, *args, **kwargs):
        job_id = f"prof-{next(counter)}"
        spool_profile(home_, job_id)
        return job_id

    def noise(home_, *args, **kwargs):
        job_id = f"noise-{next(counter)}"
        spool_job(
            home_,
            job_id,
            "noise",
            [
                (
                    "noise_estimate",
                    {
                        "batch_small": 32,
                        "batch_big": 256,
                        "b_simple": WORLD_CRITICAL / 3,
                        "ci_low": 150.0,
                        "ci_high": 260.0,
                        "workload": "tiny-mlp",
                        "device": {"id": "cpu", "kind": "cpu"},
                    },
                )
            ],
        )
        return job_id

    def train(home_, spec, options, device, config, repeats, role=None, recommendation_id=None, launcher=None):
        job_id = f"train-{next(counter)}"
        # a seed from the run's config that holds across processes (hash() of a str is salted per process)
        rng = np.random.default_rng(zlib.crc32(repr((config.batch_size, config.seed, role, config.lr)).encode()))
        overshoots = config.lr > 1e-2 * math.sqrt(config.batch_size / 32) * 1.01
        runs, evals = simulated_runs(
            job_id,
            config.batch_size,
            1,
            rng,
            WORLD_CRITICAL,
            role=role,
            rec_id=recommendation_id,
            lr=config.lr,
            metric=0.85 if overshoots else 0.9,
        )
        run, t = runs[0], world_step(config.batch_size)
        events = [
            (
                "run_start",
                {
                    "config": {
                        "batch_size": config.batch_size,
                        "lr": config.lr,
                        "seed": config.seed,
                        "group": config.group,
                    },
                    "workload": "tiny-mlp",
                    "role": role,
                    "recommendation_id": recommendation_id,
                    "device": {"id": "cpu", "kind": "cpu"},
                    "primary_metric": "accuracy",
                    "primary_metric_mode": "max",
                },
            )
        ]
        events += [
            (
                "eval",
                {k: e[k] for k in ("step", "epoch", "samples", "wall_time_s", "train_time_s", "val_loss")}
                | {"metrics": {"accuracy": run["final_primary_metric"]}},
            )
            for e in evals
        ]
        events.append(
            (
                "run_end",
                {
                    "steps": run["steps"],
                    "train_time_s": run["train_time_s"],
                    "wall_time_s": run["steps"] * t * 1.1,
                    "final_val_loss": run["final_val_loss"],
                    "best_val_loss": run["best_val_loss"],
                    "final_metrics": {"accuracy": run["final_primary_metric"]},
                },
            )
        )
        spool_job(home_, job_id, "train", events)
        trained.append({"batch_size": config.batch_size, "lr": config.lr, "role": role})
        return [job_id]

    monkeypatch.setattr(start, "start_profile", profile)
    monkeypatch.setattr(start, "start_noise", noise)
    monkeypatch.setattr(start, "start_train", train)
    return trained


def run_autopilot(home, job_id: str, **config) -> list[dict]:
    from largestep.jobs import autopilot, events
    from largestep.jobs.runner import JobContext
    from largestep.jobs.spool import Spool

    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    spec = {
        "id": job_id,
        "kind": "autopilot",
        "created_at": time.time(),
        "workload": "tiny-mlp",
        "device": "cpu",
        "params": {"workload": TINY, "options": {}, "device": "cpu", "autopilot": {"accept_load": True, **config}},
    }
    from largestep.jobs.spool import write_json_atomic

    write_json_atomic(job_dir / "spec.json", spec)
    spool = Spool(job_dir)
    spool.emit("start", kind="autopilot", pid=12345)
    autopilot.autopilot_task(JobContext(job_id, job_dir, home, spec, spool))
    spool.emit("exit", state="FINISHED", error=None)
    spool.status(state="FINISHED", pid=12345, phase="done", started_at=time.time(), ended_at=time.time())
    spool.close()
    return events.read_all(job_dir)


@pytest.fixture
def calibrated_home(monkeypatch, home):
    """Two autopilots in the synthetic world: the first --until-verified (its linear pair loses quality, its
    square-root pair is verified), the second a plain one, recommending on the model the first corrected."""
    trained = fake_children(monkeypatch, home)
    first = run_autopilot(home, "auto-1", repeats=4, until_verified=True, max_attempts=2)
    second = run_autopilot(home, "auto-2", repeats=4)
    return home, trained, first, second


def test_until_verified_learns_from_the_failed_pair_tries_the_next_and_the_next_autopilot_is_corrected(calibrated_home):
    home, trained, first, second = calibrated_home
    verifications = [e["verification"] for e in first if e["type"] == "verification"]
    recs = [e["document"] for e in first if e["type"] == "recommendation"]
    assert [v["attempt"] for v in verifications] == [1, 2] and [r["rule"] for r in recs] == ["linear", "sqrt"]
    assert recs[0]["batch_size"] == recs[1]["batch_size"] > 32
    assert not verifications[0]["verified"] and verifications[0]["quality"] == "worse"
    assert verifications[1]["verified"] and verifications[1]["verdict"] == "faster"
    assert recs[1]["correction"]["verifications"] == 1  # the second pair was ranked on the model the first corrected
    result = next(e for e in first if e["type"] == "autopilot_result")
    headline = result["headline"]
    assert headline["text"].startswith(
        "verified on attempt 2 (at most 2 attempts (16 training runs at most), each tested at level 0.05"
    )
    assert headline["until_verified"]["verified"] and [a["rule"] for a in headline["attempts"]] == ["linear", "sqrt"]
    assert result["recommendation_id"] == recs[1]["recommendation_id"]
    assert len(trained) == 2 * 2 * 4 + 2 * 4  # two attempts of two arms, four seeds; then one attempt
    # each attempt was judged at its share of the 10%: 95% intervals
    assert verifications[1]["comparison"]["confidence"] == pytest.approx(0.95)

    rec = next(e["document"] for e in second if e["type"] == "recommendation")
    assert rec["correction"]["verifications"] == 2 and rec["predicted_speedup"]["model"] == "corrected"
    assert rec["correction"]["factor"] == pytest.approx(3.0, rel=0.25)  # the world's B_crit / B_simple
    assert rec["predicted_speedup"]["raw"]["time_to_target"] != rec["predicted_speedup"]["time_to_target"]
    text = next(e for e in second if e["type"] == "autopilot_result")["headline"]["text"]
    raw = rec["predicted_speedup"]["raw"]["time_to_target"]
    assert f"on the corrected noise model, {raw:.2f}x on the raw one (2 verification(s) corrected it)" in text


def test_the_store_lists_every_verification_and_the_cli_prints_them_as_json(calibrated_home, capsys):
    import json

    home, _, _, _ = calibrated_home
    store.ingest(home)
    with store.connect(home) as con:
        rows = store.list_verifications(con)
        assert len(store.step_time_biases(con, "tiny-mlp", "cpu")) == 3
    assert [(r["autopilot_id"], r["attempt"]) for r in rows] == [("auto-1", 1), ("auto-1", 2), ("auto-2", 1)]
    code, out, err = run_cli(capsys, "calibration", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert [v["id"] for v in document["verifications"]] == [r["id"] for r in rows]
    first = document["verifications"][0]
    assert first["measured_steps"] > first["raw_steps"] and first["ratio"] == pytest.approx(3.0, rel=0.25)
    assert {
        "predicted_speedup",
        "measured_speedup",
        "predicted_step_time",
        "measured_step_time",
        "implied_b_crit",
    } <= set(first)
    [correction] = document["corrections"]
    assert correction["workload"] == "tiny-mlp" and correction["verifications"] == 3
    code, out, _ = run_cli(capsys, "calibration")
    assert code == 0 and "tiny-mlp on test cpu: B_crit ≈" in out


@pytest.mark.parametrize("argv", [["--workload", "nope"], ["--device", "tpu-9"]])
def test_a_filter_that_matches_no_verification_is_one_line_naming_those_there_are(calibrated_home, capsys, argv):
    home, _, _, _ = calibrated_home
    code, out, err = run_cli(capsys, "calibration", *argv)
    assert code == 2 and err.count("\n") == 1 and ("verified: tiny-mlp" in err or "verified on: test cpu" in err)


def test_calibration_in_an_empty_home_says_where_to_start_and_creates_nothing(capsys, home):
    code, out, _ = run_cli(capsys, "calibration")
    assert code == 0 and out.startswith("no verifications yet")
    code, out, _ = run_cli(capsys, "calibration", "--json")
    assert code == 0 and '"verifications": []' in out
    assert not home.database.exists()


def test_the_calibration_page_plots_every_verification_and_opens_a_points_comparison(calibrated_home, monkeypatch):
    home, _, _, _ = calibrated_home
    at = open_page(monkeypatch, home, "calibration")
    with store.connect(home) as con:
        rows = store.list_verifications(con)
    figure = at.get("plotly_chart")[0].proto.spec
    for row in rows:
        assert row["id"] in figure  # every point, by its id
    assert "y = x" in figure and "tiny-mlp · test cpu" in figure
    assert any("tiny-mlp on test cpu: B_crit ≈" in box.value for box in at.info)
    table = at.dataframe[0].value  # the verifications; the comparison of the open one below it
    assert list(table["verification"]) == [r["id"] for r in rows]
    # the newest point is open; pick the failed first attempt instead
    at.selectbox(key="calibration.selected").select(rows[0]["id"]).run()
    assert not at.exception
    comparison = at.dataframe[1].value
    assert list(comparison["group"]) == ["baseline", "recommended"]
    link = next(m.value for m in at.markdown if "Its runs on the Runs page" in m.value)
    assert all(f"run={run}" in link for run in rows[0]["baseline_runs"] + rows[0]["recommended_runs"])
    assert any("Not verified" in w.value for w in at.warning)


def test_an_autopilot_from_before_verifications_becomes_a_calibration_point(monkeypatch, home):
    """Its spool has a recommendation and a comparison but no verification event: the next autopilot derives the
    point from them, as the store's migration does from its rows."""
    from largestep.jobs.autopilot import earlier_verifications

    rng = np.random.default_rng(5)
    rec = recommend(profile(), RecommendConfig(), NOISE)
    comparison = verify(rec, 3, rng)
    spool_job(
        home,
        "auto-old",
        "autopilot",
        [
            ("recommendation", {"document": rec}),
            (
                "autopilot_result",
                {"headline": {"text": "x"}, "comparison": comparison, "recommendation_id": rec["recommendation_id"]},
            ),
        ],
    )
    [point] = earlier_verifications(home, "synthetic", "cpu")
    assert point["autopilot_id"] == "auto-old" and point["ratio"] == pytest.approx(3.0, rel=0.2)
    assert earlier_verifications(home, "synthetic", "cuda:0") == []


def test_the_migration_turns_stored_autopilots_into_verifications(home):
    import json

    import duckdb

    from largestep.store.migrations import MIGRATIONS, migrate

    rng = np.random.default_rng(6)
    rec = recommend(profile(), RecommendConfig(), NOISE)
    comparison = verify(rec, 3, rng)
    home.ensure()
    con = duckdb.connect(str(home.database))
    migrate(con, MIGRATIONS[:15])  # a home from before verifications
    con.execute("INSERT INTO jobs (id, kind, state, spool_offset) VALUES ('auto-old', 'autopilot', 'FINISHED', 0)")
    con.execute(
        "INSERT INTO recommendations (id, document, workload, device_id) VALUES (?, ?, 'synthetic', 'cpu')",
        [rec["recommendation_id"], json.dumps(rec)],
    )
    con.execute(
        "INSERT INTO autopilots (id, recommendation_id, comparison, updated_at) VALUES (?, ?, ?, now())",
        ["auto-old", rec["recommendation_id"], json.dumps(comparison)],
    )
    con.close()
    with store.connect(home) as con:
        [row] = store.list_verifications(con)
        assert row["autopilot_id"] == "auto-old" and row["ratio"] == pytest.approx(3.0, rel=0.2)
        assert store.verification_points(con, "synthetic", "cpu")[0]["id"] == row["id"]


def test_the_overview_checkbox_and_the_python_api_ask_for_until_verified_and_refuse_too_few_seeds(
    monkeypatch, tmp_path
):
    import largestep
    from test_overview import open_overview, write_config

    from largestep.api.results import Autopilot
    from largestep.home import Home
    from largestep.ui import overview

    write_config(tmp_path, f'workloads = [{{ name = "tiny", spec = "{TINY}" }}]\n')
    home = Home(tmp_path / "home")
    at = open_overview(monkeypatch, home, tmp_path)
    at.selectbox(key="overview.workload").set_value("tiny").run()
    at.checkbox(key="overview.until_verified").check()
    at.button(key="overview.start").click().run()
    assert [e.value for e in at.error if "--repeats 4 or more" in e.value]
    assert not home.jobs.exists() or not any(home.jobs.iterdir())  # refused before anything started
    choices, _ = overview.workload_choices(str(tmp_path))
    _, _, config = overview.autopilot_request(overview.AutopilotForm("tiny", repeats=4, until_verified=True), choices)
    assert config.until_verified and config.attempts == 2 and config.alpha == pytest.approx(0.05)

    with pytest.raises(UsageError, match="--repeats 4 or more"):
        largestep.autopilot(TINY, until_verified=True, repeats=3, home=home, quiet=True)
    assert not home.jobs.exists() or not any(home.jobs.iterdir())
    result = Autopilot.of(
        {
            "autopilot_id": "auto-1",
            "headline": {
                "text": "verified on attempt 2 ...",
                "until_verified": {"verified": True},
                "attempts": [{"attempt": 1}, {"attempt": 2}],
            },
        }
    )
    assert result.verified and [a["attempt"] for a in result.attempts] == [1, 2]
    assert Autopilot.of({"autopilot_id": "auto-2", "headline": {"text": "x"}}).verified is None
