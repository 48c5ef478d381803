"""recommend / export / noise from the command line, on a real stored profile of the tiny workload."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import PROFILED_BATCHES
from helpers import run_cli


def test_recommend_json_fields_and_arithmetic(capsys, profiled_home):
    home, profile_id = profiled_home
    code, out, err = run_cli(capsys, "--home", str(home.root), "recommend", "--profile", profile_id, "--json")
    assert code == 0, err
    rec = json.loads(out)
    for key in ("recommendation_id", "batch_size", "learning_rate", "warmup_steps", "rule", "baseline",
                "predicted_speedup", "experiments_per_gpu_day", "candidates", "reasons"):
        assert key in rec
    assert rec["baseline"] == {"batch_size": 32, "learning_rate": 1e-2}
    assert rec["learning_rate"] == pytest.approx(1e-2 * rec["batch_size"] / 32)  # the linear rule
    assert rec["batch_size"] in PROFILED_BATCHES and rec["batch_size"] >= 32 and rec["reasons"]
    assert {c["batch_size"] for c in rec["candidates"]} == set(PROFILED_BATCHES)
    per_day = rec["experiments_per_gpu_day"]
    assert per_day["recommended"] / per_day["baseline"] == pytest.approx(rec["predicted_speedup"]["time_to_target"])
    code, out, _ = run_cli(capsys, "--home", str(home.root), "recommendations", "--json")
    assert rec["recommendation_id"] in [r["id"] for r in json.loads(out)]


def test_export_yaml_to_a_file_parses_back(capsys, profiled_home, tmp_path):
    home, profile_id = profiled_home
    code, out, _ = run_cli(capsys, "--home", str(home.root), "recommend", "--profile", profile_id, "--rule", "sqrt",
                       "--json")
    rec = json.loads(out)
    target = tmp_path / "rec.yaml"
    code, _, err = run_cli(capsys, "--home", str(home.root), "export", "--format", "yaml", "-o", str(target))
    assert code == 0, err
    document = yaml.safe_load(target.read_text())
    text = json.dumps(document)
    assert str(rec["batch_size"]) in text and rec["recommendation_id"] in text and "sqrt" in text


BAD = [
    (["recommend", "--profile", "prof-nope"], "no profile"),
    (["recommend", "--baseline-lr", "0"], "positive"),
    (["recommend", "--baseline-lr", "-0.1"], "positive"),
    (["recommend", "--baseline-lr", "fast"], "number"),
    (["recommend", "--baseline-batch", "100"], "not measured"),
    (["recommend", "--noise-scale", "100", "--estimate-noise"], "only one"),
    (["recommend", "--memory-headroom", "2"], "headroom"),
    (["export", "--recommendation", "rec-nope", "--format", "yaml"], "no recommendation"),
    (["export", "--format", "xml"], "xml"),
]


@pytest.mark.parametrize("argv, says", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_recommend_and_export_inputs(capsys, profiled_home, argv, says):
    home, profile_id = profiled_home
    assert run_cli(capsys, "--home", str(home.root), "recommend", "--profile", profile_id)[0] == 0  # one to export
    before = sorted(p.name for p in home.jobs.iterdir())
    code, out, err = run_cli(capsys, "--home", str(home.root), *argv)
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert sorted(p.name for p in home.jobs.iterdir()) == before  # no job started


def test_recommend_and_export_on_an_empty_home(capsys, home):
    code, _, err = run_cli(capsys, "recommend")
    assert code == 2 and "no profile yet" in err
    code, _, err = run_cli(capsys, "export", "--format", "json")
    assert code == 2 and "no recommendation yet" in err


def test_noise_bad_inputs(capsys, home, tiny_spec):
    for argv, says in [(["--batch-small", "64", "--batch-big", "32"], "batch"),
                       (["--batches", "0"], "positive"),
                       (["--batch-big", "1000000"], "batch")]:
        code, _, err = run_cli(capsys, "noise", "--workload", tiny_spec, *argv)
        assert code == 2 and says in err.lower() and err.count("\n") == 1, err
    assert not home.root.exists() or not any(home.jobs.iterdir())
