"""The HTML report: self-contained, complete, and the `largestep report` command that writes it."""

from __future__ import annotations

import re

import pytest
from conftest import TINY
from helpers import copy_home, recommend_stored, run_cli

from largestep import jobs, store
from largestep.home import Home
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig
from largestep.plan.recommend import RecommendConfig
from largestep.ui.report import build_report

PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d")


@pytest.fixture(scope="module")
def verified_home(profiled_template, tmp_path_factory) -> tuple[Home, dict]:
    """The session's tiny profile, a saved recommendation, and one baseline and one recommended run of it."""
    template, profile = profiled_template
    home = copy_home(template, tmp_path_factory.mktemp("report") / "home")
    rec = recommend_stored(home, profile, RecommendConfig(noise_scale=200.0))
    with store.connect(home) as con:
        store.save_recommendation(home, con, rec)
    run_ids = []
    for role, batch, lr in (
        ("baseline", rec["baseline"]["batch_size"], rec["baseline"]["learning_rate"]),
        ("recommended", rec["batch_size"], rec["learning_rate"]),
    ):
        run_ids += starts.start_train(
            home,
            TINY,
            {},
            "cpu",
            TrainConfig(batch_size=batch, lr=lr, epochs=2),
            role=role,
            recommendation_id=rec["recommendation_id"],
        )
    for run_id in run_ids:
        assert jobs.wait(home, run_id, timeout_s=180) == jobs.FINISHED
    store.ingest(home)
    return home, rec


def test_the_report_is_self_contained_and_shows_everything(verified_home):
    home, rec = verified_home
    text = build_report(home, recommendation_id=rec["recommendation_id"])
    assert len(PLOTLY_BANNER.findall(text)) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]+src\s*=", text, re.IGNORECASE)  # no external script at all
    assert not re.search(r"<link[^>]+href\s*=\s*['\"]https?:", text, re.IGNORECASE)
    assert rec["recommendation_id"] in text and rec["profile_id"] in text
    assert f"Batch <b>{rec['batch_size']}</b>" in text
    for div in ("chart-profile-0", "chart-profile-1", "chart-profile-2", "chart-time-to-target", "chart-val-loss"):
        assert f'id="{div}"' in text
    assert text.count("Plotly.newPlot") == 5
    for reason in rec["reasons"]:
        assert reason.replace("'", "&#x27;") in text
    # the verification: both groups compared, with the baseline's target
    runs_section = text[text.index("id='runs'") :]
    assert "Target: the baseline" in runs_section and "recommended" in runs_section
    assert "No baseline and recommended training runs" not in runs_section


def test_a_profile_only_report_says_how_to_get_a_recommendation(tmp_path):
    import pandas as pd

    from largestep.ui.report import ReportData, render_report

    profile = {"id": "prof-x", "workload": "w<script>", "device_name": "cpu", "points": []}
    text = render_report(ReportData(profile=profile, points=pd.DataFrame()))
    assert "w&lt;script&gt;" in text and "<script>alert" not in text  # user text is escaped
    assert 'id="chart-profile-0"' in text and "chart-time-to-target" not in text


def test_cli_report_writes_the_file_atomically(capsys, verified_home, tmp_path):
    home, rec = verified_home
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "report", "--recommendation", "latest", "-o", str(target)
    )
    assert code == 0, err
    text = target.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert rec["recommendation_id"] in text
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary file left behind
    assert "wrote" in err


def test_cli_report_defaults_to_the_newest_and_a_file_in_the_working_folder(
    capsys, verified_home, tmp_path, monkeypatch
):
    home, rec = verified_home
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--home", str(home.root), "report", "--profile", rec["profile_id"])
    assert code == 0, err
    assert rec["recommendation_id"] in (tmp_path / "largestep-report.html").read_text()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["report", "--recommendation", "rec-nope"], "no recommendation 'rec-nope'"),
        (["report", "--profile", "prof-nope"], "no profile 'prof-nope'"),
        (["report", "-o", "/nonexistent-folder/r.html"], "cannot write"),
    ],
)
def test_cli_report_errors_are_one_line(capsys, verified_home, tmp_path, argv, says):
    home, _ = verified_home
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        *argv[:1],
        *argv[1:],
        *([] if "-o" in argv else ["-o", str(tmp_path / "r.html")]),
    )
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "r.html").exists()


