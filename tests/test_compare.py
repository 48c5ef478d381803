"""Verification statistics: censored times to target, the speedup's interval, quality with an equivalence
statement, the autopilot's headline, and the arms interleaved on the device."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from largestep.jobs.autopilot import headline, keep_baseline_headline, prediction_factors
from largestep.plan.compare import compare_groups, comparison_runs, comparison_table, km_median, quality_verdict


def evals_for(times: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """run id -> [(training time, validation loss), ...] as the store's evaluations."""
    return pd.DataFrame(
        [
            {
                "run_id": run,
                "step": 10 * (k + 1),
                "epoch": k + 1,
                "samples": 0,
                "wall_time_s": t + 1,
                "train_time_s": t,
                "val_loss": loss,
            }
            for run, points in times.items()
            for k, (t, loss) in enumerate(points)
        ]
    )


def run(
    run_id: str,
    seed: int,
    best: float,
    train_time: float,
    steps: int = 100,
    metric: float | None = 0.9,
    batch: int = 32,
) -> dict:
    return {
        "id": run_id,
        "seed": seed,
        "state": "FINISHED",
        "best_val_loss": best,
        "final_val_loss": best,
        "primary_metric": "accuracy" if metric is not None else None,
        "primary_metric_mode": "max",
        "final_primary_metric": metric,
        "batch_size": batch,
        "lr": 1e-3,
        "train_time_s": train_time,
        "steps": steps,
    }


def test_km_median_counts_censored_runs_as_at_least_their_time():
    assert km_median([10.0, 20.0, 30.0], []) == (20.0, None)
    assert km_median([10.0, 12.0], [30.0]) == (12.0, None)  # two of three reached by 12 s
    assert km_median([10.0], [30.0, 31.0]) == (None, 31.0)  # fewer than half reached: only a bound
    assert km_median([], [40.0]) == (None, 40.0)


def test_a_seed_that_never_reaches_the_target_is_censored_not_dropped():
    """The failure users saw: seeds that never reached the target silently left out of the means, so one
    lucky seed made the headline. Now they count as at least their whole training time."""
    times = {
        "b0": [(50, 0.6), (100, 0.5)],
        "b1": [(55, 0.6), (110, 0.5)],
        "b2": [(52, 0.6), (104, 0.5)],
        "r0": [(10, 0.6), (20, 0.5)],  # one lucky seed reaches the target fast ...
        "r1": [(100, 0.7), (200, 0.65)],
        "r2": [(100, 0.7), (200, 0.66)],
    }  # ... two never do
    groups = [
        ("baseline", [run("b0", 0, 0.5, 110), run("b1", 1, 0.5, 110), run("b2", 2, 0.5, 110)]),
        (
            "recommended",
            [run("r0", 0, 0.5, 20, batch=256), run("r1", 1, 0.65, 200, batch=256), run("r2", 2, 0.66, 200, batch=256)],
        ),
    ]
    result = compare_groups(groups, evals_for(times), tolerance=0.0)
    base, rec = result["groups"]
    # the old arithmetic: the mean over the seeds that reached it, 104.7 s / 20 s = 5.2x "faster"
    assert base["time_to_target_s"]["mean"] / rec["time_to_target_s"]["mean"] == pytest.approx(
        (100 + 110 + 104) / 3 / 20
    )
    assert base["time_to_target"]["median_s"] == 104
    assert rec["time_to_target"] == {
        "median_s": None,
        "at_least_s": 200,
        "reached": 1,
        "n": 3,
        "censored_runs": ["r1", "r2"],
    }
    assert rec["speedup"] is None  # no speedup is claimed
    rec_doc = {
        "batch_size": 256,
        "learning_rate": 8e-3,
        "baseline": {"batch_size": 32, "learning_rate": 1e-3},
        "predicted_speedup": {"time_to_target": 2.5, "throughput": 4.0},
        "noise_scale": 1000.0,
        "candidates": [{"batch_size": 32, "step_time_s": 0.01}, {"batch_size": 256, "step_time_s": 0.02}],
        "device": {"name": "cpu"},
    }
    assert rec["speedup_bound"] == {"kind": "at most", "value": pytest.approx(104 / 200)}  # only a bound is known
    line = headline(rec_doc, result)
    assert "at most 0.52×" in line["text"] and "reached in 1 of 3 seeds" in line["text"]
    assert "faster" not in line["text"] and line["verdict"]["word"] == "at most" and not line["verdict"]["decisive"]
    assert "recommended seed 1 (200 s)" in line["text"] and "recommended seed 2 (200 s)" in line["text"]
    assert [c["run"] for c in line["censored"]] == ["r1", "r2"]


