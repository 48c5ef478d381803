"""Bad inputs and faults, organised by kind, as a careless user or a bad day produces them.

Each case shows what a user would notice: a bad input is one line on stderr with exit code 2 and
nothing written; a fault in one job (its spool, its files, its process) leaves every other job,
command and page readable.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import run_cli, spool_job, train_events

from largestep import jobs, store


def runs_listed(capsys) -> dict[str, dict]:
    """`largestep runs --json`, which must work whatever one job did: {run id: run}."""
    code, out, err = run_cli(capsys, "runs", "--json")
    assert code == 0, err
    return {r["id"]: r for r in json.loads(out)}


def job_row(home, job_id: str) -> dict:
    with store.connect(home) as con:
        return store.get_job(con, job_id) or {}


# -- bad spools ------------------------------------------------------------------------------------
# One job's spool that cannot become rows is set aside (FAILED, "spool unreadable: line N ...");
# every other job, and every later command, carries on.

BAD_SPOOL_EVENTS = {  # (events after the start line, the line that cannot be ingested)
    "seed beyond INT32": (train_events(seed=3_000_000_000), 2),
    "batch size beyond INT32": ([("run_start", {"config": {"batch_size": 2**40, "lr": 1e-3, "seed": 0}})], 2),
    "a string where a number goes": ([("run_start", {"config": {"batch_size": "big", "lr": 1e-3, "seed": 0}})], 2),
    "a device that is not an object": ([("run_start", {"config": {"batch_size": 32}, "device": [1, 2]})], 2),
    "an evaluation without numbers": ([("eval", {"step": "ten", "val_loss": "low"})], 2),
}


@pytest.mark.parametrize("case", BAD_SPOOL_EVENTS, ids=list(BAD_SPOOL_EVENTS))
def test_an_unreadable_spool_sets_its_job_aside_and_every_other_job_carries_on(capsys, home, case):
    events, bad_line = BAD_SPOOL_EVENTS[case]
    spool_job(home, "train-good0001", "train", train_events(seed=1))
    spool_job(home, "train-bad00001", "train", events)
    spool_job(home, "train-good0002", "train", train_events(seed=2))

    for _ in range(2):  # and again: a set-aside job stays aside, never fails a later command
        listed = runs_listed(capsys)
        assert listed["train-good0001"]["state"] == listed["train-good0002"]["state"] == jobs.FINISHED
        assert listed["train-good0002"]["final_val_loss"] == pytest.approx(0.5)
        assert listed["train-bad00001"]["state"] == jobs.FAILED
    error = job_row(home, "train-bad00001")["error"]
    assert error.startswith(f"spool unreadable: line {bad_line} "), error
    code, out, _ = run_cli(capsys, "runs", "show", "train-bad00001")
    assert code == 0 and "spool unreadable" in out


def test_the_dashboard_shows_a_set_aside_job_as_failed_and_every_other_run(monkeypatch, home):
    from helpers import open_page

    spool_job(home, "train-good0001", "train", train_events())
    spool_job(home, "train-bad00001", "train", train_events(seed=3_000_000_000))
    at = open_page(monkeypatch, home, "runs")  # it ingests as the CLI does; no exception on the page
    table = at.dataframe[0].value
    assert dict(zip(table["id"], table["state"])) == {"train-good0001": jobs.FINISHED, "train-bad00001": jobs.FAILED}


BAD_REQUESTS = {  # a run's request (spec.json) with a number its columns cannot hold, as track() once wrote
    "seed beyond INT32": {"batch_size": 64, "seed": 3_000_000_000},
    "batch size beyond INT32": {"batch_size": 2**40, "seed": 0},
    "a string where a number goes": {"batch_size": "big", "lr": "fast", "accumulate": [1]},
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_run_whose_request_the_store_cannot_hold_is_listed_as_such_beside_every_other(
    capsys, monkeypatch, home, case
):
    from helpers import open_page

    config = BAD_REQUESTS[case]
    spec = {
        "id": "train-bad00001",
        "kind": "train",
        "device": "cpu",
        "workload": "x",
        "created_at": 1.7e9,
        "params": {"config": config, "role": "external"},
    }
    spool_job(home, "train-good0001", "train", train_events(seed=1))
    run_start = ("run_start", {"config": config, "workload": "x", "device": {"id": "cpu", "kind": "cpu"}})
    spool_job(home, "train-bad00001", "train", [run_start], spec=spec)

    listed = runs_listed(capsys)
    assert listed["train-good0001"]["state"] == jobs.FINISHED and listed["train-bad00001"]["state"] == jobs.FAILED
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and "train-good0001" in out and "train-bad00001" in out, err
    assert "1 run could not be read" in out and "largestep doctor" in out
    code, out, err = run_cli(capsys, "runs", "show", "train-bad00001")
    assert code == 0 and "spool unreadable" in out, err
    at = open_page(monkeypatch, home, "runs")
    table = at.dataframe[0].value
    assert dict(zip(table["id"], table["state"])) == {"train-good0001": jobs.FINISHED, "train-bad00001": jobs.FAILED}
    assert any("1 run could not be read" in w.value for w in at.warning)


BAD_LINES = {
    "valid JSON but not an object": b"[1, 2, 3]\n",
    "an event missing a field": b'{"type": "eval", "t": 1.0}\n',
    "an unknown event type": b'{"type": "surprise", "t": 1.0}\n',
    "garbage": b"\x00\xff not json at all\n",
    "a line cut off by a crash": b'{"type": "eval", "t": 1.0, "step": 3, "val_lo\n',
}


@pytest.mark.parametrize("case", BAD_LINES, ids=list(BAD_LINES))
def test_a_bad_line_is_skipped_and_the_rest_of_its_spool_is_kept(capsys, home, case):
    job_dir = spool_job(home, "train-bad00001", "train", train_events()[:1], state=None)
    with open(job_dir / "events.jsonl", "ab") as fh:
        fh.write(BAD_LINES[case])
    with open(job_dir / "events.jsonl", "a") as fh:
        for type_, fields in train_events()[1:] + [("exit", {"state": "FINISHED"})]:
            fh.write(json.dumps({"type": type_, "t": 2.0, **fields}) + "\n")
    spool_job(home, "train-good0001", "train", train_events())

    listed = runs_listed(capsys)
    assert listed["train-bad00001"]["state"] == listed["train-good0001"]["state"] == jobs.FINISHED
    assert listed["train-bad00001"]["final_val_loss"] == pytest.approx(0.5)
    assert store.ingest(home).set_aside == []


def test_a_job_folder_copied_beside_the_original_poisons_nothing(capsys, home):
    original = spool_job(home, "train-orig0001", "train", train_events())
    runs_listed(capsys)  # the original is ingested first, then copied (cp -r jobs/X jobs/X.bak)
    shutil.copytree(original, home.jobs / "train-orig0001.bak")

    listed = runs_listed(capsys)
    assert listed["train-orig0001"]["state"] == jobs.FINISHED
    assert listed["train-orig0001"]["final_val_loss"] == pytest.approx(0.5)
    copy = job_row(home, "train-orig0001.bak")
    assert copy["state"] == jobs.FAILED and "not its folder" in copy["error"], copy
    with store.connect(home) as con:
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id = 'train-orig0001'").fetchone()[0] == 2


def test_a_spec_that_is_not_an_object_sets_its_job_aside(capsys, home):
    spool_job(home, "train-good0001", "train", train_events())
    bad = spool_job(home, "train-bad00001", "train", train_events())
    (bad / "spec.json").write_text("[1, 2, 3]")

    assert runs_listed(capsys)["train-good0001"]["state"] == jobs.FINISHED
    assert job_row(home, "train-bad00001")["state"] == jobs.FAILED


# -- numbers out of range or non-finite ------------------------------------------------------------
# Each is refused where it enters, against the column it would land in, before any job is written.

TINY_TRAIN = ["train", "-w", "{tiny}", "-b", "32", "--lr", "1e-3", "--max-steps", "5"]
TINY_PROFILE = ["profile", "-w", "{tiny}"]
BAD_NUMBERS = [
    (TINY_TRAIN + ["--seed", "3000000000"], "--seed must be between 0 and 2,147,483,647"),
    (TINY_TRAIN + ["--seed", "2147483647", "--repeats", "2"], "seeds beyond 2,147,483,647"),
    (TINY_TRAIN + ["--repeats", "100000"], "--repeats must be between 1 and 1,000"),
    (TINY_TRAIN + ["--epochs", "inf"], "--epochs must be a finite number"),
    (TINY_TRAIN + ["--epochs", "nan"], "--epochs must be a finite number"),
    (TINY_TRAIN + ["--epochs", "1e300"], "--epochs must be at most"),
    (TINY_TRAIN + ["--eval-every", "nan"], "--eval-every must be a finite number"),
    (TINY_TRAIN + ["--eval-every", "-inf"], "--eval-every must be a finite number"),
    (TINY_TRAIN + ["--eval-every", "0"], "--eval-every must be a positive number"),
    (TINY_TRAIN + ["--lr", "inf"], "--lr must be a finite number"),
    (TINY_TRAIN + ["--lr", "nan"], "--lr must be a finite number"),
    (TINY_TRAIN + ["--target-val-loss", "nan"], "--target-val-loss must be a finite number"),
    (["train", "-w", "{tiny}", "-b", "3000000000", "--lr", "1e-3"], "--batch-size must be between 1 and"),
    (TINY_TRAIN + ["--warmup-samples", "99999999999999999999"], "--warmup-samples must be between 0 and"),
    (TINY_TRAIN + ["--accumulate", "3000000000"], "--accumulate must be between 1 and"),
    (TINY_TRAIN + ["--nproc", "100000"], "--nproc must be between 1 and"),
    (TINY_PROFILE + ["--batch-sizes", "99999999"], "larger than the 2048 training samples"),
    (TINY_PROFILE + ["--batch-sizes", "3000000000"], "batch size must be between 1 and"),
    (TINY_PROFILE + ["--min-seconds", "nan"], "min seconds must be a finite number"),
    (TINY_PROFILE + ["--min-seconds", "inf"], "min seconds must be a finite number"),
    (TINY_PROFILE + ["--seed", "3000000000"], "--seed must be between 0 and"),
    (TINY_PROFILE + ["--min-steps", "0"], "min steps must be a positive integer"),
    (["noise", "-w", "{tiny}", "--seed", "3000000000"], "--seed must be between 0 and"),
    (["autopilot", "-w", "{tiny}", "--epochs", "inf"], "--epochs must be a finite number"),
    (["autopilot", "-w", "{tiny}", "--epochs", "nan"], "--epochs must be a finite number"),
    (["autopilot", "-w", "{tiny}", "--until-decisive", "--max-repeats", "0"], "--max-repeats must be a positive"),
    (
        ["autopilot", "-w", "{tiny}", "--until-decisive", "--max-repeats", "1000000000"],
        "--max-repeats must be between 1 and 1,000",
    ),
    (
        ["autopilot", "-w", "{tiny}", "--until-decisive", "--repeats", "3", "--max-repeats", "2"],
        "--max-repeats 2 is below --repeats 3",
    ),
    (["compare", "train-good0001", "train-good0001", "--tolerance", "nan"], "--tolerance must be a finite number"),
    (["compare", "train-good0001", "train-good0001", "--tolerance", "inf"], "--tolerance must be a finite number"),
    (["compare", "train-good0001", "train-good0001", "--tolerance", "-0.1"], "--tolerance must be at least 0"),
    (["recommend", "--baseline-lr", "nan"], "--baseline-lr must be a positive number"),
    (["recommend", "--memory-headroom", "nan"], "--memory-headroom"),
    (["recommend", "--warmup-samples", "1e30"], "--warmup-samples must be a whole number"),
    (["recommend", "--baseline-batch", "3000000000"], "--baseline-batch must be between 1 and"),
]


API_CONFIGS = {
    "seed beyond INT32": dict(seed=3_000_000_000),
    "infinite epochs": dict(epochs=float("inf")),
    "NaN evaluation interval": dict(eval_every_epochs=float("nan")),
    "a float batch size": dict(batch_size=32.5),
}


@pytest.mark.parametrize(
    "fields",
    [dict(max_repeats=0), dict(max_repeats=10**9), dict(repeats=3, max_repeats=2)],
    ids=["none", "a billion", "below the repeats"],
)
def test_the_python_api_refuses_an_until_decisive_autopilot_without_sound_max_repeats(home, tiny_spec, fields):
    from largestep.errors import UsageError
    from largestep.jobs.autopilot import AutopilotConfig
    from largestep.jobs.start import start_autopilot

    with pytest.raises(UsageError, match="--max-repeats"):
        start_autopilot(home, tiny_spec, {}, "cpu", AutopilotConfig(until_decisive=True, **fields))
    assert not home.root.exists()


@pytest.mark.parametrize("case", API_CONFIGS, ids=list(API_CONFIGS))
def test_the_python_api_refuses_the_same_numbers_before_writing(home, tiny_spec, case):
    from largestep.errors import UsageError
    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    config = TrainConfig(**{"batch_size": 32, "lr": 1e-3, **API_CONFIGS[case]})
    with pytest.raises(UsageError):
        start_train(home, tiny_spec, {}, "cpu", config)
    assert not home.root.exists()


def job_folders(home) -> set[str]:
    return {p.name for p in home.jobs.iterdir()} if home.jobs.is_dir() else set()


@pytest.mark.parametrize("argv, says", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_a_number_out_of_range_or_not_finite_is_one_line_exit_2_and_writes_nothing(capsys, home, tiny_spec, argv, says):
    spool_job(home, "train-good0001", "train", train_events())
    runs_listed(capsys)
    database = home.database.read_bytes()

    code, out, err = run_cli(capsys, *[a.format(tiny=tiny_spec) for a in argv])
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("largestep: error: "), err
    assert says in err, err
    assert job_folders(home) == {"train-good0001"}  # no job written
    assert home.database.read_bytes() == database  # nor any row
    assert runs_listed(capsys)["train-good0001"]["state"] == jobs.FINISHED


REFUSED_AFTER_LOADING = [  # bad input only the loaded workload shows (the tiny workload has 2048 training samples)
    (TINY_PROFILE + ["--batch-sizes", "99999999"], "larger than the 2048 training samples"),
    (["train", "-w", "{tiny}", "-b", "4096", "--lr", "1e-3"], "larger than the 2048 training samples"),
    (["train", "-w", "{tiny}", "--batch-schedule", "32:0,4096:0.5", "--lr", "1e-3"], "larger than the 2048"),
    (["noise", "-w", "{tiny}", "--batch-small", "32", "--batch-big", "4096"], "larger than the 2048 training samples"),
]


@pytest.mark.parametrize("argv, says", REFUSED_AFTER_LOADING, ids=[" ".join(a) for a, _ in REFUSED_AFTER_LOADING])
def test_bad_input_found_after_the_workload_is_loaded_leaves_no_home_and_no_cache_entry(
    capsys, home, tiny_spec, argv, says
):
    from largestep.workloads.cache import cache_of

    argv = [a.format(tiny=tiny_spec) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and says in err, (out, err)
    assert not home.root.exists()  # a new home: not even its folder

    spool_job(home, "train-good0001", "train", train_events())  # a home in use: nothing added to its cache
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and says in err, (out, err)
    assert not cache_of(home).root.exists() and job_folders(home) == {"train-good0001"}


# -- missing files ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deleted_status_file_is_not_read_as_a_crash(home, tiny_spec):
    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    (run_id,) = start_train(home, tiny_spec, {}, "cpu", TrainConfig(batch_size=32, lr=1e-3, epochs=2))
    job_dir = home.job_dir(run_id)
    seen = set()
    while jobs.exit_record(job_dir) is None:  # delete it again and again while the job runs
        (job_dir / "status.json").unlink(missing_ok=True)
        seen.add(jobs.derive_state(job_dir))
    assert seen <= {jobs.PENDING, jobs.RUNNING, jobs.FINISHED}, seen
    assert jobs.wait(home, run_id, timeout_s=60) == jobs.FINISHED


def test_a_job_without_a_status_file_or_a_process_is_crashed_once_the_grace_period_has_passed(home):
    import os
    import time

    job_dir = spool_job(home, "train-gone0001", "train", train_events()[:1], state=None)  # and no status.json
    assert jobs.derive_state(job_dir) == jobs.RUNNING  # just written: it may be starting
    a_minute_ago = time.time() - 60
    for path in job_dir.iterdir():
        os.utime(path, (a_minute_ago, a_minute_ago))
    assert jobs.derive_state(job_dir) == jobs.CRASHED


# -- killed processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_module_in_the_users_folder_is_not_imported_by_a_job(home, tiny_spec, tmp_path, monkeypatch):
    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    folder = tmp_path / "project"
    folder.mkdir()
    marker = folder / "imported"
    (folder / "filelock.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('hijacked')\n")
    monkeypatch.chdir(folder)
    (run_id,) = start_train(home, tiny_spec, {}, "cpu", TrainConfig(batch_size=32, lr=1e-3, max_steps=5))
    assert jobs.wait(home, run_id, timeout_s=60) == jobs.FINISHED
    assert not marker.exists()


@pytest.mark.slow
def test_a_job_that_dies_before_its_first_event_says_why(capsys, home, tiny_spec, tmp_path, monkeypatch):
    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    shadow = tmp_path / "shadow"  # a user's PYTHONPATH holding a module that shadows a library the job needs
    shadow.mkdir()
    (shadow / "psutil.py").write_text("raise ImportError('a broken psutil on PYTHONPATH')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    (run_id,) = start_train(home, tiny_spec, {}, "cpu", TrainConfig(batch_size=32, lr=1e-3, max_steps=5))
    assert jobs.wait(home, run_id, timeout_s=60) == jobs.CRASHED

    code, out, err = run_cli(capsys, "runs", "show", run_id)
    assert code == 0, err
    assert "a broken psutil on PYTHONPATH" in out


# -- run ids and read-only commands ----------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["../../somewhere", "..", "train-good0001/../../x", "no-such-run"])
def test_a_run_id_is_checked_against_the_runs_that_exist(capsys, home, tmp_path, run_id):
    spool_job(home, "train-good0001", "train", train_events())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    code, out, err = run_cli(capsys, "runs", "cancel", run_id)
    assert code == 2 and err.count("\n") == 1 and "no run" in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


READ_ONLY = [
    (["recommend"], 2, "no profile"),
    (["export", "--format", "yaml"], 2, "no recommendation"),
    (["compare", "train-a", "train-b"], 2, "no run or group"),
    (["runs", "show", "train-nope"], 2, "no run"),
    (["runs"], 0, ""),
    (["profiles"], 0, ""),
    (["recommendations"], 0, ""),
]


@pytest.mark.parametrize("argv, code, says", READ_ONLY, ids=[" ".join(a) for a, _, _ in READ_ONLY])
def test_a_read_only_command_creates_no_home(capsys, home, argv, code, says):
    got, out, err = run_cli(capsys, *argv)
    assert got == code, (out, err)
    if code == 2:
        assert err.count("\n") == 1 and says in err.lower(), err
    assert not home.root.exists()


# -- a lost database -------------------------------------------------------------------------------


def test_a_deleted_database_is_rebuilt_from_the_homes_files_recommendations_included(capsys, home):
    from helpers import profile_events

    spool_job(home, "prof-test0001", "profile", profile_events("prof-test0001"))
    spool_job(home, "train-good0001", "train", train_events())
    code, out, err = run_cli(capsys, "recommend", "--profile", "prof-test0001", "--noise-scale", "200", "--json")
    assert code == 0, err
    rec = json.loads(out)
    before = {
        name: run_cli(capsys, *argv, "--json")[1]
        for name, argv in (("runs", ["runs"]), ("profiles", ["profiles"]), ("recommendations", ["recommendations"]))
    }

    home.database.unlink()  # under this long-lived process, as under a running dashboard
    after = {
        name: run_cli(capsys, *argv, "--json")[1]
        for name, argv in (("recommendations", ["recommendations"]), ("runs", ["runs"]), ("profiles", ["profiles"]))
    }
    assert json.loads(after["recommendations"])[0]["id"] == rec["recommendation_id"]
    assert [r["id"] for r in json.loads(after["runs"])] == [r["id"] for r in json.loads(before["runs"])]
    assert [p["id"] for p in json.loads(after["profiles"])] == ["prof-test0001"]
    code, out, err = run_cli(capsys, "export", "--format", "json")
    assert code == 0 and f'"batch_size": {rec["batch_size"]}' in out, err


DAMAGED_DB_COMMANDS = [
    ["runs"],
    ["runs", "show", "train-good0001"],
    ["profiles"],
    ["recommend", "--profile", "prof-test0001", "--noise-scale", "200"],
    ["compare", "train-good0001", "train-good0002"],
    ["export", "--format", "json"],
]


@pytest.mark.parametrize("cut", [4096, 0.25, 0.5], ids=["at its first blocks", "at a quarter", "at half"])
def test_a_truncated_database_is_one_line_exit_2_pointing_at_doctor_which_rebuilds_it(capsys, home, cut):
    from helpers import profile_events

    spool_job(home, "prof-test0001", "profile", profile_events("prof-test0001"))
    for seed in (1, 2):
        spool_job(home, f"train-good000{seed}", "train", train_events(seed=seed))
    before = sorted(runs_listed(capsys))
    size = home.database.stat().st_size
    with open(home.database, "r+b") as fh:
        fh.truncate(cut if isinstance(cut, int) else int(size * cut))

    for argv in DAMAGED_DB_COMMANDS:  # a command that reads no damaged block answers; any other, one line
        code, out, err = run_cli(capsys, *argv)
        assert code in (0, 2) and err.count("\n") <= 1 and "Traceback" not in err, (argv, out, err)
        if argv == ["runs"] or "cannot be used" in err:  # `runs` reads every job's rows: it meets the damage
            assert code == 2 and "cannot be used" in err and "run `largestep doctor`" in err, (argv, err)
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1 and "problem  database: cannot read" in out and "largestep doctor --repair" in out, out

    code, out, err = run_cli(capsys, "doctor", "--repair")
    assert code == 0 and "warn  database: was damaged" in out and "rebuilt from the home's files" in out, (out, err)
    [kept] = home.root.glob("largestep.duckdb.damaged-*")
    assert kept.stat().st_size == (cut if isinstance(cut, int) else int(size * cut))  # moved aside, not deleted
    assert sorted(runs_listed(capsys)) == before
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and "ok  database: readable and migrated" in out and f"{kept} was moved aside" in out


def test_a_zero_byte_database_is_rebuilt_from_the_spools_by_any_command(capsys, home):
    spool_job(home, "train-good0001", "train", train_events())
    before = runs_listed(capsys)
    home.database.write_bytes(b"")  # a crash while it was first created, a `touch`
    assert runs_listed(capsys) == before
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and "ok  database: readable and migrated" in out, out


def test_doctor_repair_reads_a_fixed_set_aside_job_again(capsys, home):
    spool_job(home, "train-good0001", "train", train_events())
    spool_job(home, "train-bad00001", "train", train_events(seed=3_000_000_000))
    assert runs_listed(capsys)["train-bad00001"]["state"] == jobs.FAILED
    shutil.rmtree(home.job_dir("train-bad00001"))  # the user fixes the folder ...
    spool_job(home, "train-bad00001", "train", train_events(seed=3))

    assert runs_listed(capsys)["train-bad00001"]["state"] == jobs.FAILED  # ... a set-aside job is never read again
    code, out, err = run_cli(capsys, "doctor", "--repair")
    assert code == 0 and "1 job read again, 1 now ingested" in out, (out, err)
    listed = runs_listed(capsys)
    assert listed["train-bad00001"]["state"] == jobs.FINISHED and listed["train-bad00001"]["seed"] == 3


# -- largestep doctor ------------------------------------------------------------------------------


def test_doctor_lists_set_aside_jobs_and_spool_findings_and_exits_1(capsys, home):
    spool_job(home, "train-good0001", "train", train_events())
    spool_job(home, "train-bad00001", "train", train_events(seed=3_000_000_000))
    with open(home.job_dir("train-good0001") / "events.jsonl", "ab") as fh:
        fh.write(b"[1, 2, 3]\n")

    code, out, err = run_cli(capsys, "doctor")
    assert code == 1, (out, err)
    assert "problem  set-aside jobs: 1 job(s)" in out
    assert "train-bad00001: spool unreadable: line 2 (run_start event)" in out
    assert "train-good0001: 1 unreadable line(s) skipped: line 6 (not a JSON object but list)" in out
    assert "ok  database: readable and migrated" in out
    code, out, _ = run_cli(capsys, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["processes"]["verdict"] == "ok" and checks["size"]["verdict"] == "ok"


def test_doctor_on_a_healthy_home_exits_0_and_on_no_home_creates_none(capsys, home, monkeypatch):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and "nothing to check" in out and not home.root.exists()
    spool_job(home, "train-good0001", "train", train_events())
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and "problem" not in out and "warn" not in out, out
    assert "warm launcher: turned off (LARGESTEP_WARM_LAUNCHER=0)" in out  # as in every test but its own
    monkeypatch.setenv("LARGESTEP_WARM_LAUNCHER", "1")
    code, out, _ = run_cli(capsys, "doctor")
    assert "warm launcher: none running: the next job starts as a fresh process" in out


# -- bad workload files ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "amount,label\n"], ids=["an empty file", "a header and no rows"])
def test_an_empty_csv_is_one_line_exit_2_and_writes_nothing(capsys, home, tmp_path, content):
    data = tmp_path / "empty.csv"
    data.write_text(content)
    code, out, err = run_cli(capsys, "profile", "-w", "table", "--data", str(data), "--label", "label")
    assert code == 2 and err.count("\n") == 1 and "has no rows" in err and "column0" not in err, err
    assert not home.root.exists()


# -- killed processes (continued) ------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_job_is_not_left_a_zombie_of_the_process_that_started_it(home, tiny_spec):
    import psutil
    from helpers import wait_for

    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    (run_id,) = start_train(home, tiny_spec, {}, "cpu", TrainConfig(batch_size=32, lr=1e-3, max_steps=5))
    pid = jobs.read_status(home.job_dir(run_id))["pid"]
    assert jobs.wait(home, run_id, timeout_s=60) == jobs.FINISHED

    assert wait_for(lambda: not psutil.pid_exists(pid), timeout=5), "the finished job lingers as a zombie process"


WORKLOAD_FILE = """
import torch
from largestep import Workload

