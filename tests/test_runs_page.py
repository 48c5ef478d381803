"""The Runs page: real runs in a home, the page run headless with AppTest, the downsampling query
on a real DuckDB, and the pure chart builders of largestep.ui.charts.runs."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from helpers import APP, TINY, first_time_at_or_below, open_page, wait_finished
from streamlit.testing.v1 import AppTest

from largestep import jobs, store
from largestep.home import HOME_ENV, Home
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig
from largestep.ui import runs as runviews
from largestep.ui.charts import runs as runcharts

BASE, BIG = "grp-base", "grp-big"


@pytest.fixture(scope="module")
def runs_home(tmp_path_factory) -> Home:
    """Two groups of two seeds of the tiny workload (batch 32 and batch 128), trained by real jobs.

    Each group queues on a lock key of its own, so the two groups train side by side (as on two
    devices) and the fixture stays short; their timings are not what this module tests.
    """
    home = Home(tmp_path_factory.mktemp("runs") / "home")
    ids = []
    for group, batch, lr, role in ((BASE, 32, 1e-2, "baseline"), (BIG, 128, 4e-2, "recommended")):
        for seed in (0, 1):
            config = TrainConfig(batch_size=batch, lr=lr, epochs=2, seed=seed, group=group, log_every_steps=4)
            params = {
                "workload": TINY,
                "options": {},
                "device": "cpu",
                "config": asdict(config),
                "role": role,
                "recommendation_id": None,
            }
            ids.append(jobs.submit(home, "train", params, device=f"cpu-{group}", workload="tiny-mlp"))
    for run in ids:
        wait_finished(home, run, timeout_s=180)
    store.ingest(home)
    return home


def open_runs_page(monkeypatch, home: Home) -> AppTest:
    return open_page(monkeypatch, home, "runs")


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def legend_names(figure: dict) -> list[str]:
    return [t["name"] for t in figure["data"] if t.get("showlegend") is not False]


def all_ids(home: Home) -> list[str]:
    with store.connect(home) as con:
        return list(store.list_runs(con)["id"])


def expected_speedup(home: Home, tolerance: float = 0.01) -> float:
    """The big group's speedup over the baseline, from stored evaluations (independent of compare)."""
    with store.connect(home) as con:
        runs = store.frame_records(store.list_runs(con))
        evals = store.run_evaluations(con, [r["id"] for r in runs])
    best = statistics.median(r["best_val_loss"] for r in runs if r["group_id"] == BASE)
    target = best * (1 + tolerance)
    times = {
        group: [
            t
            for t in (first_time_at_or_below(evals, r["id"], target) for r in runs if r["group_id"] == group)
            if t is not None
        ]
        for group in (BASE, BIG)
    }
    assert len(times[BASE]) == 1 and len(times[BIG]) == 1, times
    return statistics.fmean(times[BASE]) / statistics.fmean(times[BIG])


# -- the page --------------------------------------------------------------------------------------


def test_an_empty_home_shows_how_to_start(monkeypatch, tmp_path):
    at = open_runs_page(monkeypatch, Home(tmp_path / "empty"))
    assert runviews.START_MESSAGE in [i.value for i in at.info]
    assert not at.error and not list(at.get("plotly_chart"))


def test_the_table_lists_every_run_and_the_latest_groups_are_charted_at_once(monkeypatch, runs_home):
    at = open_runs_page(monkeypatch, runs_home)
    table = at.dataframe[0].value
    assert sorted(table["id"]) == sorted(all_ids(runs_home))
    assert set(table["state"]) == {jobs.FINISHED}
    assert sorted(table["batch"]) == [32, 32, 128, 128]
    assert set(table["group"]) == {BASE, BIG} and all(table["duration"].str.len() > 0)
    # as right after an autopilot: both groups charted before anything is picked
    assert sorted(at.multiselect(key="runs.selected").value) == sorted(all_ids(runs_home))
    assert list(at.get("plotly_chart"))
    assert not at.error


def test_the_default_selection_is_the_newest_two_groups_a_lone_run_counting_as_one():
    runs = pd.DataFrame(
        {
            "id": ["r6", "r5", "r4", "r3", "r2", "r1"],  # newest first
            "group_id": ["g3", "g3", None, "g2", "g1", "g1"],
        }
    )
    assert runviews.default_selection(runs) == ["r6", "r5", "r4"]
    assert runviews.default_selection(runs.iloc[3:]) == ["r3", "r2", "r1"]
    assert runviews.default_selection(runs.iloc[:0]) == []


