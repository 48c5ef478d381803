"""The Recommend, Planner and Export pages, run headless with AppTest on a real tiny profile."""

from __future__ import annotations

import pytest
from conftest import PROFILED_BATCHES as BATCHES  # noqa: E402  the session's profile
from helpers import accept_load_if_asked, copy_home, open_page, recommend_stored, wait_finished
from streamlit.testing.v1 import AppTest

from largestep import jobs, store
from largestep.format import format_count
from largestep.home import Home
from largestep.plan.export import FORMATS
from largestep.plan.recommend import RecommendConfig
from largestep.ui import export, planner
from largestep.ui import recommend as recviews


@pytest.fixture(scope="module")
def rec_home(profiled_template, tmp_path_factory) -> tuple[Home, dict]:
    """The session's real profile of the tiny workload (baseline 32) and one saved recommendation of it."""
    template, profile = profiled_template
    home = copy_home(template, tmp_path_factory.mktemp("pages") / "home")
    rec = recommend_stored(home, profile, RecommendConfig(noise_scale=300.0))
    with store.connect(home) as con:
        store.save_recommendation(home, con, rec)
    return home, rec


def download_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.get("download_button")}


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def saved_recommendations(home: Home) -> int:
    with store.connect(home) as con:
        return len(store.list_recommendations(con))


@pytest.mark.parametrize(
    "page, message",
    [("recommend", recviews.RECOMMEND_START), ("planner", planner.PLANNER_START), ("export", export.EXPORT_START)],
)
def test_an_empty_home_says_how_to_start(monkeypatch, tmp_path, page, message):
    at = open_page(monkeypatch, Home(tmp_path / "empty"), page)
    assert message in [i.value for i in at.info]
    assert not at.error and not download_keys(at)


# -- Recommend -----------------------------------------------------------------------------------


def test_recommend_shows_the_saved_recommendation(monkeypatch, rec_home):
    home, rec = rec_home
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    assert not at.error, errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Batch size"] == str(rec["batch_size"])
    assert metrics["Learning rate"] == f"{rec['learning_rate']:.4g}"
    assert metrics["Faster to target"] == f"{rec['predicted_speedup']['time_to_target']:.2f}×"
    assert metrics["Throughput"] == f"{rec['predicted_speedup']['throughput']:.2f}×"
    assert metrics["Runs per GPU-day"] == format_count(rec["experiments_per_gpu_day"]["recommended"])
    assert rec["recommendation_id"] in " ".join(m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["batch"]) == list(BATCHES)
    assert (
        table.loc[table["batch"] == rec["batch_size"], "role"]
        .iloc[0]
        .startswith("recommended" if rec["batch_size"] != 32 else "baseline")
    )
    assert len(at.get("plotly_chart")) == 1
    assert download_keys(at) == {f"recommend.download.{fmt}" for fmt in FORMATS}
    # the defaults come from the profile
    assert at.number_input(key="recommend.baseline_batch").value == 32
    assert float(at.text_input(key="recommend.baseline_lr").value) == pytest.approx(1e-2)


def test_compute_saves_a_new_recommendation_with_the_chosen_rule(monkeypatch, rec_home):
    home, _ = rec_home
    before = saved_recommendations(home)
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    at.radio(key="recommend.rule").set_value("sqrt")
    at.radio(key="recommend.noise_mode").set_value("manual").run()
    at.text_input(key="recommend.noise_scale").input("500")
    at.button(key="recommend.compute").click().run()
    assert not at.exception and not at.error, errors(at)
    assert saved_recommendations(home) == before + 1
    with store.connect(home) as con:
        newest = store.load_recommendation(con, "latest")
    assert newest["rule"] == "sqrt" and newest["noise_scale"] == 500.0
    assert any(newest["recommendation_id"] in s.value for s in at.success)
    assert {m.label: m.value for m in at.metric}["Batch size"] == str(newest["batch_size"])


@pytest.mark.parametrize(
    "widget, value, says",
    [
        ("text_input:recommend.baseline_lr", "fast", "number"),
        ("text_input:recommend.baseline_lr", "-1", "positive"),
        ("number_input:recommend.baseline_batch", 100, "not measured"),
        ("text_input:recommend.max_lr", "zero", "max lr"),
    ],
)
def test_bad_recommend_inputs_show_an_error_and_save_nothing(monkeypatch, rec_home, widget, value, says):
    home, _ = rec_home
    before = saved_recommendations(home)
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    kind, key = widget.split(":")
    element = getattr(at, kind)(key=key)
    element.input(value) if kind == "text_input" else element.set_value(value)
    at.button(key="recommend.compute").click().run()
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value, errors(at)
    assert saved_recommendations(home) == before


