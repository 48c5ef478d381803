"""Bad inputs and faults, organised by kind, as a careless user or a bad day produces them.

Each case shows what a user would notice: a bad input is one line on stderr with exit code 2 and
nothing written; a fault in one job (its spool, its files, its process) leaves every other job,
command and page readable.
"""

from __future__ import annotations

import json
import shutil

import pytest

from engine import jobs, store
from engine.cli import main
from helpers import spool_job, train_events


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def runs_listed(capsys) -> dict[str, dict]:
    """`largestep runs --json`, which must work whatever one job did: {run id: run}."""
    code, out, err = run(capsys, "runs", "--json")
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
    code, out, _ = run(capsys, "runs", "show", "train-bad00001")
    assert code == 0 and "spool unreadable" in out


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