def test_the_speedup_has_an_interval_that_holds_the_truth():
    base_times, rec_times = [100, 104, 98, 102], [25, 26, 24, 25.5]
    times = {f"b{k}": [(t, 0.5)] for k, t in enumerate(base_times)} | {
        f"r{k}": [(t, 0.5)] for k, t in enumerate(rec_times)
    }
    groups = [
        ("baseline", [run(f"b{k}", k, 0.5, t) for k, t in enumerate(base_times)]),
        ("recommended", [run(f"r{k}", k, 0.5, t) for k, t in enumerate(rec_times)]),
    ]
    result = compare_groups(groups, evals_for(times), tolerance=0.0)
    rec = result["groups"][1]
    low, high = rec["speedup_interval"]
    assert low <= 4.0 <= high and high - low < 0.5
    assert rec["speedup"] == pytest.approx(100 / 25)
    row = comparison_table(result)[1]
    assert row["speedup"].startswith("4.00×") and "–" in row["speedup"] and row["reached"] == "4 of 4"


@pytest.mark.parametrize(
    "difference, interval, mode, verdict",
    [
        (0.001, [-0.004, 0.006], "max", "equivalent"),
        (-0.05, [-0.08, -0.02], "max", "worse"),  # accuracy fell by more than the tolerance
        (-0.05, [-0.08, -0.02], "min", "better"),  # a loss fell by more than the tolerance
        (0.01, [-0.03, 0.05], "max", "inconclusive"),  # more seeds would tell
        (0.01, None, "max", "inconclusive"),
    ],
)
def test_quality_is_judged_by_its_interval_against_a_tolerance(difference, interval, mode, verdict):
    assert quality_verdict(difference, interval, 0.01, mode) == verdict


def test_without_a_metric_the_final_validation_loss_is_compared():
    times = {f"{arm}{k}": [(10.0 if arm == "b" else 5.0, 0.5)] for arm in "br" for k in range(3)}
    groups = [
        ("baseline", [run(f"b{k}", k, 0.5, 10, metric=None) for k in range(3)]),
        ("recommended", [run(f"r{k}", k, 0.5 + 0.0001 * k, 5, metric=None) for k in range(3)]),
    ]
    result = compare_groups(groups, evals_for(times), tolerance=0.01)
    quality = result["groups"][1]["quality"]
    assert result["quality"]["name"] == "final validation loss" and result["quality"]["mode"] == "min"
    assert quality["difference"] == pytest.approx(0.0001) and quality["verdict"] == "equivalent"
    assert result["groups"][1]["metric_difference"] is None  # no workload metric to speak of


def test_the_prediction_is_split_into_two_factors_that_multiply_to_the_headline():
    """The measured factors are on the headline's censored basis (Kaplan-Meier medians of steps and of time),
    so steps factor / time-per-step factor is the measured speedup, censored seeds included."""
    times = {
        "b0": [(10, 0.5)],
        "b1": [(12, 0.5)],
        "b2": [(11, 0.5)],
        "r0": [(4, 0.5)],
        "r1": [(5, 0.5)],
        "r2": [(8, 0.6)],
    }  # r2 never reaches it: censored at 8 s
    groups = [
        (
            "baseline",
            [run("b0", 0, 0.5, 20, steps=200), run("b1", 1, 0.5, 24, steps=200), run("b2", 2, 0.5, 22, steps=200)],
        ),
        (
            "recommended",
            [
                run("r0", 0, 0.5, 8, steps=40, batch=256),
                run("r1", 1, 0.5, 10, steps=40, batch=256),
                run("r2", 2, 0.6, 8, steps=40, batch=256),
            ],
        ),
    ]
    evals = evals_for(times)
    evals.loc[evals["run_id"].str.startswith("r"), "step"] = 5  # the recommended runs reach it at step 5
    result = compare_groups(groups, evals, tolerance=0.0)
    rec_doc = {
        "batch_size": 256,
        "baseline": {"batch_size": 32},
        "noise_scale": 224.0,
        "candidates": [{"batch_size": 32, "step_time_s": 0.1}, {"batch_size": 256, "step_time_s": 0.15}],
    }
    factors = prediction_factors(rec_doc, result)
    assert factors["step_time_ratio"]["predicted"] == pytest.approx(1.5)
    assert factors["steps_ratio"]["predicted"] == pytest.approx((1 + 224 / 32) / (1 + 224 / 256))
    steps, step_time = factors["steps_ratio"]["measured"], factors["step_time_ratio"]["measured"]
    assert steps == pytest.approx(10 / 5)  # median steps: the baseline's first evaluation, step 10
    assert steps / step_time == pytest.approx(result["groups"][1]["speedup"])  # they multiply to the headline
    assert result["groups"][1]["speedup"] == pytest.approx(11 / 5)