def test_a_max_lr_below_every_scaled_rate_keeps_the_baseline_and_says_why(monkeypatch, rec_home):
    home, _ = rec_home
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    at.text_input(key="recommend.max_lr").input("1e-9")
    at.button(key="recommend.compute").click().run()
    assert not at.exception and not at.error, errors(at)
    assert {m.label: m.value for m in at.metric}["Batch size"] == "32"
    reasons = " ".join(m.value for m in at.markdown)
    assert "max lr" in reasons and "faster than the baseline" in reasons


def test_manual_noise_mode_needs_a_value(monkeypatch, rec_home):
    home, _ = rec_home
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    at.radio(key="recommend.noise_mode").set_value("manual").run()
    at.button(key="recommend.compute").click().run()
    assert not at.exception and "enter a noise scale" in " ".join(errors(at))


@pytest.mark.slow
def test_estimating_the_noise_scale_runs_a_job_and_offers_its_result(monkeypatch, rec_home):
    home, _ = rec_home
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    at.button(key="recommend.estimate").click().run()
    assert not at.exception and not at.error, errors(at)
    job_id = at.session_state["recommend.noise_job"]
    assert jobs.read_spec(home.job_dir(job_id))["kind"] == "noise"
    assert jobs.wait(home, job_id, timeout_s=180) == jobs.FINISHED
    at.run()  # the progress fragment sees the job end, ingests it and redraws the page
    assert not at.exception
    assert "recommend.noise_job" not in at.session_state
    shown = [s.value for s in at.success] + errors(at)
    assert any(job_id in text for text in shown), shown
    # the seeded estimate of this workload is reliable, so the page chooses it for the next compute
    with store.connect(home) as con:
        assert not store.load_noise(con, job_id)["unreliable"]
    assert at.session_state["recommend.noise_mode"] == "stored"
    assert at.selectbox(key="recommend.noise_id").value == job_id


@pytest.mark.slow
def test_a_noise_curve_gives_the_next_recommendation_a_batch_schedule_chart(monkeypatch, rec_home, tmp_path, tiny_spec):
    from largestep.jobs.start import start_noise_curve

    home = copy_home(rec_home[0], tmp_path / "home")
    at = accept_load_if_asked(open_page(monkeypatch, home, "recommend"))
    assert "No noise curve for this workload yet" in " ".join(c.value for c in at.caption)
    curve_id = start_noise_curve(home, tiny_spec, {}, "cpu", (0.0, 0.5, 1.0), batches=8)
    wait_finished(home, curve_id, timeout_s=180)
    store.ingest(home)
    at.radio(key="recommend.noise_mode").set_value("manual").run()
    at.text_input(key="recommend.noise_scale").input("500")
    at.button(key="recommend.compute").click().run()
    assert not at.exception and not at.error, errors(at)
    with store.connect(home) as con:
        plan = store.load_recommendation(con, "latest")["batch_schedule"]
    assert plan["curve_id"] == curve_id
    assert "A batch that grows as training needs it" in [h.value for h in at.subheader]
    assert any(plan["spec"] in m.value for m in at.markdown)
    table = at.dataframe[-1].value
    assert list(table["batch"]) == [p["batch_size"] for p in plan["phases"]]


# -- Planner -------------------------------------------------------------------------------------


