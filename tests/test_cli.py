"""The command line as a user meets it: JSON fields, help, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TINY, run_cli

BAD_INPUTS = [
    (["profile", "--workload", "no-such-workload"], "unknown workload"),
    (["profile", "--workload", "fraud-gru", "--batch-sizes", "32,0"], "positive integer"),
    (["profile", "--workload", "fraud-gru", "--batch-sizes", "32,-8"], "positive integer"),
    (["profile", "--workload", "fraud-gru", "--batch-sizes", "32,1.5"], "positive integer"),
    (["profile", "--workload", "fraud-gru", "--min-batch", "abc"], "positive integer"),
    (["profile", "--workload", "fraud-gru", "--max-batch", "0"], "positive integer"),
    (["profile", "--workload", "fraud-gru", "--device", "tpu"], "device"),
    (["profile", "--workload", "fraud-gru", "--device", "cuda"], "CUDA"),
    (["profile", "--workload", "fraud-gru", "--memory-budget", "12XB"], "bad size"),
    (["profile", "--workload", "fraud-gru", "--batch-sizes", "32", "--min-batch", "8"], "not both"),
    (["profile", "--workload", "fraud-gru", "--dtype", "fp8"], "fp8"),
    (["profile", "--workload", "fraud-gru", "--rounds", "0"], "--rounds"),
    (["profile", "--workload", "fraud-gru", "--set", "samples"], "KEY=VALUE"),
    (["profile", "--workload", "fraud-gru", "--set", "no_such_option=3"], "no_such_option"),
    (["profile", "--workload", "missing_file.py:make"], "missing_file.py"),
    (["profile"], "--workload"),
    (["no-such-command"], "no-such-command"),
]


@pytest.mark.parametrize("argv, says", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, home, argv, says):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("largestep: error: "), err
    assert says.lower() in err.lower()
    assert "Traceback" not in err + out
    assert not home.root.exists()  # nothing written


def test_an_unusable_home_is_refused(capsys, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    code, _, err = run_cli(capsys, "--home", str(not_a_folder), "profiles")
    assert code == 2 and "not a folder" in err
    code, _, err = run_cli(capsys, "--home", "/proc/largestep-home", "profile", "--workload", TINY)
    assert code == 2 and "cannot create home" in err
    code, out, _ = run_cli(
        capsys, "--home", "/proc/largestep-home", "profiles"
    )  # reading creates nothing: nothing there
    assert code == 0 and "no profiles yet" in out


def test_a_blank_home_is_refused_and_an_empty_largestep_home_means_unset(capsys, tmp_path, monkeypatch):
    import largestep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LARGESTEP_HOME", "  ")
    code, _, err = run_cli(capsys, "runs")
    assert code == 2 and err.count("\n") == 1 and "is empty: give a folder with --home or LARGESTEP_HOME" in err, err
    monkeypatch.setenv("LARGESTEP_HOME", "")  # empty: unset, as ${LARGESTEP_HOME:-.largestep} reads it
    code, _, err = run_cli(capsys, "--home", "", "runs")  # --home "$UNSET" in a script: refused, never "."
    assert code == 2 and "is empty" in err, err
    with pytest.raises(largestep.errors.UsageError, match="is empty"):
        largestep.track("x", batch_size=8, home=" ")
    assert list(tmp_path.iterdir()) == []
    with largestep.track("x", batch_size=8) as run:  # LARGESTEP_HOME="": the default home, ./.largestep
        run.log(1, train_loss=0.5)
    assert (tmp_path / ".largestep" / "jobs" / run.id).is_dir()


def test_a_database_that_is_not_duckdb_is_refused_untouched(capsys, home):
    home.root.mkdir(parents=True)
    home.database.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    code, _, err = run_cli(capsys, "profiles")
    assert code == 2 and "not a DuckDB database" in err
    assert home.database.read_bytes().startswith(b"SQLite format 3")


def test_the_profile_output_shows_the_background_load_and_flags_an_inconsistent_profile(capsys):
    from largestep.cli.measure import print_profile
    from largestep.store import profile_summary

    point = {"status": "ok", "p25_s": 0.5, "p75_s": 0.52, "n": 10, "samples_per_s": 31.1, "peak_memory_bytes": 2**20}
    stored = {
        "id": "prof-1",
        "workload": "cnn",
        "device_name": "CPU",
        "dtype": "fp32",
        "saturation_batch": 32,
        "stop_reason": "list",
        "inconsistency": "step time falls from 514 ms at batch 16 to 331 ms at 32",
        "points": [
            {**point, "batch_size": 16, "median_s": 0.514, "background_cpu_pct": 45.2, "inconsistent": True},
            {**point, "batch_size": 32, "median_s": 0.331, "background_cpu_pct": 3.0, "inconsistent": True},
        ],
    }
    print_profile(profile_summary(stored))
    out = " ".join(capsys.readouterr().out.split())
    assert "ok inconsistent" in out and "45%" in out and "3%" in out
    assert "inconsistent: step time falls from 514 ms at batch 16 to 331 ms at 32" in out
    # and what that means for using it: refused for recommending, unless the user accepts it
    assert (
        "profile prof-1 cannot be trusted: it fails the physics check: throughput rises 3.11x from batch 16 to "
        "32, more than the batch (2x)"
    ) in out and out.endswith("rerun on a quiet machine, or pass --accept-load")


def test_profiles_on_an_empty_home(capsys, home):
    code, out, _ = run_cli(capsys, "profiles", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(capsys, "profiles")
    assert "no profiles yet" in out


def test_hardware_json_lists_the_cpu_and_why_nvml_is_absent(capsys):
    code, out, _ = run_cli(capsys, "hardware", "--json")
    report = json.loads(out)
    assert code == 0
    cpu = [d for d in report["devices"] if d["kind"] == "cpu"]
    assert cpu and cpu[0]["total_memory_bytes"] > 0
    assert report["nvml"]["available"] is False and report["nvml"]["reason"]


def _command_paths(group=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the CLI, read from the click group (a new one is included)."""
    import click

    from largestep.cli.group import cli

    group = group or cli
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_the_help_covers_every_command_listed():
    # the parametrised help test below must not silently lose commands as the CLI grows
    names = {path[0] for path in _command_paths()}
    assert {
        "autopilot",
        "compare",
        "dashboard",
        "export",
        "hardware",
        "noise",
        "profile",
        "profiles",
        "recommend",
        "recommendations",
        "report",
        "runs",
        "train",
    } <= names
    assert ("runs", "cancel") in _command_paths() and ("runs", "show") in _command_paths()


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_command_has_help(capsys, home, path):
    from largestep.cli.group import cli

    code, out, err = run_cli(capsys, *path, "--help")
    assert code == 0 and not err, err
    assert out.startswith(f"Usage: largestep {' '.join(path)} ")
    summary = out.split("\n\n")[1].strip()  # the paragraph after the usage line says what it does
    assert summary and summary == summary.lstrip() and not summary.startswith("Options:")
    options = out[out.index("Options:") :]
    assert "-h, --help" in options
    command = cli
    for name in path:
        command = command.commands[name]
    for param in command.params:  # every option a user can give is explained
        if param.param_type_name == "option" and not param.hidden:
            assert param.opts[-1] in options or param.opts[0] in options, (path, param.opts)
    assert not home.root.exists()  # asking for help changes nothing