def make():
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    return Workload(name="odd", model=lambda: torch.nn.Linear(4, 2), train=(x[:48], y[:48]), val=(x[48:], y[48:]),
                    loss=torch.nn.functional.cross_entropy, {fields})
"""
BAD_WORKLOAD_FIELDS = {
    "baseline batch beyond INT32": (
        "baseline_batch_size=3_000_000_000, baseline_lr=1e-3",
        "baseline_batch_size must be between 1 and 2,147,483,647",
    ),
    "baseline lr NaN": ("baseline_batch_size=8, baseline_lr=float('nan')", "baseline_lr must be a finite number"),
    "baseline lr infinite": ("baseline_batch_size=8, baseline_lr=float('inf')", "baseline_lr must be a finite number"),
    "epochs of a billion": ("baseline_batch_size=8, baseline_lr=1e-3, epochs=10**9", "epochs must be between 1 and"),
    "warm-up beyond BIGINT": (
        "baseline_batch_size=8, baseline_lr=1e-3, warmup_samples=2**70",
        "warmup_samples must be between 0 and",
    ),
    "weight decay NaN": (
        "baseline_batch_size=8, baseline_lr=1e-3, weight_decay=float('nan')",
        "weight_decay must be a finite number",
    ),
}


@pytest.mark.parametrize("case", BAD_WORKLOAD_FIELDS, ids=list(BAD_WORKLOAD_FIELDS))
def test_a_workload_field_out_of_range_is_one_line_exit_2_and_writes_nothing(capsys, home, tmp_path, case):
    fields, says = BAD_WORKLOAD_FIELDS[case]
    module = tmp_path / "odd.py"
    module.write_text(WORKLOAD_FILE.replace("{fields}", fields))
    code, out, err = run_cli(capsys, "profile", "-w", f"{module}:make")
    assert code == 2 and err.count("\n") == 1 and says in err, (code, err)
    assert not home.root.exists()


NAN_WORKLOADS = {
    "NaN in the first training samples": ("baseline_batch_size=8, baseline_lr=1e-3", "x[0, 1] = float('nan')"),
    "a loss that is NaN": ("baseline_batch_size=8, baseline_lr=1e-3", "Workload.loss = None"),
}


@pytest.mark.parametrize("case", NAN_WORKLOADS, ids=list(NAN_WORKLOADS))
def test_the_trial_step_refuses_a_nan_loss_in_one_line_before_anything_is_written(capsys, home, tmp_path, case):
    fields, poison = NAN_WORKLOADS[case]
    source = WORKLOAD_FILE.replace("{fields}", fields)
    if poison.startswith("x["):
        source = source.replace("torch.randint(0, 2, (64,))\n", f"torch.randint(0, 2, (64,))\n    {poison}\n")
    else:
        source = source.replace(
            "loss=torch.nn.functional.cross_entropy",
            "loss=lambda out, y: torch.nn.functional.cross_entropy(out, y) * float('nan')",
        )
    module = tmp_path / "nan.py"
    module.write_text(source)
    code, out, err = run_cli(capsys, "train", "-w", f"{module}:make", "-b", "8", "--lr", "1e-3")
    assert code == 2 and err.count("\n") == 1, (code, err)
    assert "a trial step on its first 2 training samples gives the loss nan" in err, err
    assert not home.root.exists()


def test_a_workload_that_raises_keyboard_interrupt_is_one_line_exit_2(capsys, home, tmp_path):
    module = tmp_path / "interrupting.py"
    module.write_text("def make():\n    raise KeyboardInterrupt\n")
    code, out, err = run_cli(capsys, "profile", "-w", f"{module}:make")
    assert code == 2 and err.count("\n") == 1 and "raised KeyboardInterrupt" in err, (code, err)
    assert not home.root.exists()


# -- concurrent commands ---------------------------------------------------------------------------


@pytest.mark.slow
def test_commands_run_at_once_beside_a_bad_job_ingest_every_row_once(home):
    import subprocess
    import sys

    for k in range(6):
        spool_job(home, f"train-good000{k}", "train", train_events(seed=k))
    spool_job(home, "train-bad00001", "train", train_events(seed=3_000_000_000))
    commands = [["runs", "--json"], ["profiles", "--json"], ["doctor", "--json"], ["runs", "--json"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "largestep.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in commands
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]

    for (code, out, err), argv in zip(results, commands):
        assert code == (1 if argv[0] == "doctor" else 0), (argv, err)  # doctor: the set-aside job
        assert "Traceback" not in err, err
    with store.connect(home) as con:
        per_run = dict(con.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
        states = dict(con.execute("SELECT id, state FROM jobs").fetchall())
    assert per_run == {f"train-good000{k}": 2 for k in range(6)}  # each evaluation once, whoever ingested it
    assert states.pop("train-bad00001") == jobs.FAILED
    assert set(states.values()) == {jobs.FINISHED}


def test_doctor_finds_a_process_that_outlives_its_job(capsys, home):
    import subprocess
    import sys

    job_dir = spool_job(home, "train-done0001", "train", train_events())  # ended: its exit record is written
    # a process still running that job's folder, as `python -m largestep.jobs JOB_DIR` would be
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "largestep.jobs", str(job_dir)])
    try:
        code, out, _ = run_cli(capsys, "doctor")
        assert f"train-done0001 has ended but its process {stray.pid} still runs" in out, out
        assert code == 0  # a warning: the user decides whether to kill it
    finally:
        stray.kill()
        stray.wait()