def test_planner_states_the_ratio_for_the_recommendation(monkeypatch, rec_home, tmp_path):
    from helpers import profile_events, spool_job

    template, _ = rec_home
    home = copy_home(template, tmp_path / "home")
    # the page plans with the newest recommendation, which must be a larger batch: from a steady profile (the
    # session's real one may be noisy at every larger size on a busy machine, and then none is recommended)
    spool_job(home, "prof-steady01", "profile", profile_events("prof-steady01"))
    store.ingest(home)
    rec = recommend_stored(home, "prof-steady01", RecommendConfig(noise_scale=300.0))
    assert rec["batch_size"] > rec["baseline"]["batch_size"]
    with store.connect(home) as con:
        store.save_recommendation(home, con, rec)
    at = open_page(monkeypatch, home, "planner")
    assert not at.error, errors(at)
    assert at.selectbox(key="planner.profile").value == rec["profile_id"]
    assert float(at.text_input(key="planner.noise_scale").value) == pytest.approx(300.0)
    per_day = rec["experiments_per_gpu_day"]
    ratio = per_day["recommended"] / per_day["baseline"]
    assert f"{ratio:.1f}× as many experiments per day" in at.markdown[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Experiments per day, baseline"] == format_count(per_day["baseline"])
    table = at.dataframe[0].value
    assert list(table["batch"]) == [16, 32, 64, 128]
    assert table.loc[table["role"] == "baseline", "batch"].tolist() == [32]
    assert table.loc[table["role"] == "recommended", "batch"].tolist() == [rec["batch_size"]]
    assert metrics["More experiments"] == f"{ratio:.1f}×"
    assert len(at.get("plotly_chart")) == 1


def test_planner_budget_changes_the_numbers(monkeypatch, rec_home):
    home, _ = rec_home
    at = open_page(monkeypatch, home, "planner")
    full_day = at.dataframe[0].value["experiments / day"].tolist()
    at.number_input(key="planner.gpus").set_value(4)
    at.number_input(key="planner.gpu_hours").set_value(6.0).run()
    assert not at.error
    assert at.dataframe[0].value["experiments / day"].tolist() == pytest.approx(full_day, rel=1e-3)  # 4 x 6 h = 24 h


@pytest.mark.parametrize(
    "widget, value, says",
    [
        ("number_input:planner.gpu_hours", 0.0, "GPU hours"),
        ("number_input:planner.epochs", 0.0, "epochs"),
        ("text_input:planner.noise_scale", "lots", "noise scale"),
    ],
)
def test_bad_planner_inputs_show_an_error(monkeypatch, rec_home, widget, value, says):
    home, _ = rec_home
    at = open_page(monkeypatch, home, "planner")
    kind, key = widget.split(":")
    element = getattr(at, kind)(key=key)
    (element.input(value) if kind == "text_input" else element.set_value(value)).run()
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value, errors(at)


# -- Export --------------------------------------------------------------------------------------


def test_export_offers_every_format_a_preview_and_the_report(monkeypatch, rec_home):
    home, _ = rec_home
    with store.connect(home) as con:
        rec = store.load_recommendation(con, "latest")
    at = open_page(monkeypatch, home, "export")
    assert not at.error, errors(at)
    assert at.selectbox(key="export.recommendation").value == rec["recommendation_id"]
    assert download_keys(at) == {f"export.download.{fmt}" for fmt in FORMATS} | {"export.download.report"}
    (preview,) = at.code
    assert f"batch_size: {rec['batch_size']}" in preview.value
    at.selectbox(key="export.format").set_value("cli").run()
    assert f"--batch-size {rec['batch_size']}" in at.code[0].value


def test_export_resplits_the_batch_over_devices(monkeypatch, rec_home):
    home, _ = rec_home
    with store.connect(home) as con:
        rec = store.load_recommendation(con, "latest")
    at = open_page(monkeypatch, home, "export")
    at.number_input(key="export.devices").set_value(2).run()
    assert not at.error, errors(at)
    assert f"micro_batch_size: {rec['batch_size'] // 2}" in at.code[0].value
    assert "2 devices" in " ".join(c.value for c in at.caption)


@pytest.mark.parametrize(
    "widget, value, says",
    [
        ("export.devices", 3, "does not divide"),
        ("export.micro_batch", 7, "does not divide"),
    ],
)
def test_a_split_that_does_not_divide_shows_an_error(monkeypatch, rec_home, widget, value, says):
    home, _ = rec_home
    at = open_page(monkeypatch, home, "export")
    at.number_input(key=widget).set_value(value).run()
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value, errors(at)
    assert not at.code
    assert download_keys(at) == {"export.download.report"}  # the report does not depend on the split


def test_excluded_candidates_show_dashes_not_none():
    from helpers import profile_events

    from largestep.jobs import events
    from largestep.plan.recommend import recommend

    spooled = [{"type": type_, "t": 0.0, **fields} for type_, fields in profile_events("prof-test0001")]
    profile = events.profile_record(spooled)
    profile.update(id="prof-test0001", device_total_memory_bytes=8 * 2**30)
    rec = recommend(profile, RecommendConfig(noise_scale=200.0, max_lr=2.5e-3))  # 128 needs lr 4e-3: excluded
    table = recviews.candidates_table(rec)
    assert table["excluded"].astype(bool).any(), table
    shown = recviews.highlight_roles(table).to_string()  # the cells as the page displays them
    assert not any(missing in shown for missing in ("None", "nan", "<NA>")), shown
