"""The examples/ workloads, end to end through the command line as a user runs them: profile (real
job processes), noise scale, recommendation, a short training run. Offline: HF_HUB_OFFLINE=1, and
every model is built from a config with random weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import required

from largestep.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IN_VISION_ENV = "LARGESTEP_IN_VISION_ENV"


def run_json(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def profile_noise_recommend_train(capsys, spec: str, settings: list[str], batch_sizes: str) -> dict:
    profile = run_json(
        capsys,
        "profile",
        "--workload",
        spec,
        *settings,
        "--batch-sizes",
        batch_sizes,
        "--min-steps",
        "3",
        "--min-seconds",
        "0",
        "--warmup-steps",
        "1",
    )
    noise = run_json(capsys, "noise", "--workload", spec, *settings, "--batches", "4", "--warm-steps", "10")
    # --accept-load: a real profile on a machine others share may be refused as measured under load
    rec = run_json(
        capsys, "recommend", "--accept-load", "--profile", profile["profile_id"], "--noise", noise["noise_id"]
    )
    run = run_json(
        capsys,
        "train",
        "--workload",
        spec,
        *settings,
        "--batch-size",
        str(rec["batch_size"]),
        "--lr",
        str(rec["learning_rate"]),
        "--max-steps",
        "8",
    )
    return {"profile": profile, "noise": noise, "recommendation": rec, "run": run}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # inherited by the job processes
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("function", ["bert", "gpt2"])
def test_hugging_face_tiny_models_from_configs(capsys, home, offline, function):
    required("transformers", "pip install 'largestep[hf]'")
    result = profile_noise_recommend_train(
        capsys, f"{EXAMPLES / 'hf_tiny.py'}:{function}", ["--set", "samples=1024"], "32,64"
    )
    points = result["profile"]["points"]
    assert [p["status"] for p in points] == ["ok", "ok"]
    # a Dataset workload: the step with its loader and the compute alone, both measured (three steps each on a
    # shared machine: their ratio is left to the profiler's own tests)
    assert all(p["compute_time_s"] > 0 and p["step_time_s"]["median"] > 0 for p in points)
    assert all(isinstance(p["input_bound"], bool) for p in points)
    assert math.isfinite(result["noise"]["g2"]) and math.isfinite(result["noise"]["trace_sigma"])
    assert result["recommendation"]["batch_size"] in (32, 64)
    run = result["run"]
    assert run["state"] == "FINISHED", run
    assert math.isfinite(run["final_val_loss"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_plain_dataset_and_a_model_returning_its_loss(capsys, home):
    result = profile_noise_recommend_train(
        capsys, f"{EXAMPLES / 'own_dataset.py'}:make", ["--set", "samples=2048"], "64,256"
    )
    assert [p["status"] for p in result["profile"]["points"]] == ["ok", "ok"]
    run = result["run"]
    assert run["state"] == "FINISHED" and math.isfinite(run["final_val_loss"])


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)  # ResNet-18 is heavy on two CPU cores, even on 16 x 16 pictures
def test_torchvision_resnet18_on_fake_data_through_loader_workers(capsys, home):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        # torchvision must match the torch beside it, and the CPU build of torch this project installs
        # on a machine without a GPU has none on PyPI: run this test again in the environment
        # `./dev vision` makes (a torch with its torchvision, the project's environment behind them)
        if os.environ.get(IN_VISION_ENV):
            raise
        rerun_in_vision_environment(home)
        return
    result = profile_noise_recommend_train(
        capsys, f"{EXAMPLES / 'torchvision_resnet.py'}:resnet18", ["--set", "samples=128", "--set", "image=16"], "16,32"
    )
    points = result["profile"]["points"]
    assert [p["status"] for p in points] == ["ok", "ok"]
    # the loader (PIL images made, flipped, converted and collated in worker processes) and the compute alone
    assert all(p["compute_time_s"] > 0 and p["step_time_s"]["median"] > 0 for p in points)
    assert all(isinstance(p["input_bound"], bool) for p in points)
    assert math.isfinite(result["noise"]["g2"]) and math.isfinite(result["noise"]["trace_sigma"])
    run = result["run"]
    assert run["state"] == "FINISHED" and math.isfinite(run["final_val_loss"])


def rerun_in_vision_environment(home) -> None:
    """Run the calling test in the environment ``./dev vision`` sets up (made the first time: about
    a minute from a local wheel cache, several GB from the network) and fail with its output if it fails."""
    test = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
    setup = subprocess.run(
        [str(ROOT / "dev"), "vision"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    if setup.returncode != 0:
        pytest.fail(f"./dev vision failed:\n{setup.stderr[-3000:]}")
    python = ROOT / setup.stdout.strip().splitlines()[-1]
    env = dict(os.environ, **{IN_VISION_ENV: "1"})
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(home.root.parent / "vision"),
            test,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-5000:] + result.stderr[-2000:]
