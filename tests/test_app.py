"""The dashboard, run headless with Streamlit's AppTest against real homes and a real profile job."""

import pytest
from conftest import PROFILED_BATCHES as BATCHES  # noqa: E402  the session's profile
from helpers import TINY, open_page, wait_finished
from streamlit.testing.v1 import AppTest

from largestep import jobs, store
from largestep.errors import UsageError
from largestep.home import Home
from largestep.jobs import start as starts
from largestep.measure.profiler import ProfileConfig
from largestep.ui import profiles as views
from largestep.ui import widgets


def open_app(monkeypatch, home: Home) -> AppTest:
    return open_page(monkeypatch, home, "profiles")


def plotly_charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


# -- pages ---------------------------------------------------------------------------------------


def test_empty_home_shows_how_to_start(monkeypatch, tmp_path):
    at = open_app(monkeypatch, Home(tmp_path / "empty"))
    assert views.START_MESSAGE in [i.value for i in at.info]
    assert not at.error
    assert not plotly_charts(at)
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert str(tmp_path / "empty") in sidebar and "largestep.duckdb" in sidebar


def test_a_stored_profile_shows_its_metrics_charts_and_points(monkeypatch, profiled_home):
    home, job = profiled_home
    with store.connect(home) as con:
        profile = store.load_profile(con, job)
    at = open_app(monkeypatch, home)

    assert at.selectbox(key="profiles.selected").value == job
    metrics = {m.label: m.value for m in at.metric}
    # measured for real: on a busy machine every point may be noisy, and a noisy point is no saturation batch
    saturation = profile["saturation_batch"]
    assert saturation in BATCHES or (saturation is None and all(p["noisy"] for p in profile["points"]))
    assert metrics["Saturation batch"] == (str(saturation) if saturation is not None else "—")
    assert metrics["Stop reason"] == views.STOP_REASONS["list"][0]
    assert len(plotly_charts(at)) == 5  # step time, throughput, memory, compute, telemetry
    table = at.dataframe[0].value
    assert list(table["batch"]) == list(BATCHES)
    assert set(table["status"]) == {"ok"}
    assert not at.error


def test_a_bad_memory_budget_shows_an_error_and_starts_nothing(monkeypatch, tmp_path):
    home = Home(tmp_path / "home")
    at = open_app(monkeypatch, home)
    at.text_input(key="profile.memory_budget").input("twelve gigs")
    at.button(key="profile.submit").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "memory budget" in errors[0] and "12GiB" in errors[0]
    assert list(home.jobs.iterdir()) == []


