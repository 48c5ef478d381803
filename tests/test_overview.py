"""The Overview page (AppTest, real homes, a real autopilot) and its logic in largestep.ui.overview and
largestep.workloads.config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, open_page
from streamlit.testing.v1 import AppTest

from largestep import jobs, store
from largestep.errors import UsageError, WorkloadError
from largestep.home import Home
from largestep.jobs.autopilot import PHASES
from largestep.ui import overview
from largestep.workloads import load_workload
from largestep.workloads.config import configured_workloads

TINY_FILE = Path(TINY.partition(":")[0])


def write_config(folder: Path, body: str) -> Path:
    path = folder / "largestep.toml"
    path.write_text(body, encoding="utf-8")
    return path


def open_overview(monkeypatch, home: Home, cwd: Path) -> AppTest:
    return open_page(monkeypatch, home, "overview", timeout=120, cwd=cwd)


# -- the page --------------------------------------------------------------------------------------


def test_an_empty_home_shows_how_to_start(monkeypatch, tmp_path):
    at = open_overview(monkeypatch, Home(tmp_path / "empty"), tmp_path)
    assert overview.START_MESSAGE in [i.value for i in at.info]
    assert not at.error
    assert at.button(key="overview.start").label == "Profile & train"
    assert {m.label for m in at.metric} >= {"RAM", "Logical cores"}  # the hardware card
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert str(tmp_path / "empty") in sidebar and "largestep.duckdb" in sidebar


def test_the_picker_offers_built_ins_and_configured_workloads(monkeypatch, tmp_path):
    write_config(
        tmp_path, f'workloads = ["{TINY}", {{ name = "tiny-wide", spec = "{TINY}", options = {{ features = 32 }} }}]\n'
    )
    at = open_overview(monkeypatch, Home(tmp_path / "home"), tmp_path)
    names = at.selectbox(key="overview.workload").options
    assert any(n.startswith("fraud-gru") for n in names)
    assert any(n.startswith("tiny_workload") and "largestep.toml" in n for n in names)
    assert any(n.startswith("tiny-wide") for n in names)
    assert not at.text_input  # no field anywhere takes a code path


def test_a_broken_config_file_is_a_warning_and_the_built_ins_stay(monkeypatch, tmp_path):
    write_config(tmp_path, "workloads = [42]\n")
    at = open_overview(monkeypatch, Home(tmp_path / "home"), tmp_path)
    assert any("entry 1" in w.value for w in at.warning)
    assert any(n.startswith("fraud-gru") for n in at.selectbox(key="overview.workload").options)


@pytest.mark.slow
def test_profile_and_train_starts_an_autopilot_that_cancel_stops(monkeypatch, tmp_path):
    write_config(tmp_path, f'workloads = ["{TINY}"]\n')
    home = Home(tmp_path / "home")
    at = open_overview(monkeypatch, home, tmp_path)
    at.selectbox(key="overview.workload").set_value("tiny_workload").run()
    at.number_input(key="overview.repeats").set_value(2)
    at.number_input(key="overview.epochs").set_value(1.0)
    at.button(key="overview.start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (job_id,) = [p.name for p in home.jobs.iterdir()]
    spec = jobs.read_spec(home.job_dir(job_id))
    try:
        assert spec["kind"] == "autopilot" and spec["params"]["workload"] == TINY
        assert spec["params"]["autopilot"]["repeats"] == 2 and spec["params"]["autopilot"]["epochs"] == 1.0
        assert any(job_id in m.value for m in at.markdown)  # the page follows the new autopilot
        assert [b for b in at.button if b.key == "overview.cancel"]  # running: it can be stopped
        at.button(key="overview.cancel").click().run()
        assert not at.exception
    finally:
        jobs.cancel(home, job_id)
    assert jobs.wait(home, job_id, timeout_s=60) == jobs.KILLED
    for child in home.jobs.iterdir():  # the autopilot took its children down with it
        assert jobs.wait(home, child.name, timeout_s=60) in jobs.FINAL_STATES
    assert not [b for b in at.button if b.key == "overview.cancel"]


@pytest.mark.timeout(900)  # its subprocesses (or the session's autopilot) may take 300 s and more
def test_a_finished_autopilot_shows_its_headline_and_every_phase_done(monkeypatch, tmp_path, autopilot_home):
    home, job_id = autopilot_home
    at = open_overview(monkeypatch, home, tmp_path)
    metrics = {m.label: m.value for m in at.metric}
    with store.connect(home) as con:
        headline = store.load_autopilot(con, job_id)["headline"]
    # the words the verdict decided, and the prediction with its interval
    assert metrics["Measured speedup"] == headline["verdict"]["cell"]
    low, high = headline["predicted_speedup_interval"]
    assert metrics["Predicted speedup"] == f"{headline['predicted_speedup']:.2f}× ({low:.2f}–{high:.2f}×)"
    assert metrics["accuracy difference"] == f"{headline['metric_difference']:+.4f}"
    assert "p-value" in metrics
    box = {"good": at.success, "bad": at.error, "neutral": at.warning}[headline["tone"]]
    assert headline["text"] in [s.value for s in box]  # its colour follows its verdict
    phase_lines = [m.value for m in at.markdown if "(done)" in m.value]
    assert len(phase_lines) == len(PHASES) and all(p in " ".join(phase_lines) for p in PHASES)
    table = at.dataframe[0].value  # the comparison; the second is every run
    assert list(table["group"]) == ["baseline", "recommended"]
    assert not [b for b in at.button if b.key == "overview.cancel"]
    assert headline["tone"] == "bad" or not at.error


# -- the logic -------------------------------------------------------------------------------------


def test_configured_workloads_read_largestep_toml_and_resolve_paths(tmp_path):
    write_config(
        tmp_path,
        'workloads = ["models/net.py:make", "pkg.mod:build", '
        '{ name = "big", spec = "models/net.py:make_big", options = { hidden = 512 } }]\n',
    )
    rows = configured_workloads(tmp_path)
    assert [r["name"] for r in rows] == ["net", "pkg.mod:build", "big"]
    assert rows[0]["spec"] == f"{tmp_path / 'models' / 'net.py'}:make"
    assert rows[1]["spec"] == "pkg.mod:build" and {r["source"] for r in rows} == {"config"}
    assert rows[2]["options"] == {"hidden": 512}


@pytest.mark.timeout(900)  # its subprocesses (or the session's autopilot) may take 300 s and more
@pytest.mark.slow
@pytest.mark.e2e
def test_a_configured_name_loads_from_the_command_line_with_its_options(tmp_path, monkeypatch):
    write_config(tmp_path, f'workloads = [{{ name = "tiny", spec = "{TINY}", options = {{ samples = 96 }} }}]\n')
    monkeypatch.chdir(tmp_path)
    assert load_workload("tiny").n_train < load_workload(TINY).n_train  # the configured options apply
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "largestep.cli",
            "--home",
            str(tmp_path / "home"),
            "profile",
            "--workload",
            "tiny",
            "--batch-sizes",
            "8",
            "--min-seconds",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["points"][0]["status"] == "ok"
    with pytest.raises(WorkloadError, match="no-such-name"):
        load_workload("no-such-name")


def test_configured_workloads_read_pyproject_and_are_empty_without_a_config(tmp_path):
    assert configured_workloads(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert configured_workloads(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text('[[tool.largestep.workloads]]\nname = "mine"\nspec = "a.b:make"\n')
    assert [(r["name"], r["spec"]) for r in configured_workloads(tmp_path)] == [("mine", "a.b:make")]


@pytest.mark.parametrize(
    "body, message",
    [
        ("workloads = [", "not valid TOML"),
        ('workloads = "a.b:make"', "must be a list"),
        ("workloads = [3]", "entry 1"),
        ('workloads = ["nocolon"]', "package.module:function"),
        ('workloads = [{ spec = "a:b", colour = "red" }]', "unknown key 'colour'"),
        (
            'workloads = ["a.b:make", "c/a/b.py:make", { name = "b", spec = "x:y" }, { name = "b", spec = "z:y" }]',
            "twice",
        ),
    ],
)
def test_a_malformed_config_says_what_to_fix(tmp_path, body, message):
    write_config(tmp_path, body)
    with pytest.raises(WorkloadError, match=message):
        configured_workloads(tmp_path)


def test_a_configured_name_never_shadows_a_built_in(tmp_path):
    write_config(tmp_path, 'workloads = [{ name = "fraud-gru", spec = "evil.mod:make" }]\n')
    choices, problems = overview.workload_choices(str(tmp_path))
    assert choices["fraud-gru"].source == "builtin" and choices["fraud-gru"].spec == "fraud-gru"
    assert len(problems) == 1 and "fraud-gru" in problems[0]


def test_the_launcher_accepts_only_listed_workloads_and_sane_numbers(tmp_path):
    write_config(tmp_path, f'workloads = [{{ name = "tiny", spec = "{TINY}", options = {{ samples = 512 }} }}]\n')
    choices, _ = overview.workload_choices(str(tmp_path))
    spec, options, config = overview.autopilot_request(overview.AutopilotForm("tiny", repeats=2, epochs=2), choices)
    assert (spec, options, config.repeats, config.epochs) == (TINY, {"samples": 512}, 2, 2.0)
    assert not config.compile
    _, _, compiled = overview.autopilot_request(overview.AutopilotForm("tiny", compile=True), choices)
    assert compiled.compile  # the dashboard's checkbox reaches every step of the loop
    assert config.arms is None
    _, _, both = overview.autopilot_request(overview.AutopilotForm("tiny", both_arms=True), choices)
    _, _, three = overview.autopilot_request(overview.AutopilotForm("tiny", both_arms=True, schedule_arm=True), choices)
    assert both.arms == ("baseline", "recommended") and three.arms == ("baseline", "fixed", "schedule")
    with pytest.raises(UsageError, match="unknown workload"):
        overview.autopilot_request(overview.AutopilotForm(TINY), choices)  # a path is not a listed name
    with pytest.raises(UsageError, match="repeats"):
        overview.autopilot_request(overview.AutopilotForm("tiny", repeats=0), choices)
    with pytest.raises(UsageError, match="epochs"):
        overview.autopilot_request(overview.AutopilotForm("tiny", epochs=-1.0), choices)
    with pytest.raises(UsageError, match="data file"):
        overview.autopilot_request(overview.AutopilotForm("table"), choices)


def test_phases_of_a_running_and_of_a_cancelled_autopilot():
    status = {"job": "trai-2", "detail": "step 5/40, loss 0.61", "run_ids": ["trai-1", "trai-2"]}
    running = overview._phases(jobs.RUNNING, "training runs", status, {"profile_id": "prof-1"})
    assert [p.status for p in running] == ["done", "done", "done", "running", "waiting"]
    assert running[0].detail == "profile `prof-1`"
    assert running[3].detail == "run 2 of 2 · job `trai-2` · step 5/40, loss 0.61"
    cancelled = overview._phases(jobs.KILLED, "noise scale", {}, {})
    assert [p.status for p in cancelled] == ["done", "cancelled", "not run", "not run", "not run"]
    queued = overview._phases(jobs.PENDING, "queued", {}, {})
    assert {p.status for p in queued} == {"waiting"}
    finished = overview._phases(jobs.FINISHED, "done", {}, {})
    assert {p.status for p in finished} == {"done"}


def test_headline_metrics_say_when_the_target_was_not_reached_or_there_is_no_p_value():
    metrics = overview.headline_metrics(
        {
            "measured_speedup": None,
            "predicted_speedup": 2.5,
            "metric": "auc",
            "quality": {"name": "auc", "difference": -0.002, "p_value": None},
        }
    )
    values = {m.label: m.value for m in metrics}
    assert values == {
        "Measured speedup": "not reached",
        "Predicted speedup": "2.50×",
        "auc difference": "-0.0020",
        "p-value": "—",
    }
    measured = overview.headline_metrics(
        {
            "measured_speedup": 1.9,
            "measured_speedup_interval": [1.4, 2.6],
            "predicted_speedup": 1.5,
            "reached": 3,
            "seeds": 3,
            "quality": {
                "name": "auc",
                "difference": 0.001,
                "interval": [-0.002, 0.004],
                "p_value": 0.6,
                "verdict": "equivalent",
                "tolerance": 0.009,
            },
        }
    )
    assert [m.value for m in measured] == ["1.90× (1.40–2.60×)", "1.50×", "+0.0010", "0.6"]
    assert "equivalent within ±0.0090" in measured[2].help and "reached in 3 of 3 seeds" in measured[0].help
    kept = overview.headline_metrics({"kept_baseline": True, "predicted_speedup": 1.0})
    assert kept[0].value == "baseline kept"


def test_runs_that_did_not_finish_are_called_out():
    comparison = {
        "groups": [
            {"name": "baseline", "runs": [{"id": "a", "state": "FINISHED"}]},
            {"name": "recommended", "runs": [{"id": "b", "state": "FINISHED"}, {"id": "c", "state": "DIVERGED"}]},
        ]
    }
    (line,) = overview.unfinished_runs(comparison)
    assert line.startswith("1 of 2 recommended runs diverged")
