"""recommend / export / noise from the command line, on a real stored profile of the tiny workload.

The profile is measured for real on a machine others share: under load it cannot be trusted, and
`recommend` refuses it (tests/test_trust.py). These tests are about what a recommendation holds, so they
pass --accept-load: the same arithmetic, whatever the machine's load was."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import PROFILED_BATCHES
from helpers import run_cli


def test_recommend_json_fields_and_arithmetic(capsys, profiled_home):
    home, profile_id = profiled_home
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "recommend", "--accept-load", "--profile", profile_id, "--json"
    )
    assert code == 0, err
    rec = json.loads(out)
    for key in (
        "recommendation_id",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "rule",
        "baseline",
        "predicted_speedup",
        "experiments_per_gpu_day",
        "candidates",
        "reasons",
    ):
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
    code, out, _ = run_cli(
        capsys,
        "--home",
        str(home.root),
        "recommend",
        "--accept-load",
        "--profile",
        profile_id,
        "--rule",
        "sqrt",
        "--json",
    )
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
    assert (
        run_cli(capsys, "--home", str(home.root), "recommend", "--accept-load", "--profile", profile_id)[0] == 0
    )  # one to export
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
    for argv, says in [
        (["--batch-small", "64", "--batch-big", "32"], "batch"),
        (["--batches", "0"], "positive"),
        (["--batch-big", "1000000"], "batch"),
    ]:
        code, _, err = run_cli(capsys, "noise", "--workload", tiny_spec, *argv)
        assert code == 2 and says in err.lower() and err.count("\n") == 1, err
    # no job written (the workload the checks loaded may stay in the home's workload cache: it is valid)
    assert not home.jobs.exists() or not any(home.jobs.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("baseline_lr, stable", [("0.01", True), ("10", False)])
def test_check_stability_runs_a_job_and_keeps_its_verdict_with_the_recommendation(
    capsys, profiled_home, baseline_lr, stable
):
    from largestep import jobs, store

    home, profile_id = profiled_home
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "recommend",
        "--accept-load",
        "--profile",
        profile_id,
        "--noise-scale",
        "1000",
        "--baseline-lr",
        baseline_lr,
        "--check-stability",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    rec = json.loads(out)
    check_id = rec["stability"]["id"]
    assert jobs.derive_state(home.job_dir(check_id)) == jobs.FINISHED
    scaled = float(baseline_lr) * rec["batch_size"] / 32  # the linear rule's rate, before the check
    with store.connect(home) as con:
        check = store.load_stability(con, check_id)
        kept = store.load_recommendation(con, rec["recommendation_id"])
    assert (check["batch_size"], check["stable"]) == (rec["batch_size"], stable)
    assert check["recommended_lr"] == pytest.approx(scaled)
    assert kept["stability"]["id"] == check_id and kept["learning_rate"] == rec["learning_rate"]
    if stable:  # the tiny model takes 0.01 x B/32 and three times it: the rate stands
        assert rec["learning_rate"] == pytest.approx(scaled) and check["diverged_at_lr"] is None
        assert "stability check: the loss stayed stable" in rec["reasons"][-1]
    else:  # at 10 x B/32 it diverges on the ramp below the rate: backed off
        assert check["diverged_at_lr"] < scaled
        assert rec["learning_rate"] == pytest.approx(check["max_stable_lr"])
        assert check["max_stable_lr"] < check["diverged_at_lr"]
        assert "backed off" in rec["reasons"][-1]


@pytest.mark.slow
def test_noise_estimates_stores_its_row_and_the_next_recommendation_uses_it(capsys, profiled_home, tiny_spec):
    from largestep import store

    home, profile_id = profiled_home
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "noise",
        "--workload",
        tiny_spec,
        "--warm-steps",
        "5",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    # the seeded estimate of test_noise.py's end-to-end test, now through a job and the store
    assert (result["batch_small"], result["batch_big"], result["batches"], result["warm_steps"]) == (32, 256, 32, 5)
    assert not result["unreliable"] and result["b_simple"] == pytest.approx(62.5, rel=0.05)
    with store.connect(home) as con:
        row = store.load_noise(con, result["noise_id"])
    assert row["workload"] == "tiny-mlp" and row["device_id"] == "cpu"
    assert (row["b_simple"], row["ci_low"], row["ci_high"]) == (result["b_simple"], result["ci_low"], result["ci_high"])
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "recommend", "--accept-load", "--profile", profile_id, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["noise_id"] == result["noise_id"]  # the newest reliable estimate of the workload


@pytest.mark.slow
def test_noise_curve_is_stored_and_the_next_recommendation_plans_a_schedule_from_it(capsys, profiled_home, tiny_spec):
    from largestep import store

    home, profile_id = profiled_home
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "noise",
        "--workload",
        tiny_spec,
        "--at",
        "1,0,0.5",
        "--batches",
        "8",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    curve = json.loads(out)
    # the tiny workload's baseline run: 3 epochs of 2,048 samples at batch 32, 192 steps
    assert [(p["fraction"], p["step"]) for p in curve["points"]] == [(0.0, 0), (0.5, 96), (1.0, 192)]
    with store.connect(home) as con:
        assert [p["b_simple"] for p in store.load_noise_curve(con, curve["curve_id"])] == [
            p["b_simple"] for p in curve["points"]
        ]
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "recommend", "--accept-load", "--profile", profile_id, "--json"
    )
    assert code == 0, err
    plan = json.loads(out)["batch_schedule"]  # the newest curve of the workload, by default
    assert plan["curve_id"] == curve["curve_id"]
    sizes = [p["batch_size"] for p in plan["phases"]]
    assert sizes == sorted(sizes) and set(sizes) <= set(PROFILED_BATCHES)
    assert plan["predicted_speedup"]["over_best_fixed"] >= 1 - 1e-9  # the best fixed batch is one schedule
    code, out, err = run_cli(capsys, "--home", str(home.root), "recommend", "--accept-load", "--profile", profile_id)
    assert code == 0 and "Batch schedule from noise curve" in out and f"--batch-schedule {plan['spec']}" in out
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "recommend",
        "--accept-load",
        "--profile",
        profile_id,
        "--noise-curve",
        "none",
        "--json",
    )
    assert "batch_schedule" not in json.loads(out)


@pytest.mark.parametrize(
    "args, words",
    [
        (("--at", "0,2"), "between 0 and 1"),
        (("--at", "0.5"), "two fractions"),
        (("--at", "0,1", "--warm-steps", "5"), "do not go together"),
    ],
)
def test_noise_curve_refuses_bad_input_and_starts_nothing(capsys, home, tiny_spec, args, words):
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "noise", "--workload", tiny_spec, "--device", "cpu", *args
    )
    assert code == 2 and words in err and "Traceback" not in err
    assert not (home.root / "jobs").exists() or not any((home.root / "jobs").iterdir())


def test_recommend_refuses_a_noise_curve_that_does_not_exist(capsys, profiled_home):
    home, profile_id = profiled_home
    code, _, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "recommend",
        "--accept-load",
        "--profile",
        profile_id,
        "--noise-curve",
        "nois-0000",
    )
    assert code == 2 and "no noise curve 'nois-0000'" in err


def test_export_splits_the_global_batch_over_devices_and_micro_batches(capsys, profiled_home, tmp_path):
    home, profile_id = profiled_home
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "recommend",
        "--accept-load",
        "--profile",
        profile_id,
        "--noise-scale",
        "1000",
        "--json",
    )
    assert code == 0, err
    rec = json.loads(out)
    batch, rec_id = rec["batch_size"], rec["recommendation_id"]
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "export",
        "--recommendation",
        rec_id,
        "--format",
        "json",
        "--devices",
        "2",
        "--micro-batch",
        str(batch // 4),
    )
    assert code == 0, err
    training = json.loads(out)["training"]
    assert (
        training["batch_size"],
        training["devices"],
        training["micro_batch_size"],
        training["gradient_accumulation_steps"],
    ) == (batch, 2, batch // 4, 2)
    assert training["learning_rate"] == pytest.approx(rec["learning_rate"])  # the global batch's rate, unchanged
    code, out, err = run_cli(
        capsys, "--home", str(home.root), "export", "--recommendation", rec_id, "--format", "json", "--devices", "4"
    )
    assert code == 0, err
    training = json.loads(out)["training"]
    assert (training["devices"], training["micro_batch_size"], training["gradient_accumulation_steps"]) == (
        4,
        batch // 4,
        1,
    )
    # a split that does not divide the batch: one line naming what works, and no file
    target = tmp_path / "split.yaml"
    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "export",
        "--recommendation",
        rec_id,
        "--format",
        "yaml",
        "--devices",
        "3",
        "-o",
        str(target),
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"largestep: error: --devices 3 does not divide the global batch {batch}")
    assert not target.exists() and not out