def test_cli_report_on_an_empty_home(capsys, home, tmp_path):
    code, _, err = run_cli(capsys, "report", "-o", str(tmp_path / "r.html"))
    assert code == 2 and err.count("\n") == 1 and "nothing to report yet" in err
    assert not (tmp_path / "r.html").exists()
    home.ensure()
    with store.connect(home):
        pass  # an existing but empty database says the same
    code, _, err = run_cli(capsys, "report", "-o", str(tmp_path / "r.html"))
    assert code == 2 and "nothing to report yet" in err


def test_a_run_tracked_from_your_own_code_joins_the_verification(verified_home, tmp_path):
    import shutil

    from test_track import plain_loop

    import largestep

    home, rec = verified_home
    mine = Home(tmp_path / "home")
    shutil.copytree(home.root, mine.root)  # the module's home stays as the other tests expect it
    with largestep.track(
        "tiny-mlp", batch_size=rec["batch_size"], recommendation=rec["recommendation_id"], home=mine.root
    ) as tracked:
        plain_loop(tracked, steps=20, batch_size=rec["batch_size"])
    store.ingest(mine)
    runs_section = build_report(mine, recommendation_id=rec["recommendation_id"]).split("id='runs'")[1]
    assert tracked.id in runs_section and "Target: the baseline" in runs_section


def test_the_report_judges_an_autopilots_runs_with_its_tolerances_and_colours_its_headline_by_its_verdict():
    """One tolerance per comparison: the report used its own defaults for runs an autopilot had compared with
    others. And a headline whose arm got worse is never shown as a success."""
    import pandas as pd

    from largestep.ui.report import ReportData, _runs_section, _summary

    def run(run_id: str, role: str, t: float) -> dict:
        return {
            "id": run_id,
            "role": role,
            "seed": int(run_id[-1]),
            "state": "FINISHED",
            "best_val_loss": 0.5,
            "final_val_loss": 0.5,
            "train_time_s": t,
            "steps": 10,
            "batch_size": 32,
            "lr": 1e-3,
        }

    runs = [run(f"b{k}", "baseline", 10.0) for k in range(3)] + [run(f"r{k}", "recommended", 5.0) for k in range(3)]
    evals = pd.DataFrame(
        [
            {
                "run_id": r["id"],
                "step": 10,
                "train_time_s": r["train_time_s"],
                "wall_time_s": r["train_time_s"],
                "val_loss": 0.5,
            }
            for r in runs
        ]
    )
    rec = {
        "recommendation_id": "rec-1",
        "batch_size": 256,
        "learning_rate": 8e-3,
        "rule": "linear",
        "warmup_steps": 1,
        "warmup_samples": 256,
        "baseline": {"batch_size": 32, "learning_rate": 1e-3},
        "predicted_speedup": {
            "time_to_target": 2.0,
            "throughput": 4.0,
            "time_to_target_interval": [1.5, 2.6],
            "coverage": 0.9,
        },
        "experiments_per_gpu_day": {},
    }
    autopilot = {
        "headline": {"text": "batch 256 ...", "tone": "bad"},
        "comparison": {"tolerance": 0.2, "quality": {"tolerance_share": 0.3}},
    }
    data = ReportData(
        profile={"id": "p"},
        points=pd.DataFrame(),
        recommendation=rec,
        runs=runs,
        evaluations=evals,
        autopilot=autopilot,
    )
    assert "<p class='headline bad'>Measured: batch 256 ...</p>" in _summary(rec, data)
    assert "90% prediction interval 1.50–2.60×" in _summary(rec, data)
    section = _runs_section(rec, data)
    assert "loosened by 20%" in section and "within 30% of the baseline" in section