def test_keeping_the_baseline_is_said_plainly_and_claims_nothing():
    rec = {
        "batch_size": 64,
        "learning_rate": 1e-3,
        "baseline": {"batch_size": 64, "learning_rate": 1e-3},
        "predicted_speedup": {"time_to_target": 1.0, "throughput": 1.0},
        "device": {"name": "cpu"},
        "reasons": ["batch 128 is predicted 1.2x slower to the target"],
    }
    line = keep_baseline_headline(rec)
    assert line["text"].startswith("keep your baseline") and "because batch 128" in line["text"]
    assert line["kept_baseline"] and line["measured_speedup"] is None


def test_the_prediction_carries_its_own_interval_with_a_stated_coverage():
    from largestep.plan.recommend import RecommendConfig, recommend

    def profile(spread: float) -> dict:
        rng = np.random.default_rng(0)
        points = [
            {
                "batch_size": b,
                "status": "ok",
                "median_s": t,
                "visits": 8,
                "step_times_s": list(t * (1 + spread * np.repeat(rng.standard_normal(8), 20))),
            }
            for b, t in ((32, 0.010), (256, 0.020))
        ]
        return {"id": "prof-x", "points": points, "baseline_batch_size": 32, "baseline_lr": 1e-3, "n_train": 10_000}

    noise = {"b_simple": 1000.0, "ci_low": 500.0, "ci_high": 2000.0, "id": "n"}
    speed = recommend(profile(0.05), RecommendConfig(), noise)["predicted_speedup"]
    low, high = speed["time_to_target_interval"]
    assert speed["coverage"] == 0.90 and low < speed["time_to_target"] < high
    assert "noise scale within its bootstrap interval" in speed["interval_basis"]
    # the noise scale's interval alone bounds it from inside: the corners with step times as measured
    assert low < (1 + 500 / 32) / (1 + 500 / 256) * 0.5 < (1 + 2000 / 32) / (1 + 2000 / 256) * 0.5 < high
    # visits that disagree more widen it; a measured profile-to-run bias moves it
    wider = recommend(profile(0.2), RecommendConfig(), noise)["predicted_speedup"]["time_to_target_interval"]
    assert wider[1] - wider[0] > high - low
    biased_rec = recommend(profile(0.05), RecommendConfig(), noise, biases=[1.3, 1.4])
    biased = biased_rec["predicted_speedup"]
    assert biased["time_to_target_interval"][1] < high and "2 earlier verification" in biased["interval_basis"]
    # the bias is of the step-time ratio between two batches: the baseline over itself stays exactly 1x
    (baseline,) = [c for c in biased_rec["candidates"] if c["batch_size"] == 32]
    assert baseline["speedup_time_to_target"] == 1.0 and baseline["speedup_interval"] == [1.0, 1.0]


def test_a_verification_of_the_baseline_against_itself_teaches_no_step_time_bias():
    from largestep.plan.calibration import step_time_bias

    pair = {"baseline_batch": 128, "measured_step_time": 1.5, "predicted_step_time": 1.72, "step_time_bias": None}
    assert step_time_bias({**pair, "batch_size": 256}) == pytest.approx(1.5 / 1.72)
    assert step_time_bias({**pair, "batch_size": 128}) is None  # run-to-run noise, not the profile's ratio