def test_selected_runs_are_charted_and_groups_compared(monkeypatch, runs_home):
    at = open_runs_page(monkeypatch, runs_home)
    ids = all_ids(runs_home)
    at.multiselect(key="runs.selected").set_value(ids).run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    curves, comparison = figures(at)
    labels = legend_names(curves)
    assert len(labels) == len(ids) and all(any(i in label for label in labels) for i in ids)
    assert curves["layout"]["uirevision"]
    assert {t["name"] for t in comparison["data"] if t.get("showlegend") is not False} == {
        "baseline · batch 32, lr 0.01 (2 runs)",
        "recommended · batch 128, lr 0.04 (2 runs)",
    }

    assert at.selectbox(key="runs.baseline").value == BASE  # the group whose role is baseline
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Baseline time to target"].endswith(" s")
    # With these seeds one run of each group gets to the baseline's target (its best validation
    # losses, 0.065 and 0.078, have a median of 0.071; batch 128 gets to 0.069 and 0.080), so the
    # speedup is the one seed's time over the other's, as the store kept them (the other seed of each counts
    # as at least its whole training time, which leaves the reached one the median of two)
    speedup = metrics["Speedup of recommended · batch 128, lr 0.04"]
    # two seeds a group: the ratio, and no word about it (three an arm are needed)
    assert speedup == f"{expected_speedup(runs_home):.2f}× (too few seeds to say)", speedup
    groups = at.dataframe[1].value
    assert list(groups["group"]) == [BASE, BIG] and groups["speedup"].iloc[0] == "baseline"


def test_a_link_naming_runs_opens_with_them_charted_and_the_address_follows_the_selection(monkeypatch, runs_home):
    ids = all_ids(runs_home)
    monkeypatch.setenv(HOME_ENV, str(runs_home.root))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["run"] = [ids[0], "no-such-run"]
    at.switch_page("sections/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="runs.selected").value == [ids[0]]  # an unknown id is left out
    assert list(at.get("plotly_chart"))
    at.multiselect(key="runs.selected").set_value(ids[:2]).run()
    assert at.query_params["run"] == ids[:2]


def test_the_chart_follows_metric_axis_and_log_toggles(monkeypatch, runs_home):
    at = open_runs_page(monkeypatch, runs_home)
    ids = all_ids(runs_home)[:1]
    at.multiselect(key="runs.selected").set_value(ids).run()
    assert {"train_loss", "val_loss", "lr", "val_accuracy"} <= set(at.selectbox(key="runs.metric").options)
    at.selectbox(key="runs.metric").set_value("val_loss")
    at.selectbox(key="runs.x").set_value("train_time_s")
    at.toggle(key="runs.log_y").set_value(True).run()
    assert not at.exception
    (curves,) = figures(at)  # one run: no comparison
    assert curves["layout"]["yaxis"]["type"] == "log" and curves["layout"]["xaxis"]["type"] == "linear"
    assert "training time" in curves["layout"]["xaxis"]["title"]["text"]
    line = next(t for t in curves["data"] if t.get("showlegend") is not False)
    assert len(line["y"]) >= 2  # the evaluations of a 2-epoch run


def test_filtering_by_state_and_group(monkeypatch, runs_home):
    at = open_runs_page(monkeypatch, runs_home)
    at.multiselect(key="runs.states").set_value([jobs.FAILED]).run()
    assert at.dataframe[0].value.empty and not at.exception
    at.multiselect(key="runs.states").set_value([jobs.FINISHED])
    at.multiselect(key="runs.groups").set_value([BIG]).run()
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["batch"]) == {128}


@pytest.mark.slow
def test_a_running_run_can_be_cancelled_from_the_page(monkeypatch, tmp_path):
    home = Home(tmp_path / "home")
    [run] = starts.start_train(home, TINY, {}, "cpu", TrainConfig(batch_size=16, lr=1e-2, epochs=200))
    try:
        at = open_runs_page(monkeypatch, home)
        assert at.dataframe[0].value["state"].iloc[0] in runviews.LIVE_STATES
        at.button(key=f"cancel.{run}").click().run()
        assert not at.exception
        assert jobs.wait(home, run, timeout_s=30) == jobs.KILLED
    finally:
        jobs.cancel(home, run)


# -- the downsampling query ------------------------------------------------------------------------


