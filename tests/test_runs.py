"""Training runs as real jobs: crashes, concurrency, divergence, cancelling, restarts, and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
from helpers import first_time_at_or_below, metric_rows_in_spool, wait_for
from scipy import stats

from largestep import jobs, store
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LONG = TrainConfig(batch_size=16, lr=1e-2, epochs=200, log_every_steps=5)


def _spooled(home, job_id, kind):
    """Events of ``kind`` the job has spooled so far (none before its spool exists: a queued job has only its spec)."""
    spool = home.job_dir(job_id) / "events.jsonl"
    return spool.read_text().count(f'"type": "{kind}"') if spool.exists() else 0


def _welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p-value, straight from scipy (independent of largestep.plan.compare)."""
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_a_run_killed_with_sigkill_is_crashed_and_keeps_its_flushed_metrics(home, tiny_spec):
    [run] = starts.start_train(home, tiny_spec, {}, "cpu", LONG)
    assert wait_for(lambda: _spooled(home, run, "eval") >= 2)
    time.sleep(0.6)  # let a flush happen after the last eval, as it would mid-run
    os.killpg(jobs.read_status(home.job_dir(run))["pid"], signal.SIGKILL)
    assert wait_for(lambda: jobs.derive_state(home.job_dir(run)) == jobs.CRASHED, 10)
    store.ingest(home)
    with store.connect(home) as con:
        assert store.get_job(con, run)["state"] == "CRASHED"
        stored = con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [run]).fetchone()[0]
        evals = store.run_evaluations(con, [run])
    assert stored == metric_rows_in_spool(home, run) > 0  # everything flushed before the kill is in the database
    assert len(evals) >= 2


def test_an_absurd_learning_rate_ends_diverged_in_seconds(home, tiny_spec):
    started = time.monotonic()
    [run] = starts.start_train(
        home, tiny_spec, {}, "cpu", TrainConfig(batch_size=32, lr=1e7, epochs=500, warmup_samples=0)
    )
    assert jobs.wait(home, run, timeout_s=60) == jobs.DIVERGED
    assert time.monotonic() - started < 30
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, run)
    assert job["state"] == "DIVERGED" and "loss" in job["error"]


def test_four_runs_and_readers_on_one_database_lose_nothing(home, tiny_spec):
    """Four runs at once (each on its own lock key, as on four devices) while readers and ingesters poll."""
    from dataclasses import asdict

    config = TrainConfig(batch_size=32, lr=1e-2, epochs=4, log_every_steps=2)
    params = {"workload": tiny_spec, "options": {}, "device": "cpu", "config": asdict(config)}
    runs = [jobs.submit(home, "train", params, device=f"cpu-slot-{k}") for k in range(4)]
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            proc = subprocess.run(
                [sys.executable, "-m", "largestep.cli", "runs", "--json"],
                capture_output=True,
                text=True,
                env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
            )
            if proc.returncode != 0:
                errors.append(proc.stderr)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for run in runs:
            assert jobs.wait(home, run, timeout_s=180) == jobs.FINISHED
            store.ingest(home)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    store.ingest(home)
    assert not errors, errors[0]
    with store.connect(home) as con:
        for run in runs:
            stored = con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [run]).fetchone()[0]
            assert stored == metric_rows_in_spool(home, run)
        assert len(store.list_runs(con, states=["FINISHED"])) == 4


def test_a_cancelled_queued_run_never_starts(home, tiny_spec):
    first, second = starts.start_train(home, tiny_spec, {}, "cpu", LONG, repeats=2)
    assert wait_for(lambda: _spooled(home, first, "run_start") == 1)
    assert jobs.derive_state(home.job_dir(second)) == jobs.PENDING
    assert jobs.cancel(home, second)
    assert jobs.wait(home, second, timeout_s=20) == jobs.KILLED
    jobs.cancel(home, first)
    assert _spooled(home, second, "run_start") == 0 and _spooled(home, second, "start") == 0
    store.ingest(home)
    with store.connect(home) as con:
        states = {r["id"]: r["state"] for r in store.frame_records(store.list_runs(con))}
    assert states[second] == "KILLED"


def test_killing_the_cli_while_a_run_goes_on_loses_nothing(home, tiny_spec):
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "largestep.cli",
            "train",
            "--workload",
            tiny_spec,
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--epochs",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
    )
    assert wait_for(lambda: home.jobs.exists() and any(home.jobs.iterdir()))
    run = next(home.jobs.iterdir()).name
    assert wait_for(lambda: _spooled(home, run, "eval") >= 1)
    cli.kill()  # the terminal goes away; the job runs on in its own session
    cli.wait()
    assert jobs.wait(home, run, timeout_s=120) == jobs.FINISHED
    store.ingest(home)
    with store.connect(home) as con:
        run_row = store.get_run(con, run)
        stored = con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [run]).fetchone()[0]
    assert run_row["state"] == "FINISHED" and run_row["final_val_loss"] is not None
    assert stored == metric_rows_in_spool(home, run)