def test_a_comparison_is_decisive_only_when_its_verdict_says_faster_slower_or_equivalent():
    from largestep.jobs.autopilot import decisive

    def comparison(word, verdict):
        return {"groups": [{}, {"verdict": {"word": word}, "quality": {"verdict": verdict}}]}

    assert decisive(comparison("faster", "inconclusive")).startswith("the speedup's interval lies above 1")
    assert decisive(comparison("slower", "inconclusive")).startswith("the speedup's interval lies below 1")
    assert (
        decisive(comparison("no measurable difference", "equivalent"))
        == "the quality difference's interval lies within the tolerance"
    )
    for word in ("no measurable difference", "at least", "at most", "too few seeds to say"):  # never on a bound
        assert decisive(comparison(word, "inconclusive")) is None
    assert decisive({"groups": []}) is None


def test_only_an_autopilot_asked_to_be_decisive_says_whether_it_was():
    times = {"b0": [(10, 0.5)], "b1": [(11, 0.5)], "r0": [(5, 0.5)], "r1": [(6, 0.5)]}
    groups = [
        ("baseline", [run("b0", 0, 0.5, 20), run("b1", 1, 0.5, 22)]),
        ("recommended", [run("r0", 0, 0.5, 10, batch=256), run("r1", 1, 0.5, 12, batch=256)]),
    ]
    result = compare_groups(groups, evals_for(times), tolerance=0.0)
    rec = {
        "batch_size": 256,
        "learning_rate": 8e-3,
        "baseline": {"batch_size": 32, "learning_rate": 1e-3},
        "predicted_speedup": {"time_to_target": 2.0, "throughput": 4.0},
        "noise_scale": None,
        "candidates": [{"batch_size": 32, "step_time_s": 0.01}, {"batch_size": 256, "step_time_s": 0.02}],
        "device": {"name": "cpu"},
    }
    assert "decisive" not in headline(rec, result)["text"]
    levels = {2: 0.05, 3: 0.05}
    text = headline(rec, result, "the speedup's interval lies above 1", 2, levels)["text"]
    assert "decisive after 2 seed pairs: the speedup's interval lies above 1, look 1 of 2 at level 0.05" in text
    assert "alpha spending" in text
    assert "not decisive after 2 seed pairs" in headline(rec, result, None, 2, levels)["text"]


# -- the conditions the runs ran under ---------------------------------------------------------------------------


def loaded(record: dict, cpu_pct: float | None, gpu_processes: int | None = None, gpu_bytes: int | None = None) -> dict:
    """A run record with the background load its job measured."""
    return {
        **record,
        "background_cpu_pct": cpu_pct,
        "background_gpu_processes": gpu_processes,
        "background_gpu_mem_bytes": gpu_bytes,
    }


def loaded_comparison(base_loads: list, rec_loads: list) -> dict:
    """Three seeds an arm, alike in every way but the background load of each run."""
    times = {f"b{k}": [(100, 0.5)] for k in range(3)} | {f"r{k}": [(50, 0.5)] for k in range(3)}
    groups = [
        ("baseline", [loaded(run(f"b{k}", k, 0.5, 100), *load) for k, load in enumerate(base_loads)]),
        ("recommended", [loaded(run(f"r{k}", k, 0.5, 50, batch=256), *load) for k, load in enumerate(rec_loads)]),
    ]
    return compare_groups(groups, evals_for(times), tolerance=0.0)


REC_DOC = {
    "batch_size": 256,
    "learning_rate": 8e-3,
    "baseline": {"batch_size": 32, "learning_rate": 1e-3},
    "predicted_speedup": {"time_to_target": 2.0, "throughput": 4.0},
    "noise_scale": None,
    "candidates": [{"batch_size": 32, "step_time_s": 0.01}, {"batch_size": 256, "step_time_s": 0.02}],
    "device": {"name": "cpu"},
}


def test_runs_under_the_same_background_load_are_not_flagged():
    result = loaded_comparison([(3.0,), (5.0,), (4.0,)], [(12.0,), (2.0,), (6.0,)])
    assert result["conditions"]["differed"] is False and result["conditions"]["text"] is None
    assert "conditions differed" not in headline(REC_DOC, result)["text"]
    assert [row["background CPU"] for row in comparison_table(result)] == ["4%", "6%"]