def test_downsampling_keeps_at_most_a_thousand_buckets_and_the_spike(tmp_path):
    home = Home(tmp_path / "home")
    n, spike_at, spike = 20_000, 12_345, 99.0
    steps = np.arange(n)
    frames = []
    for run_id in ("run-a", "run-b"):
        loss = 2.0 * np.exp(-steps / 4000) + 0.01
        if run_id == "run-a":
            loss[spike_at] = spike
        frames.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "step": steps,
                    "epoch": steps / 1000,
                    "samples": steps * 64,
                    "wall_time_s": steps * 0.02,
                    "train_time_s": steps * 0.015,
                    "name": "train_loss",
                    "value": loss,
                }
            )
        )
    with store.connect(home) as con:
        con.register("incoming", pd.concat(frames))
        con.execute("INSERT INTO metrics BY NAME SELECT * FROM incoming")
        curves = store.run_curves(con, ["run-a", "run-b"], "train_loss", "wall_time_s")
        log_curves = store.run_curves(con, ["run-a"], "train_loss", "step", log_x=True)
        assert store.run_curves(con, ["run-a"], "lr").empty
        with pytest.raises(Exception, match="choose one of"):
            store.run_curves(con, ["run-a"], "train_loss", "value; DROP TABLE metrics")
    per_run = curves.groupby("run_id")
    assert per_run.size().max() <= store.RUN_CURVE_BUCKETS and per_run.size().min() > 900
    assert per_run["n"].sum().to_dict() == {"run-a": n, "run-b": n}  # every point counted once
    a = curves[curves["run_id"] == "run-a"]
    assert a["y_max"].max() == spike  # the spike survives as a bucket max
    assert curves[curves["run_id"] == "run-b"]["y_max"].max() < 3
    assert (a["y_min"] <= a["y_last"]).all() and (a["y_last"] <= a["y_max"]).all()
    assert a["x_last"].iloc[-1] == pytest.approx((n - 1) * 0.02) and a["x_last"].is_monotonic_increasing
    assert log_curves["y_max"].max() == spike and len(log_curves) <= store.RUN_CURVE_BUCKETS
    assert log_curves["x_last"].min() == 1  # step 0 cannot sit on a log axis


# -- the chart builders ----------------------------------------------------------------------------


def test_ema_on_a_known_series():
    assert runcharts.ema([1.0, 0.0, 0.0], 0.5).tolist() == [1.0, 0.5, 0.25]
    assert runcharts.ema([2.0, 4.0], 0.0).tolist() == [2.0, 4.0]
    assert runcharts.ema([1.0, float("nan"), 3.0], 0.5).tolist() == [1.0, 1.0, 2.0]
    step = runcharts.ema(np.r_[np.zeros(5), np.ones(200)], 0.9)
    assert step[4] == 0 and 0 < step[5] < step[6] < 1 and step[-1] == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError):
        runcharts.ema([1.0], 1.0)


def _curves(runs: dict[str, int]) -> pd.DataFrame:
    rows = []
    for run_id, n in runs.items():
        for i in range(n):
            rows.append(
                {
                    "run_id": run_id,
                    "bucket": i,
                    "n": 3,
                    "x_last": i + 1.0,
                    "y_min": 1.0 / (i + 1) - 0.01,
                    "y_max": 1.0 / (i + 1) + 0.01,
                    "y_last": 1.0 / (i + 1),
                }
            )
    return pd.DataFrame(rows)


def test_curves_figure_draws_each_run_with_band_raw_and_smoothed_lines():
    curves = _curves({"r1": 50, "r2": 40})
    labels = {"r1": "b32 (r1)", "r2": "b128 (r2)"}
    fig = runcharts.curves_figure(curves, labels, "train_loss", "samples", smoothing=0.8, uirevision="keep-zoom")
    assert [t.name for t in fig.data if t.showlegend is not False] == list(labels.values())
    assert len(fig.data) == 2 * 3  # per run: the min..max band, the raw line, the smoothed line
    r1 = curves[curves.run_id == "r1"]
    band, raw, smoothed = fig.data[:3]
    assert band.fill == "toself" and max(band.y) == r1["y_max"].max() and min(band.y) == r1["y_min"].min()
    assert raw.opacity < 1 and np.allclose(raw.y, r1["y_last"])
    assert np.allclose(smoothed.y, runcharts.ema(r1["y_last"], 0.8)) and not np.allclose(smoothed.y, raw.y)
    assert fig.layout.uirevision == "keep-zoom"
    assert fig.layout.xaxis.type == "linear" and "samples" in fig.layout.xaxis.title.text

    logged = runcharts.curves_figure(curves, labels, "train_loss", log_x=True, log_y=True)
    assert logged.layout.xaxis.type == "log" and logged.layout.yaxis.type == "log"
    assert logged.layout.uirevision  # a default one, stable across refreshes
    assert (
        logged.layout.uirevision
        == runcharts.curves_figure(_curves({"r1": 60}), labels, "train_loss", log_x=True, log_y=True).layout.uirevision
    )
    unsmoothed = runcharts.curves_figure(curves, labels, "train_loss")
    assert len(unsmoothed.data) == 2 * 2  # no faint raw line without smoothing