@pytest.mark.slow
def test_launching_from_the_form_shows_the_job_and_cancel_stops_it(monkeypatch, tmp_path):
    home = Home(tmp_path / "home")
    at = open_app(monkeypatch, home)
    at.selectbox(key="profile.workload").set_value("fraud-mlp").run()
    at.text_input(key="profile.batch_list").input("16,64")
    at.button(key="profile.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (job_id,) = [p.name for p in home.jobs.iterdir()]
    assert any(job_id in s.value for s in at.success)
    assert jobs.read_spec(home.job_dir(job_id))["params"]["config"]["batch_sizes"] == [16, 64]

    at.button(key=f"cancel.{job_id}").click().run()
    assert not at.exception
    assert jobs.wait(home, job_id, timeout_s=30) == jobs.KILLED
    assert not [b for b in at.button if b.key == f"cancel.{job_id}"]  # no longer listed as running


# -- the page's logic, in largestep.ui.profiles -----------------------------------------------------------

LISTED = ["fraud-gru", "fraud-mlp", "table"]


def test_the_form_accepts_only_listed_workloads():
    with pytest.raises(UsageError, match="unknown workload"):
        views.profile_request(views.ProfileForm(workload=TINY), LISTED)


def test_the_form_builds_the_profile_config():
    workload, options, config = views.profile_request(
        views.ProfileForm(
            workload="fraud-mlp", dtype="bf16", batch_list="512, 32,128", memory_budget="1GiB", full=True
        ),
        LISTED,
    )
    assert (workload, options) == ("fraud-mlp", {})
    assert config.batch_sizes == (32, 128, 512) and config.memory_budget_bytes == 2**30
    assert config.dtype == "bf16" and config.full
    _, _, ranged = views.profile_request(views.ProfileForm(workload="fraud-mlp", min_batch=64, max_batch=1024), LISTED)
    assert (ranged.batch_sizes, ranged.min_batch, ranged.max_batch) == (None, 64, 1024)


def test_the_table_workload_takes_a_data_path_and_label():
    with pytest.raises(UsageError, match="data file"):
        views.profile_request(views.ProfileForm(workload="table", label="y"), LISTED)
    _, options, _ = views.profile_request(
        views.ProfileForm(workload="table", data_path=" /data/t.csv ", label="y"), LISTED
    )
    assert options == {"path": "/data/t.csv", "label": "y"}


@pytest.mark.parametrize(
    "form, message",
    [
        (views.ProfileForm(workload="fraud-mlp", batch_list="32,abc"), "batch size"),
        (views.ProfileForm(workload="fraud-mlp", min_batch=512, max_batch=64), "below min batch"),
        (views.ProfileForm(workload="fraud-mlp", memory_budget="-3GiB"), "memory budget"),
    ],
)
def test_bad_form_input_says_what_to_fix(form, message):
    with pytest.raises(UsageError, match=message):
        views.profile_request(form, LISTED)


def test_the_hardware_card_shows_live_gpu_readings_or_why_there_are_none():
    gpu = {
        "id": "cuda:GPU-1",
        "kind": "cuda",
        "name": "NVIDIA A100",
        "total_memory_bytes": 40 * 2**30,
        "compute_capability": "8.0",
        "cores": 108,
        "torch_device": "cuda:0",
        "live": {"gpu_util_pct": 97, "power_w": 312.4, "temp_c": 61, "mem_used_bytes": 2**30},
    }
    with_gpu = widgets.hardware_view({"devices": [gpu], "nvml": {"available": True}, "torch": "2.5", "cuda": "12.4"})
    (card,) = with_gpu.cards
    assert {m.label: m.value for m in card.live} == {
        "GPU util": "97 %",
        "Power": "312 W",
        "Temperature": "61 °C",
        "Memory used": "1.0 GiB",
    }
    assert with_gpu.nvml_note is None
    cpu = {
        "id": "cpu",
        "kind": "cpu",
        "name": "AMD EPYC",
        "total_memory_bytes": 2**34,
        "cores": 2,
        "torch_device": "cpu",
        "live": None,
    }
    cpu_only = widgets.hardware_view({"devices": [cpu], "nvml": {"available": False, "reason": "no NVIDIA driver"}})
    assert cpu_only.cards[0].live == () and "16.0 GiB" in [m.value for m in cpu_only.cards[0].facts]
    assert "NVML is absent: no NVIDIA driver" in cpu_only.nvml_note


def test_the_points_table_reads_in_units_and_explains_refused_points():
    import pandas as pd

    points = pd.DataFrame(
        {
            "batch_size": [64, 32],
            "status": ["over_budget", "ok"],
            "median_s": [None, 0.0123456],
            "p25_s": [None, 0.012],
            "p75_s": [None, 0.013],
            "samples_per_s": [None, 2592.1],
            "peak_memory_bytes": pd.array([None, 3 * 2**20], dtype="Int64"),
            "memory_is_estimate": [True, True],
            "flops_per_s": [None, 1.5e9],
            "n": [0, 10],
            "noisy": [None, False],
            "error": [None, None],
            "predicted_memory_bytes": pd.array([5 * 2**30, None], dtype="Int64"),
        }
    )
    table = views.points_table(points)
    assert list(table["batch"]) == [32, 64]
    assert table["median (ms)"][0] == pytest.approx(12.35) and table["IQR (ms)"][0] == pytest.approx(1.0)
    assert table["peak memory (MiB, estimate)"][0] == pytest.approx(3.0)
    assert table["GFLOP/s"][0] == pytest.approx(1.5)
    assert table["note"][1] == "predicted 5.0 GiB"


def test_the_points_table_shows_the_background_load_and_what_stayed_inconsistent():
    import pandas as pd

    points = pd.DataFrame(
        {
            "batch_size": [16, 32],
            "status": ["ok", "ok"],
            "median_s": [0.514, 0.331],
            "p25_s": [0.5, 0.33],
            "p75_s": [0.52, 0.34],
            "samples_per_s": [31.1, 96.7],
            "n": [10, 10],
            "noisy": [False, False],
            "background_cpu_pct": [45.2, None],
            "inconsistent": [True, False],
            "under_load": [True, None],
        }
    )
    table = views.points_table(points)
    assert list(table["background CPU"]) == ["45%", "—"]
    assert list(table["note"]) == [
        "not physics, even re-measured; measured under load: other processes took the cores it needs",
        "",
    ]
    flagged = {"id": "prof-1", "inconsistency": "step time falls from 514 ms at batch 16 to 331 ms at 32"}
    assert views.inconsistency_text(flagged).startswith("Inconsistent profile: step time falls from 514 ms")
    assert views.inconsistency_text({"id": "prof-2", "inconsistency": None}) is None


def _traces(at: AppTest, name: str) -> dict[str, dict]:
    """The traces of the page's chart ``chart.<name>`` by name, their x and y as lists of numbers
    (plotly sends arrays as base64 typed arrays: {"dtype": "f8", "bdata": ...})."""
    import base64
    import json

    import numpy as np

    def values(array):
        if isinstance(array, dict) and "bdata" in array:
            return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
        return list(array)

    [chart] = [c for c in plotly_charts(at) if f"chart.{name}" in c.proto.id]
    return {t["name"]: {"x": values(t["x"]), "y": values(t["y"])} for t in json.loads(chart.proto.spec)["data"]}


@pytest.mark.slow
def test_other_profiles_overlay_step_time_and_throughput(monkeypatch, tmp_path):
    home = Home(tmp_path / "home")
    first = starts.start_profile(
        home, TINY, {}, "cpu", ProfileConfig(batch_sizes=(8, 32), min_steps=3, min_seconds=0.0, warmup_steps=1)
    )
    second = starts.start_profile(
        home, TINY, {}, "cpu", ProfileConfig(batch_sizes=(16, 64), min_steps=3, min_seconds=0.0, warmup_steps=1)
    )
    for job in (first, second):
        wait_finished(home, job, timeout_s=120)
    store.ingest(home)
    at = open_app(monkeypatch, home)
    assert at.selectbox(key="profiles.selected").value == second  # the newest
    overlay = at.multiselect(key="profiles.overlay")
    assert overlay.options == [widgets_label(home, first)] and overlay.value == []
    assert len(plotly_charts(at)) == 5  # alone: step time, throughput, memory, compute, telemetry

    overlay.set_value([first]).run()
    assert not at.exception and not at.error
    with store.connect(home) as con:
        label = views.overlay_label(store.load_profile(con, first))
        first_points = store.profile_points(con, first)
    for name, column, scale in (("step time", "median_s", 1e3), ("throughput", "samples_per_s", 1.0)):
        traces = _traces(at, name)
        assert label in traces, list(traces)
        assert traces[label]["x"] == [8, 32]
        assert traces[label]["y"] == pytest.approx(list(first_points[column] * scale))
        assert next(t for n, t in traces.items() if n.endswith("(this profile)"))["x"] == [16, 64]
    # the other way round: select the first, and the second is what can be overlaid (the stale choice goes)
    at.selectbox(key="profiles.selected").set_value(first).run()
    assert not at.exception
    assert at.multiselect(key="profiles.overlay").value == []
    assert at.multiselect(key="profiles.overlay").options == [widgets_label(home, second)]


def widgets_label(home: Home, profile_id: str) -> str:
    return next(c.label for c in widgets.profile_choices(home) if c.id == profile_id)