def test_one_run_under_heavy_background_load_is_named_with_its_load_and_the_others():
    """The failure users saw: one baseline seed trained while the machine was busy, and nothing said so."""
    result = loaded_comparison([(2.0,), (45.0,), (4.0,)], [(3.0,), (1.0,), (4.4,)])
    conditions = result["conditions"]
    assert conditions["differed"] and conditions["flagged_runs"] == ["b1"]
    assert conditions["text"] == (
        "baseline seed 1 ran with 45% of the CPU busy with other processes; the others with 1% to 4%"
    )
    assert "conditions differed: baseline seed 1 ran with 45% of the CPU" in headline(REC_DOC, result)["text"]
    assert headline(REC_DOC, result)["conditions_differed"] == conditions["text"]
    flagged = {row["run"]: row["conditions"] for row in comparison_runs(result)}
    assert flagged == {"b0": "", "b1": "differed", "b2": "", "r0": "", "r1": "", "r2": ""}
    assert comparison_table(result)[0]["background CPU"] == "4% (differed)"


def test_arms_under_different_background_load_are_flagged_as_arms():
    # every baseline seed ran while another job was busy, every recommended seed on a quiet machine
    result = loaded_comparison([(48.0,), (52.0,), (45.0,)], [(3.0,), (1.0,), (4.0,)])
    assert result["conditions"]["text"] == (
        "the baseline runs ran with a median 48% of the CPU busy with other processes, the recommended runs with 3%"
    )
    assert sorted(result["conditions"]["flagged_runs"]) == ["b0", "b1", "b2", "r0", "r1", "r2"]


def test_a_run_that_shared_its_gpu_is_flagged():
    result = loaded_comparison([(2.0, 0), (2.0, 0), (2.0, 0)], [(2.0, 2, 3 * 2**30), (2.0, 0), (2.0, 0)])
    assert result["conditions"]["text"] == (
        "recommended seed 0 shared its GPU with 2 other processes (3.0 GiB); the others with 2%, the GPU to themselves"
    )


def test_runs_that_did_not_measure_their_load_are_not_flagged():
    # runs from before the load was recorded (NaN from the store's NULL), or tracked without it
    result = loaded_comparison([(None,), (float("nan"),), (None,)], [(None,), (None,), (50.0,)])
    assert result["conditions"]["differed"] is False
    assert [row["background CPU"] for row in comparison_table(result)] == ["—", "50%"]


# -- what the words may say ------------------------------------------------------------------------------------


def arms(
    base_times: list[float], rec_times: list[float | None], rec_states: list[str] | None = None, metric: float = 0.9
) -> dict:
    """A comparison of a baseline and a recommended arm, each seed reaching the target at the time given
    (None: a run that ended without a training time or an evaluation, in the state given)."""
    times = {f"b{k}": [(t, 0.5)] for k, t in enumerate(base_times)}
    times |= {f"r{k}": [(t, 0.5)] for k, t in enumerate(rec_times) if t is not None}
    rec_runs = []
    for k, t in enumerate(rec_times):
        record = (
            run(f"r{k}", k, 0.5, t, batch=256, metric=metric)
            if t is not None
            else {
                **run(f"r{k}", k, None, None, batch=256, metric=None),
                "train_time_s": None,
                "steps": None,
                "final_val_loss": None,
            }
        )
        rec_runs.append({**record, "state": (rec_states or ["FINISHED"] * len(rec_times))[k]})
    groups = [("baseline", [run(f"b{k}", k, 0.5, t) for k, t in enumerate(base_times)]), ("recommended", rec_runs)]
    return compare_groups(groups, evals_for(times), tolerance=0.0)


def test_crashed_and_diverged_seeds_are_censored_not_dropped_and_count_against_equivalence():
    """One recommended seed reached the target at 20 s, one crashed and one diverged with no training time.
    Dropping the two would leave one lucky seed: a 5.25x headline. Censored at infinity, fewer than half
    reached it: no speedup, and the quality cannot be called equivalent from the one survivor."""
    result = arms([100, 105, 110], [20, None, None], ["FINISHED", "CRASHED", "DIVERGED"])
    rec = result["groups"][1]
    assert rec["speedup"] is None and rec["time_to_target"]["median_s"] is None
    assert rec["verdict"]["word"] == "at most" and rec["verdict"]["cell"] == "not reached"
    assert rec["quality"]["verdict"] == "seeds failed"
    assert [f["state"] for f in rec["quality"]["failed"]] == ["CRASHED", "DIVERGED"]
    line = headline(REC_DOC, result)
    assert "5.25" not in line["text"] and "faster" not in line["text"]
    assert "recommended seed 1 crashed, recommended seed 2 diverged" in line["text"]
    assert line["tone"] == "bad"  # never a success box
    assert comparison_table(result)[1]["quality"].startswith("seeds failed (recommended seed 1 crashed")