def test_curves_figure_without_data_says_so():
    fig = runcharts.curves_figure(pd.DataFrame(), {"r1": "r1"}, "val_loss")
    assert not fig.data and "no val_loss" in fig.layout.annotations[0].text


def test_curves_figure_marks_each_batch_change_in_its_runs_colour():
    curves = _curves({"r1": 50, "r2": 40})
    labels = {"r1": "schedule (r1)", "r2": "fixed (r2)"}
    changes = pd.DataFrame(
        [
            {
                "run_id": "r1",
                "step": 10,
                "epoch": 1.0,
                "samples": 20.0,
                "wall_time_s": 1.0,
                "train_time_s": 0.8,
                "batch_size": 128,
            },
            {
                "run_id": "r1",
                "step": 14,
                "epoch": 2.0,
                "samples": 40.0,
                "wall_time_s": 2.0,
                "train_time_s": 1.6,
                "batch_size": 512,
            },
        ]
    )
    fig = runcharts.curves_figure(curves, labels, "train_loss", "samples", batch_changes=changes)
    assert [(s.x0, s.line.dash) for s in fig.layout.shapes] == [(20.0, "dash"), (40.0, "dash")]
    assert [a.text for a in fig.layout.annotations] == ["batch 128", "batch 512"]
    r1_line = next(t for t in fig.data if t.name == "schedule (r1)")
    assert fig.layout.shapes[0].line.color == r1_line.line.color
    logged = runcharts.curves_figure(curves, labels, "train_loss", "samples", log_x=True, batch_changes=changes)
    assert logged.layout.annotations[0].x == pytest.approx(np.log10(20.0))
    assert not runcharts.curves_figure(curves, {"r2": "fixed (r2)"}, "train_loss", batch_changes=changes).layout.shapes


def test_comparison_figure_draws_mean_and_std_bands_per_group_and_the_target():
    rows = []
    for run_id, group_scale in (("a1", 1.0), ("a2", 1.1), ("b1", 0.5), ("b2", 0.6)):
        for k in range(3):
            rows.append(
                {
                    "run_id": run_id,
                    "step": 10 * (k + 1),
                    "epoch": k + 1.0,
                    "samples": 0,
                    "wall_time_s": (k + 1) * group_scale * 1.2,
                    "train_time_s": (k + 1) * group_scale,
                    "val_loss": 1.0 / (k + 1) + (0.05 if run_id.endswith("2") else 0),
                }
            )
    evals = pd.DataFrame(rows)
    groups = {"A": ["a1", "a2"], "B": ["b1", "b2"]}
    bands = runcharts.group_bands(evals, groups)
    a = bands[bands.group == "A"]
    assert list(a["mean"]) == pytest.approx([1.025, 0.525, 1 / 3 + 0.025])
    assert a["std"].iloc[0] == pytest.approx(np.std([1.0, 1.05], ddof=1))
    fig = runcharts.comparison_figure(evals, groups, "A", target=0.4, uirevision="cmp")
    assert [t.name for t in fig.data if t.showlegend is not False] == ["A (2 runs) · baseline", "B (2 runs)"]
    assert sum(1 for t in fig.data if t.fill == "toself") == 2  # one ± std band per group
    assert fig.layout.shapes[0].y0 == 0.4 and fig.layout.uirevision == "cmp"
    assert list(runcharts.group_bands(evals, {"B": ["b1", "b2"], "A": ["a1", "a2"]})["group"][:1]) == ["B"]