@pytest.mark.timeout(900)  # its subprocesses (or the session's autopilot) may take 300 s and more
def test_train_runs_compare_from_the_command_line(home, tiny_spec):
    def cli(*argv):
        proc = subprocess.run(
            [sys.executable, "-m", "largestep.cli", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
        )
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = cli(
        "train",
        "--workload",
        tiny_spec,
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "--epochs",
        "3",
        "--repeats",
        "2",
        "--json",
    )
    assert code == 0, err
    base = json.loads(out)
    assert [r["seed"] for r in base] == [0, 1] and base[0]["group_id"] == base[1]["group_id"]
    assert all(r["state"] == "FINISHED" and r["final_val_loss"] > 0 for r in base)
    code, out, err = cli(
        "train",
        "--workload",
        tiny_spec,
        "--batch-size",
        "128",
        "--lr",
        "0.04",
        "--epochs",
        "6",
        "--repeats",
        "2",
        "--json",
    )
    assert code == 0, err
    big = json.loads(out)
    code, out, err = cli("compare", base[0]["group_id"], big[0]["group_id"], "--json")
    assert code == 0, err
    result = json.loads(out)
    base_group, big_group = result["groups"]
    assert base_group["n"] == 2 and big_group["n"] == 2 and result["metric"] == "accuracy"
    # two finished seeds a side: Welch's test on the final accuracies the runs reported
    base_accuracy = [r["final_primary_metric"] for r in base]
    big_accuracy = [r["final_primary_metric"] for r in big]
    assert big_group["metric_difference"] == pytest.approx(
        statistics.fmean(big_accuracy) - statistics.fmean(base_accuracy)
    )
    assert big_group["p_value"] == pytest.approx(_welch_p(big_accuracy, base_accuracy))
    assert result["target_val_loss"] >= result["baseline_best_val_loss"]
    code, out, err = cli("runs", "--status", "FINISHED", "--json")
    assert code == 0, err
    assert sorted(r["id"] for r in json.loads(out)) == sorted(r["id"] for r in base + big)
    code, out, err = cli("runs", "show", base[0]["id"], "--json")
    assert code == 0, err
    assert len(json.loads(out)["evaluations"]) == 3  # one an epoch
    for bad, says in [
        (("compare", "nope", base[0]["id"]), "no run or group"),
        (("runs", "show", "nope"), "no run"),
        (("runs", "--status", "SLEEPING"), "unknown state"),
        (("runs", "cancel", "nope"), "no run"),
        (("train", "--workload", tiny_spec, "--batch-size", "32", "--lr", "-1"), "--lr"),
        (("train", "--workload", tiny_spec, "--batch-size", "30", "--lr", "1", "--accumulate", "4"), "divisible"),
    ]:
        code, _, err = cli(*bad)
        assert code == 2 and says in err and err.count("\n") == 1, err


@pytest.mark.timeout(900)  # its subprocesses (or the session's autopilot) may take 300 s and more
def test_autopilot_ends_with_a_headline(autopilot_run):
    home, code, result, stderr = autopilot_run  # `largestep autopilot --json`, run once for the session
    assert code == 0, stderr
    headline = result["headline"]
    assert headline["batch_size"] == result["recommendation"]["batch_size"]
    assert len(result["baseline_runs"]) == 2 and len(result["recommended_runs"]) == 2
    assert [g["name"] for g in result["comparison"]["groups"]] == ["baseline", "recommended"]
    with store.connect(home) as con:
        rec = store.load_recommendation(con, result["recommendation"]["recommendation_id"])
        roles = {r["role"] for r in store.frame_records(store.list_runs(con))}
        runs = {
            arm: [store.get_run(con, run_id) for run_id in result[f"{arm}_runs"]] for arm in ("baseline", "recommended")
        }
        evals = store.run_evaluations(con, result["baseline_runs"] + result["recommended_runs"])
    assert rec is not None and roles == {"baseline", "recommended"}
    assert headline["predicted_speedup"] == pytest.approx(rec["predicted_speedup"]["time_to_target"])
    assert f"predicted {headline['predicted_speedup']:.2f}x" in headline["text"]

    # the measured speedup: the baseline's median training time to its own best validation loss (+1%) over
    # the recommended runs', a run that never got there counting as at least its whole training time
    target = statistics.median(r["best_val_loss"] for r in runs["baseline"]) * 1.01
    medians = {arm: _median_time(evals, arm_runs, target) for arm, arm_runs in runs.items()}
    assert medians["baseline"] is not None  # the baseline's better seed reaches the median of their bests
    if medians["recommended"] is not None:
        expected = medians["baseline"] / medians["recommended"]
        assert headline["measured_speedup"] == pytest.approx(expected, rel=1e-6)
        # two seeds an arm: the ratio, and no word about it
        assert f"{expected:.2f}×, too few seeds to say" in headline["text"] and "faster" not in headline["text"]
    else:
        # a bound ("at most"), or none where its seeds ended without a training time (diverged at the scaled rate)
        assert headline["measured_speedup"] is None
        assert "at most" in headline["text"] or "ended without a training time" in headline["text"]
    assert "reached in" in headline["text"] and f"of {len(runs['recommended'])} seeds" in headline["text"]
    # the quality: Welch's test on the final accuracies of the two seeds of each arm, and the difference's interval
    # (a run that diverged has no final accuracy: it weighs nothing, and with one seed a side there is no p-value)
    accuracy = {
        arm: [r["final_primary_metric"] for r in arm_runs if r["final_primary_metric"] is not None]
        for arm, arm_runs in runs.items()
    }
    if min(len(values) for values in accuracy.values()) < 2:
        assert headline["p_value"] is None
    else:
        assert headline["p_value"] == pytest.approx(_welch_p(accuracy["recommended"], accuracy["baseline"]))
    difference = statistics.fmean(accuracy["recommended"]) - statistics.fmean(accuracy["baseline"])
    assert headline["quality"]["difference"] == pytest.approx(difference)
    assert f"accuracy {difference:+.4f}" in headline["text"]


def _median_time(evals, arm_runs: list[dict], target: float) -> float | None:
    """The Kaplan-Meier median time to the target, a run that never got there censored at its whole
    training time (or never, when it has none): written apart from largestep.plan.compare."""
    times = []
    for r in arm_runs:
        reached = first_time_at_or_below(evals, r["id"], target)
        times.append((reached, True) if reached is not None else (r["train_time_s"] or math.inf, False))
    surviving = 1.0
    for t in sorted({t for t, event in times if event}):
        at_risk = sum(1 for u, _ in times if u >= t)
        surviving *= 1 - sum(1 for u, event in times if event and u == t) / at_risk
        if surviving <= 0.5 + 1e-12:
            return t
    return None


def _cli(home, *argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "largestep.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
    )


@pytest.mark.slow
def test_a_detached_run_is_cancelled_from_the_command_line(home, tiny_spec):
    started = time.monotonic()
    proc = _cli(
        home, "train", "--workload", tiny_spec, "-b", "16", "--lr", "0.01", "--epochs", "200", "--detach", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60  # it returned while the 200 epochs go on
    queued = json.loads(proc.stdout)
    assert queued["state"] == jobs.PENDING and len(queued["run_ids"]) == 1
    [run] = queued["run_ids"]
    assert wait_for(lambda: _spooled(home, run, "eval") >= 1), "the detached run never trained"
    pid = jobs.read_status(home.job_dir(run))["pid"]

    proc = _cli(home, "runs", "cancel", run)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancelled {run}", proc.stderr
    assert jobs.wait(home, run, timeout_s=30) == jobs.KILLED
    assert wait_for(lambda: not _alive(pid), 10), "the run's process outlived its cancel"
    listed = json.loads(_cli(home, "runs", "--status", "KILLED", "--json").stdout)
    assert [r["id"] for r in listed] == [run] and listed[0]["final_val_loss"] is None
    proc = _cli(home, "runs", "cancel", run)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{run} had already ended"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_run_stops_at_the_target_validation_loss(home, tiny_spec):
    # the tiny model is below 0.2 at its first evaluation (the end of epoch 1, 2048 / 32 = 64 steps)
    proc = _cli(
        home,
        "train",
        "--workload",
        tiny_spec,
        "-b",
        "32",
        "--lr",
        "0.01",
        "--epochs",
        "20",
        "--target-val-loss",
        "0.2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["state"] == "FINISHED" and run["stop_reason"] == "target" and run["reached_target"]
    assert run["steps"] == 64 and run["final_val_loss"] <= 0.2  # 1 epoch of the 20 asked for
    assert run["target_val_loss"] == 0.2
    shown = json.loads(_cli(home, "runs", "show", run["id"], "--json").stdout)
    [evaluation] = shown["evaluations"]
    assert run["time_to_target_s"] == pytest.approx(evaluation["train_time_s"])
    # a target that is not a number is refused before any job starts
    proc = _cli(home, "train", "--workload", tiny_spec, "-b", "32", "--lr", "0.01", "--target-val-loss", "low")
    assert proc.returncode == 2 and "--target-val-loss" in proc.stderr and proc.stderr.count("\n") == 1
    assert len(list(home.jobs.iterdir())) == 1
