"""largestep.track: a run of the user's own training loop, seen by the store, the CLI and compare as any run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from helpers import open_page, wait_for

import largestep
from largestep import jobs, store
from largestep.errors import UsageError
from largestep.jobs.track import ROWS_PER_EVENT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_loop(run, steps: int = 40, batch_size: int = 32, eval_every: int = 10, seed: int = 0, first: int = 1) -> None:
    """A real PyTorch loop on a small two-class problem, logging as the README shows (steps first, first+1, ...)."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(2048, 16, generator=g), torch.randn(16, generator=g)
    y = (x @ w > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(first, first + steps):
        idx = torch.randint(0, 1536, (batch_size,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(step, train_loss=loss.item(), lr=1e-2, samples=step * batch_size)
        if step % eval_every == 0:
            with torch.no_grad(), run.paused():
                out = model(x[1536:])
                val_loss = torch.nn.functional.cross_entropy(out, y[1536:]).item()
                accuracy = (out.argmax(1) == y[1536:]).float().mean().item()
            run.log(step, val_loss=val_loss, val_accuracy=accuracy)


def cli(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "largestep.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
    )


def script(home, body: str) -> subprocess.Popen:
    """A user's training program in a process (and session) of its own, tracking into ``home``."""
    code = "import largestep, time, sys\n" + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        start_new_session=True,
        env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def spool_runs(home) -> list[str]:
    return sorted(p.name for p in home.jobs.iterdir()) if home.jobs.exists() else []


@pytest.mark.slow
def test_a_tracked_loop_is_running_while_it_trains_and_finished_with_its_metrics_after(home, monkeypatch):
    with largestep.track(
        "plain-mlp", batch_size=32, lr=1e-2, seed=3, tags=["plain-loop"], home=home.root, primary_metric="accuracy"
    ) as run:
        plain_loop(run, steps=20)
        # live: the heartbeat hands the rows to the spool within a second; ingest sees a RUNNING run
        assert wait_for(lambda: store.ingest(home).rows.get("metrics", 0) > 0, timeout=5)
        with store.connect(home) as con:
            live = store.list_runs(con)
        assert list(live["state"]) == ["RUNNING"]
        page = open_page(monkeypatch, home, "runs")  # the dashboard shows it live, with its last step
        assert list(page.dataframe[0].value["state"]) == ["RUNNING"]
        assert any(run.id in m.value and "running" in m.value for m in page.markdown)
        plain_loop(run, steps=40, first=21)
    store.ingest(home)
    with store.connect(home) as con:
        record = store.get_run(con, run.id)
        names = store.run_metrics(con, [run.id])
    assert record["state"] == "FINISHED" and record["error"] is None
    assert (record["workload"], record["batch_size"], record["lr"], record["seed"]) == ("plain-mlp", 32, 1e-2, 3)
    assert record["role"] == "external" and list(record["tags"]) == ["plain-loop"]
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["largestep"] == largestep.__version__
    assert record["device_name"] and record["steps"] == 60
    assert record["final_primary_metric"] == pytest.approx(record["final_metrics"]["accuracy"])
    counts = names.groupby("name").size().to_dict()
    assert counts["train_loss"] == 60 and counts["val_loss"] == 6 and counts["val_accuracy"] == 6
    assert counts["samples_per_s"] >= 59
    assert record["train_time_s"] < record["wall_time_s"]  # evaluation inside run.paused() is off the clock
    listed = json.loads(cli(home, "runs", "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run.id, "FINISHED")]
    shown = cli(home, "runs", "show", run.id)  # its evaluations have no epoch: the loop did not say
    assert shown.returncode == 0, shown.stderr
    assert len([line for line in shown.stdout.splitlines() if line.startswith("  step ")]) == 6


def test_a_block_that_raises_fails_the_run_with_the_one_line_message_and_reraises(home):
    with pytest.raises(RuntimeError, match="loader exhausted"):
        with largestep.track("plain-mlp", batch_size=32, home=home.root) as run:
            run.log(1, train_loss=0.7)
            raise RuntimeError("loader exhausted\nsecond line of detail")
    assert jobs.derive_state(home.job_dir(run.id)) == jobs.FAILED
    store.ingest(home)
    with store.connect(home) as con:
        record = store.get_run(con, run.id)
    assert record["state"] == "FAILED" and record["error"] == "RuntimeError: loader exhausted"
    assert record["steps"] == 1


def test_a_block_left_by_sys_exit_0_is_finished_and_by_ctrl_c_killed(home):
    with pytest.raises(SystemExit):
        with largestep.track("plain-mlp", batch_size=32, home=home.root) as done:
            done.log(1, train_loss=0.7)
            sys.exit(0)
    with pytest.raises(KeyboardInterrupt):
        with largestep.track("plain-mlp", batch_size=32, home=home.root) as stopped:
            stopped.log(1, train_loss=0.7)
            raise KeyboardInterrupt
    assert jobs.derive_state(home.job_dir(done.id)) == jobs.FINISHED
    assert jobs.derive_state(home.job_dir(stopped.id)) == jobs.KILLED


def test_bad_values_are_recorded_as_missing_with_one_warning_each_and_never_raise(home):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with largestep.track("plain-mlp", batch_size=8, home=home.root) as run:
            run.log(1, train_loss=float("nan"), lr="fast")
            run.log(2, train_loss=float("inf"), lr=None)
            run.log(3, train_loss=torch.tensor(0.5), lr=torch.tensor([1.0, 2.0]))
            run.log(4, train_loss=0.25, lr=1e-3)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages
    assert "train_loss=nan at step 1" in messages[0] and "lr='fast' at step 1" in messages[1]
    store.ingest(home)
    with store.connect(home) as con:
        rows = store.run_metrics(con, [run.id], ["train_loss", "lr"])
        record = store.get_run(con, run.id)
    assert record["state"] == "FINISHED"
    assert sorted(zip(rows["name"], rows["step"], rows["value"])) == [
        ("lr", 4, 1e-3),
        ("train_loss", 3, 0.5),
        ("train_loss", 4, 0.25),
    ]


def test_a_step_going_backwards_is_refused_with_a_clear_error_and_ends_the_run_failed(home):
    with pytest.raises(UsageError, match="step 5 comes after step 10; steps must not go backwards"):
        with largestep.track("plain-mlp", batch_size=8, home=home.root) as run:
            run.log(10, train_loss=0.5)
            run.log(10, val_loss=0.6)  # the same step again is fine: a validation at a training step
            run.log(5, train_loss=0.4)
    for bad in (-1, 1.5, "3", True):
        with (
            largestep.track("plain-mlp", batch_size=8, home=home.root) as other,
            pytest.raises(UsageError, match="step"),
        ):
            other.log(bad, train_loss=0.5)
    store.ingest(home)
    with store.connect(home) as con:
        assert store.get_run(con, run.id)["error"].startswith("log: step 5 comes after step 10")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 32, "lr": -1.0}, "lr must be a positive number"),
        ({"batch_size": 32, "epochs_planned": 3}, "unknown option 'epochs_planned'"),
        ({"batch_size": 32, "primary_metric_mode": "up"}, "primary_metric_mode must be 'max' or 'min'"),
        ({"batch_size": 32, "device": "tpu"}, "unknown device"),
        ({"batch_size": 32, "recommendation": "latest"}, "no recommendations in"),
        # the CLI's bounds, the columns' range: a run the store cannot hold is refused, not set aside at ingest
        ({"batch_size": 32, "seed": 3_000_000_000}, "seed must be between 0 and 2,147,483,647"),
        ({"batch_size": 32, "seed": -1}, "seed must be between 0 and"),
        ({"batch_size": 2**31}, "batch_size must be between 1 and 2,147,483,647"),
        ({"batch_size": 32, "accumulate": 2**31}, "accumulate must be between 1 and"),
        ({"batch_size": 32, "world_size": 2**31}, "world_size must be between 1 and"),
        ({"batch_size": 32, "total_steps": 2**63}, "total_steps must be between 1 and"),
        ({"batch_size": 32, "epochs": float("inf")}, "epochs must be a finite number"),
        ({"batch_size": 32, "lr": float("nan")}, "lr must be a finite number"),
        ({"batch_size": 32, "group": 7}, "group must be a string or None"),
        # hyperparameters the run's spec and the database's JSON can hold, refused before the run's folder
        ({"batch_size": 32, "hyperparameters": {"model": object()}}, "hyperparameters must be JSON"),
        ({"batch_size": 32, "hyperparameters": {"dropout": float("nan")}}, "hyperparameters must be JSON"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(home, kwargs, message):
    with pytest.raises(largestep.errors.LargestepError, match=message) as raised:
        largestep.track("plain-mlp", home=home.root, **kwargs).start()
    assert "\n" not in str(raised.value)
    assert spool_runs(home) == [] and not home.database.exists() and not home.root.exists()


@pytest.mark.slow
def test_a_tracked_process_that_dies_is_crashed_and_keeps_what_it_flushed(home):
    proc = script(
        home,
        """
        with largestep.track("doomed", batch_size=16) as run:
            for step in range(1, 31):
                run.log(step, train_loss=1.0 / step)
            print(run.id, flush=True)
            time.sleep(60)
    """,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    assert wait_for(lambda: jobs.derive_state(home.job_dir(run_id)) == jobs.RUNNING, 10)
    assert wait_for(lambda: '"metrics"' in (home.job_dir(run_id) / "events.jsonl").read_text(), 5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_for(lambda: jobs.derive_state(home.job_dir(run_id)) == jobs.CRASHED, 10)
    store.ingest(home)
    with store.connect(home) as con:
        record = store.get_run(con, run_id)
        stored = len(store.run_metrics(con, [run_id], ["train_loss"]))
    assert record["state"] == "CRASHED" and stored == 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "ending, error",
    [
        ('raise ValueError("tokenizer missing")', "ValueError: tokenizer missing"),
        ("sys.exit(0)", "the process exited before the run was finished"),
    ],
)
def test_a_run_left_open_when_the_process_exits_ends_failed_with_why(home, ending, error):
    # as a Hugging Face train() that raises: no hook ends the run, the interpreter's exit does
    proc = script(
        home,
        f"""
        run = largestep.track("left-open", batch_size=16).start()
        run.log(1, train_loss=1.0)
        print(run.id, flush=True)
        {ending}
    """,
    )
    out, _err = proc.communicate(timeout=60)
    run_id = out.strip()
    assert jobs.derive_state(home.job_dir(run_id)) == jobs.FAILED
    store.ingest(home)
    with store.connect(home) as con:
        assert store.get_run(con, run_id)["error"] == error


@pytest.mark.slow
def test_cancel_refuses_a_tracked_run_and_leaves_the_users_process_alone(home):
    proc = script(
        home,
        """
        with largestep.track("mine", batch_size=16) as run:
            run.log(1, train_loss=1.0)
            print(run.id, flush=True)
            time.sleep(30)
    """,
    )
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read()
        result = cli(home, "runs", "cancel", run_id)
        assert result.returncode == 2, result
        assert "tracked from your own training code" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert proc.poll() is None and jobs.derive_state(home.job_dir(run_id)) == jobs.RUNNING
        assert not (home.job_dir(run_id) / jobs.runner.CANCEL_MARKER).exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_full_batch_of_rows_is_written_without_waiting_for_the_next_beat(home, monkeypatch):
    import largestep.jobs.track as track

    monkeypatch.setattr(track, "HEARTBEAT_S", 60.0)  # only a full batch can wake the writer within the test
    with largestep.track("plain-mlp", batch_size=8, home=home.root) as run:
        for step in range(ROWS_PER_EVENT - 1):
            run.log(step, train_loss=1.0)
        job_dir = home.job_dir(run.id)

        def metric_rows():  # the engine's reader: a line still being written is not read yet
            return sum(len(e.get("rows", [])) for e in jobs.events.read_all(job_dir) if e["type"] == "metrics")

        assert not wait_for(metric_rows, timeout=0.5)
        run.log(ROWS_PER_EVENT, train_loss=1.0)
        assert wait_for(metric_rows, timeout=10)
        assert metric_rows() == ROWS_PER_EVENT


def test_a_run_tied_to_a_recommendation_takes_its_role_and_rate_from_the_batch(home):
    from test_export import make_rec

    rec = make_rec(
        recommendation_id="rec-0000beef",
        batch_size=1024,
        learning_rate=0.008,
        baseline={"batch_size": 128, "learning_rate": 0.001},
        device={"id": "cpu", "kind": "cpu"},
    )
    with store.connect(home) as con:
        store.save_recommendation(home, con, rec)
    ids = {}
    for batch in (1024, 128, 256):
        with largestep.track("fraud-gru", batch_size=batch, recommendation="latest", home=home.root) as run:
            run.log(1, train_loss=0.5)
        ids[batch] = run.id
    store.ingest(home)
    with store.connect(home) as con:
        runs = {batch: store.get_run(con, run_id) for batch, run_id in ids.items()}
        tied = store.recommendation_runs(con, "rec-0000beef")
    assert [(runs[b]["role"], runs[b]["lr"]) for b in (1024, 128, 256)] == [
        ("recommended", 0.008),
        ("baseline", 0.001),
        ("external", None),
    ]
    assert all(r["recommendation_id"] == "rec-0000beef" for r in runs.values())
    assert sorted(tied["role"]) == ["baseline", "recommended"]
    with pytest.raises(UsageError, match="no recommendation 'rec-nothere'"):
        largestep.track("fraud-gru", batch_size=1024, recommendation="rec-nothere", home=home.root)