def test_runs_table_and_filters():
    runs = pd.DataFrame(
        [
            {
                "id": "r1",
                "state": "FINISHED",
                "workload": "w",
                "batch_size": 32,
                "lr": 0.01,
                "seed": 0,
                "group_id": "g",
                "role": "baseline",
                "tags": ["x", "y"],
                "wall_time_s": 75.0,
                "started_at": None,
                "ended_at": None,
                "final_val_loss": 0.1,
                "primary_metric": "accuracy",
                "final_primary_metric": 0.9,
                "background_cpu_pct": 45.2,
                "background_gpu_processes": 2,
            },
            {
                "id": "r2",
                "state": "RUNNING",
                "workload": "w",
                "batch_size": 128,
                "lr": 0.04,
                "seed": 0,
                "group_id": None,
                "role": None,
                "tags": None,
                "wall_time_s": None,
                "started_at": pd.Timestamp(1000, unit="s", tz="UTC"),
                "ended_at": None,
                "final_val_loss": None,
                "primary_metric": None,
                "final_primary_metric": None,
            },
        ]
    )
    table = runviews.runs_table(runs, now=1012.5)
    assert list(table["duration"]) == ["1m 15s", "12.5 s"] and list(table["tags"]) == ["x, y", ""]
    assert list(table["background load"]) == ["45% CPU + 2 on the GPU", "—"]
    assert list(runviews.filter_runs(runs, states=["RUNNING"])["id"]) == ["r2"]
    assert list(runviews.filter_runs(runs, groups=[runviews.NO_GROUP])["id"]) == ["r2"]
    assert list(runviews.filter_runs(runs, roles=["baseline"], workloads=["w"])["id"]) == ["r1"]
    assert runviews.active_runs(runs) == ["r2"]
    assert runviews.comparison_units(runs, ["r2", "r1"]) == ["g", "r2"]


def test_groups_are_named_by_role_batch_and_lr_and_told_apart_by_id_when_alike():
    groups = [
        {"name": "g1", "role": "baseline", "batch_size": 128, "lr": 0.001},
        {"name": "g2", "role": None, "batch_size": 1024, "lr": 0.008},
        {"name": "g3", "role": None, "batch_size": 1024, "lr": 0.008},
        {"name": "run-x", "role": None, "batch_size": None, "lr": None},
    ]
    assert runviews.unit_names(groups) == {
        "g1": "baseline · batch 128, lr 0.001",
        "g2": "batch 1024, lr 0.008 (g2)",
        "g3": "batch 1024, lr 0.008 (g3)",
        "run-x": "run-x",
    }


def spooled_run(home: Home, run_id: str, group: str, seed: int, background_cpu_pct: float) -> None:
    """A finished training run as its job's spool has it: the target reached at 10 s, and the load it ran under."""
    job_dir = home.job_dir(run_id)
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(
        json.dumps(
            {
                "id": run_id,
                "kind": "train",
                "device": "cpu",
                "workload": "w",
                "params": {},
                "created_at": 0.0,
                "home": str(home.root),
            }
        )
    )
    spool = jobs.Spool(job_dir)
    spool.emit(
        "run_start",
        workload="w",
        config={"batch_size": 32, "lr": 0.01, "seed": seed, "group": group},
        device={"id": "cpu", "kind": "cpu", "name": "CPU"},
    )
    spool.emit("eval", step=10, epoch=1, samples=320, wall_time_s=11.0, train_time_s=10.0, val_loss=0.5)
    spool.emit(
        "run_end",
        steps=10,
        samples=320,
        wall_time_s=11.0,
        train_time_s=10.0,
        final_val_loss=0.5,
        best_val_loss=0.5,
        final_metrics={},
        stop_reason="epochs",
        background_cpu_pct=background_cpu_pct,
    )
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()


def test_the_comparison_says_when_the_runs_ran_under_different_background_load(home):
    home.ensure()
    for run_id, group, seed, load in (
        ("train-b0", "base", 0, 2.0),
        ("train-b1", "base", 1, 45.0),
        ("train-r0", "big", 0, 3.0),
        ("train-r1", "big", 1, 1.0),
    ):
        spooled_run(home, run_id, group, seed, load)
    store.ingest(home)
    view = runviews.comparison_view(home, ["base", "big"], "base")
    assert view.conditions == (
        "Conditions differed: base seed 1 ran with 45% of the CPU busy with other processes; the others with 1% to 3%."
    )
    # one busy seed of two moves its group's median as far as a busy group would: it is named as the one run it is
    assert list(view.table["background CPU"]) == ["24% (differed)", "2%"]