def test_one_failed_seed_of_three_leaves_a_ratio_but_no_call_and_no_equivalence():
    result = arms([100, 105, 110], [50, 52, None], ["FINISHED", "FINISHED", "DIVERGED"])
    rec = result["groups"][1]
    assert rec["speedup"] == pytest.approx(105 / 52)  # two of three reached it: a median
    assert rec["speedup_interval"][0] is None  # ... whose low end the diverged seed leaves open
    assert "both medians reached in" in rec["verdict"]["text"]  # and the resamples that were bounds are counted
    assert rec["verdict"]["word"] == "no measurable difference" and not rec["verdict"]["decisive"]
    assert rec["quality"]["verdict"] == "seeds failed"


def test_fewer_than_three_seeds_an_arm_give_the_ratio_and_too_few_seeds_to_say():
    """Two seeds an arm: a bootstrap interval is always [min/max, max/min] and covers a true 2x 59% of the time;
    one seed each printed a bare "15.32x". Now the ratio, and no word."""
    for base, rec_times in (([100.0], [10.0]), ([100.0, 104.0], [50.0, 51.0])):
        result = arms(base, rec_times)
        rec = result["groups"][1]
        assert rec["speedup_interval"] is None and rec["verdict"]["word"] == "too few seeds to say"
        assert rec["verdict"]["cell"] == f"{rec['speedup']:.2f}× (too few seeds to say)"
        assert rec["quality"]["verdict"] == "too few seeds to say" and "faster" not in headline(REC_DOC, result)["text"]


@pytest.mark.parametrize(
    "base_times, rec_times, word, starts",
    [
        ([100, 104, 98], [50, 52, 49], "faster", "2.00× faster (90% interval "),
        ([50, 52, 49], [100, 104, 98], "slower", "slower: 0.50× (90% interval "),  # never "0.50x faster"
        ([100, 80, 120], [90, 125, 76], "no measurable difference", "no measurable difference (90% interval "),
    ],
)
def test_one_grammar_faster_only_above_1_slower_below_no_difference_otherwise(base_times, rec_times, word, starts):
    result = arms(base_times, rec_times)
    verdict = result["groups"][1]["verdict"]
    assert verdict["word"] == word and verdict["text"].startswith(starts), verdict["text"]
    assert "exact test p = 0.1" in verdict["text"] or word == "no measurable difference"
    assert comparison_table(result)[1]["speedup"] == verdict["cell"]
    assert verdict["text"] in headline(REC_DOC, result)["text"]


def test_a_worse_quality_turns_even_a_faster_headline_away_from_success():
    """A one-click autopilot on fraud-mlp: faster, but its average precision worse beyond the tolerance, was
    shown in a green success box."""
    result = arms([100, 104, 98], [50, 52, 49], metric=0.5)  # accuracy 0.9 -> 0.5
    assert result["groups"][1]["verdict"]["word"] == "faster"
    assert result["groups"][1]["quality"]["verdict"] == "worse"
    assert headline(REC_DOC, result)["tone"] == "bad"
    from largestep.ui.overview import AutopilotView

    view = AutopilotView(
        id="a",
        workload="w",
        device="cpu",
        state="FINISHED",
        live=False,
        progress=1.0,
        phase="done",
        phases=[],
        caption="",
        headline=headline(REC_DOC, result),
    )
    assert view.tone == "bad" and not view.good_news


def test_when_every_run_ran_under_a_load_of_its_own_there_are_no_others_to_speak_of():
    result = loaded_comparison([(65.8,), (33.0,), (3.2,)], [(53.3,), (3.6,), (3.0,)])  # a busy machine, measured
    assert result["conditions"]["differed"] and "the others" not in result["conditions"]["text"]