@pytest.mark.slow
def test_the_executable_ends_with_its_commands_code_once_all_it_said_is_out(capsys, home):
    # `python -m largestep.cli` ends the process without the interpreter's teardown (largestep.cli.run)
    bad = subprocess.run(
        [sys.executable, "-m", "largestep.cli", "profile", "--workload", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1, bad.stderr
    assert "unknown workload 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "largestep.cli", "profile", "--help"], capture_output=True, text=True, timeout=60
    )
    code, out, _ = run_cli(capsys, "profile", "--help")
    assert helped.returncode == code == 0 and helped.stdout == out  # every line, to the last option's
    assert not home.root.exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_profile_json_from_the_installed_command(home, tiny_spec):
    """The console script, end to end: a job, its spool, ingest, and the promised JSON fields."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "largestep.cli",
            "profile",
            "--workload",
            tiny_spec,
            "--batch-sizes",
            "8,32,128",
            "--min-steps",
            "3",
            "--min-seconds",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["profile_id"] and data["device"]["kind"] == "cpu"
    assert [p["batch_size"] for p in data["points"]] == [8, 32, 128]
    # None only when every point is noisy (a busy machine): a noisy point's throughput is no figure to reach
    assert data["saturation_batch"] in (8, 32, 128) or all(p["noisy"] for p in data["points"])
    for p in data["points"]:
        assert p["status"] == "ok"
        assert set(p["step_time_s"]) == {"estimate", "median", "p25", "p75", "n"} and p["step_time_s"]["n"] >= 3
        assert p["samples_per_s"] > 0 and p["peak_memory_bytes"] > 0 and p["flops_per_step"] > 0
        assert 1 <= p["warmup_steps"] <= 3  # untimed steps, at most the default --warmup-steps
    listed = subprocess.run(
        [sys.executable, "-m", "largestep.cli", "profiles", "--json"], capture_output=True, text=True, timeout=60
    )
    assert [r["id"] for r in json.loads(listed.stdout)] == [data["profile_id"]]


@pytest.mark.parametrize("flag, tf32", [([], None), (["--tf32"], True), (["--no-tf32"], False)])
def test_tf32_reaches_the_profile_the_runs_and_the_autopilot_alike(capsys, home, monkeypatch, flag, tf32):
    from largestep.errors import UsageError
    from largestep.jobs import start

    asked = {}

    def capture(kind):
        def start_job(_home, _workload, _options, _device, config, *args, **kwargs):
            asked[kind] = config.tf32
            raise UsageError("captured")

        return start_job

    for kind in ("profile", "train", "autopilot"):
        monkeypatch.setattr(start, f"start_{kind}", capture(kind))
    for argv in (
        ["profile", "-w", "fraud-mlp"],
        ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01"],
        ["autopilot", "-w", "fraud-mlp"],
    ):
        code, _, err = run_cli(capsys, *argv, *flag)
        assert code == 2 and "captured" in err
    assert asked == {"profile": tf32, "train": tf32, "autopilot": tf32}