def test_an_autopilots_runs_are_judged_with_the_tolerances_it_compared_them_with(home):
    """One tolerance per comparison: the autopilot compared these runs with a 20% target tolerance and a 30%
    quality band; the Runs page judges the same runs with them (it used its own defaults before)."""
    home.ensure()
    for run_id, group, seed in (
        ("train-b0", "base", 0),
        ("train-b1", "base", 1),
        ("train-r0", "big", 0),
        ("train-r1", "big", 1),
    ):
        spooled_run(home, run_id, group, seed, 2.0)
    job_dir = home.job_dir("auto-1")
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(
        json.dumps(
            {
                "id": "auto-1",
                "kind": "autopilot",
                "device": "cpu",
                "workload": "w",
                "params": {},
                "created_at": 0.0,
                "home": str(home.root),
            }
        )
    )
    spool = jobs.Spool(job_dir)
    spool.emit(
        "autopilot_result",
        headline={"text": "..."},
        comparison={"tolerance": 0.2, "quality": {"tolerance_share": 0.3}},
        baseline_runs=["train-b0", "train-b1"],
        recommended_runs=["train-r0", "train-r1"],
    )
    spool.emit("exit", state="FINISHED", error=None)
    spool.close()
    store.ingest(home)
    view = runviews.comparison_view(home, ["base", "big"], "base")
    assert view.result["tolerance"] == 0.2 and view.result["quality"]["tolerance_share"] == 0.3
    assert view.result["target_val_loss"] == pytest.approx(0.5 * 1.2)
    assert "Tolerances as autopilot `auto-1` compared these runs: target 20%, quality 30%." in view.caption


# -- a queued run ----------------------------------------------------------------------------------


def _queued_run(home: Home, job_id: str, config: TrainConfig, role: str | None) -> None:
    """A train job as `submit` leaves it before its process starts: its request on disk, PENDING.
    Its pid is this test's, which is alive, so it stays PENDING without starting any job."""
    import os
    import time

    import psutil

    from largestep.jobs.spool import write_json_atomic

    job_dir = home.ensure().job_dir(job_id)
    job_dir.mkdir()
    params = {"workload": TINY, "options": {}, "device": "cpu", "config": asdict(config), "role": role}
    write_json_atomic(
        job_dir / "spec.json",
        {
            "id": job_id,
            "kind": "train",
            "device": "cpu",
            "workload": "tiny-mlp",
            "params": params,
            "created_at": time.time(),
            "home": str(home.root),
        },
    )
    (job_dir / "events.jsonl").touch()
    write_json_atomic(
        job_dir / "status.json",
        {
            "state": jobs.PENDING,
            "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(),
            "heartbeat": time.time(),
            "phase": "queued",
            "progress": 0.0,
        },
    )


def test_a_queued_run_shows_what_it_will_run(tmp_path, capsys):
    from helpers import run_cli

    home = Home(tmp_path / "home")
    _queued_run(home, "train-queued01", TrainConfig(batch_size=256, lr=0.004, seed=7, group="grp-wide"), "recommended")
    table = runviews.runs_table(runviews.load_runs(home))
    row = table.iloc[0].to_dict()
    assert (row["state"], row["batch"], row["LR"], row["seed"], row["group"], row["role"]) == (
        jobs.PENDING,
        256,
        0.004,
        7,
        "grp-wide",
        "recommended",
    )
    with store.connect(home) as con:  # filtering by group finds it before it starts
        assert list(store.list_runs(con, group="grp-wide")["id"]) == ["train-queued01"]
    code, out, _ = run_cli(capsys, "--home", str(home.root), "runs")
    line = next(line for line in out.splitlines() if "train-queued01" in line)
    assert code == 0 and "PENDING" in line and "256" in line and "0.004" in line and "grp-wide" in line
    cells = [cell.strip() for cell in line.split("│")]
    assert cells[2:8] == ["PENDING", "tiny-mlp", "256", "0.004", "7", "grp-wide"]
    code, out, _ = run_cli(capsys, "--home", str(home.root), "runs", "show", "train-queued01")
    line = next(line for line in out.splitlines() if "train-queued01" in line and "│" in line)
    assert code == 0 and [cell.strip() for cell in line.split("│")][2:8] == [
        "PENDING",
        "tiny-mlp",
        "256",
        "0.004",
        "7",
        "grp-wide",
    ]
