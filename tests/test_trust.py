"""A profile that cannot be trusted never reaches a user as if it could (issue 23).

The profile the issue reports, replayed: fraud-mlp measured while another process kept about one of the
machine's two cores busy, so that a step took about 1 ms, or a whole scheduler slice (100 to 180 ms) when
one of torch's threads lost its core. Its medians land on either mode; its fastest steps are the hardware.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import tiny_workload
import torch
from helpers import open_page, run_cli, spool_job

from largestep import curve, store
from largestep.errors import UnusableProfile
from largestep.measure import profiler
from largestep.measure.profiler import ProfileConfig, ProfilePoint, run_profile

CPU = torch.device("cpu")

# issue 23's table: batch -> (median, fastest step, slowest step), in ms; every point stored under load
ISSUE_TABLE = {
    32: (0.93, 0.87, 125),
    64: (2.07, 0.96, 129),
    128: (9.46, 1.05, 124),
    256: (2.07, 1.21, 183),
    512: (9.75, 1.41, 160),
    1024: (2.52, 1.98, 164),
    2048: (8.06, 3.23, 163),
    4096: (14.9, 6.34, 167),
}
OTHERS_BUSY = (0.93, 1.18)  # cores other processes kept busy, as the issue's profile stored
CYCLE = 20  # steps in one pass of a size's script


def bimodal_steps(median_ms: float, fastest_ms: float, slowest_ms: float) -> list[float]:
    """Twenty step times (seconds) in timed order whose median, minimum and maximum are the table's: nine in
    the fast mode, nine a scheduler slice long, two at the median between them, the modes interleaved."""
    fast = [fastest_ms + (min(median_ms, fastest_ms * 1.05) - fastest_ms) * k / 9 for k in range(9)]
    slow = [100 + (slowest_ms - 100) * k / 8 for k in range(9)]
    steps = [t for pair in zip(fast, slow) for t in pair] + [median_ms, median_ms]
    return [t / 1e3 for t in steps]


def replay_issue_profile(monkeypatch) -> profiler.ProfileResult:
    """The sweep, its rounds and its physics check as the profiler runs them, each visit's steps taken in turn
    from its size's script and every visit contended (other processes kept about a core busy)."""
    taken: dict[int, int] = {}
    load = iter(x for _ in range(10_000) for x in OTHERS_BUSY)

    def visit(workload, device, batch_size, config, *args, **kwargs):
        script = bimodal_steps(*ISSUE_TABLE[batch_size])
        start = taken.get(batch_size, 0)
        taken[batch_size] = start + config.min_steps
        times = [script[(start + k) % CYCLE] for k in range(config.min_steps)]
        point = ProfilePoint(
            batch_size=batch_size,
            status="ok",
            peak_memory_bytes=2**20 + batch_size,
            started_at=time.time(),
            ended_at=time.time(),
            others_busy_cores=next(load),
        )
        return profiler._with_statistics(point, times, config)

    monkeypatch.setattr(profiler, "measure_point", visit)
    # torch's threads fill the machine's cores (the issue's two on two): no spare core for the others' load
    config = ProfileConfig(
        batch_sizes=tuple(ISSUE_TABLE), min_steps=CYCLE, min_seconds=0.0, rounds=2, threads=torch.get_num_threads()
    )
    monkeypatch.setattr(profiler.os, "cpu_count", lambda: torch.get_num_threads())
    return run_profile(tiny_workload.make(samples=8192), CPU, config)


def test_the_issue_profile_is_replayed_as_stored(monkeypatch):
    result = replay_issue_profile(monkeypatch)
    points = {p.batch_size: p for p in result.points}
    assert list(points) == list(ISSUE_TABLE)
    for b, (median, fastest, slowest) in ISSUE_TABLE.items():
        p = points[b]
        assert p.under_load and p.noisy
        assert p.median_s * 1e3 == pytest.approx(median) and min(p.step_times_s) * 1e3 == pytest.approx(fastest)
        assert max(p.step_times_s) * 1e3 == pytest.approx(slowest)


def test_the_physics_check_flags_the_issue_profile_where_quartiles_could_not(monkeypatch):
    result = replay_issue_profile(monkeypatch)
    points = {p.batch_size: p for p in result.points}
    # the old check, quartiles wholly below another's, could never fire on quartiles this wide
    assert not any(
        large.p75_s < small.p25_s
        for small in result.points
        for large in result.points
        if large.batch_size > small.batch_size
    )
    problems = dict(curve.physics_problems(result.points))
    # the median at 256 is a fifth of that at 128: throughput 9.1x for twice the batch
    assert 128 in problems and 256 in problems
    assert problems[128].startswith("median throughput rises 9.14x from batch 128 to 256, more than the batch (2x)")
    assert result.inconsistency is not None and points[128].inconsistent and points[256].inconsistent
    # the quiet spread is the check's tolerance: no point was quiet, so it stays at its floor, never the loaded
    # points' spread (which would let anything pass)
    assert curve.quiet_spread(result.points) == curve.FALL_SLACK
    # no point is steady enough to be the saturation batch
    assert all(p.noisy for p in result.points) and result.saturation_batch is None


def test_a_noisy_point_is_never_the_saturation_batch():
    def point(b, ms, spread=0.05):
        t = ms / 1e3
        return ProfilePoint(b, "ok", median_s=t, estimate_s=t, p25_s=t * (1 - spread / 2), p75_s=t * (1 + spread / 2))

    # 256 looks fastest per sample, but its steps spread 80% of their median: of the others, 128 reaches 90%
    points = [point(64, 1.0), point(128, 1.5), point(256, 1.0, spread=0.8), point(512, 6.0)]
    assert curve.saturation_batch(points) == 128
    assert profiler.saturation_batch(points) == 128
    steady = [point(64, 1.0), point(128, 1.5), point(256, 1.0), point(512, 6.0)]
    assert curve.saturation_batch(steady) == 256


# -- refuse, don't guess ----------------------------------------------------------------------------------------

PROFILE_ID = "prof-issue23"
ISSUE_CORES = 2  # the issue's machine: torch's two threads on two cores


def spool_profile(home, result: profiler.ProfileResult, profile_id: str = PROFILE_ID) -> None:
    """``result`` as a finished profile job leaves it in the home's spool, ingested."""
    from dataclasses import asdict

    device = {"id": "cpu", "kind": "cpu", "name": "test cpu", "total_memory_bytes": 8 * 2**30}
    start = (
        "profile_start",
        {
            "profile_id": profile_id,
            "workload": "fraud-mlp",
            "workload_spec": "fraud-mlp",
            "device": device,
            "config": asdict(result.config),
            "baseline_batch_size": 128,
            "baseline_lr": 1e-3,
            "optimizer": "adam",
            "n_train": 8192,
            "epochs": 2,
            "estimator": result.config.estimator,
            "threads": ISSUE_CORES,
            "cores": ISSUE_CORES,
        },
    )
    points = [("point", {"profile_id": profile_id, **p.to_dict()}) for p in result.points]
    end = (
        "profile_end",
        {
            "profile_id": profile_id,
            "stop_reason": result.stop_reason,
            "saturation_batch": result.saturation_batch,
            "inconsistency": result.inconsistency,
        },
    )
    spool_job(home, profile_id, "profile", [start, *points, end])
    store.ingest(home)


def saved_recommendations(home) -> list[str]:
    with store.connect(home) as con:
        return list(store.list_recommendations(con)["id"])


def test_recommend_refuses_the_issue_profile_in_one_line_and_saves_nothing(monkeypatch, capsys, home):
    spool_profile(home, replay_issue_profile(monkeypatch))
    code, out, err = run_cli(capsys, "recommend", "--profile", PROFILE_ID)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert re.match(
        f"largestep: error: profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes were measured "
        r"under load \(other processes kept 0\.9\d to 1\.1\d cores busy\)",
        err,
    )
    assert "median throughput rises 9.14x from batch 128 to 256" in err
    assert err.strip().endswith("rerun on a quiet machine, or pass --accept-load")
    assert saved_recommendations(home) == [] and not home.recommendations.exists()


def test_accept_load_recommends_and_carries_the_flag_wherever_it_goes(monkeypatch, capsys, home, tmp_path):
    spool_profile(home, replay_issue_profile(monkeypatch))
    code, out, err = run_cli(capsys, "recommend", "--profile", PROFILE_ID, "--accept-load", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["accepted_load"].startswith(f"profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes")
    assert rec["reasons"][0].startswith("accepted under load (--accept-load): 8 of 8 batch sizes were measured")
    # every point is noisy: none can be recommended, and the baseline stays (no 9.93x, no 30x throughput)
    assert rec["batch_size"] == 128 and rec["predicted_speedup"]["time_to_target"] == 1.0
    assert all(c["excluded"].startswith("noisy") for c in rec["candidates"] if c["batch_size"] > 128)
    # the step times are the estimate, not the medians that land on either mode
    step = {c["batch_size"]: c["step_time_s"] for c in rec["candidates"]}
    assert step[256] > step[128] and rec["estimator"] == curve.DEFAULT_ESTIMATOR
    # shown: the human table says so first; listed: flagged; exported: the header and the document
    code, out, _ = run_cli(capsys, "recommend", "--profile", PROFILE_ID, "--accept-load")
    assert code == 0 and " ".join(out.split()).count("accepted under load (--accept-load)") == 1
    code, out, _ = run_cli(capsys, "recommendations", "--json")
    assert all(r["accepted_load"] for r in json.loads(out))
    code, out, _ = run_cli(capsys, "recommendations")
    assert "accepted under load" in out
    code, out, _ = run_cli(capsys, "export", "--recommendation", rec["recommendation_id"], "--format", "yaml")
    assert out.startswith("# ACCEPTED UNDER LOAD (--accept-load): profile prof-issue23 cannot be trusted")
    import yaml

    assert yaml.safe_load(out)["measured_on"]["accepted_load"] == rec["accepted_load"]
    code, out, _ = run_cli(capsys, "export", "--recommendation", rec["recommendation_id"], "--format", "torch")
    assert "# ACCEPTED UNDER LOAD" in out


def test_a_quiet_consistent_profile_is_trusted():
    points = [
        {
            "batch_size": b,
            "status": "ok",
            "median_s": t,
            "estimate_s": t * 0.97,
            "p25_s": t * 0.96,
            "p75_s": t * 1.04,
            "others_busy_cores": 0.1,
        }
        for b, t in ((32, 0.010), (64, 0.0102), (128, 0.0105), (256, 0.019), (512, 0.037))
    ]
    assert curve.refusal({"id": "p", "points": points}) is None and curve.untrusted_sizes({"points": points}) == []
    # a point whose step time falls by less than the quiet spread (8% here) is noise, not a violation
    wobble = [*points[:2], {**points[2], "median_s": 0.0096, "estimate_s": 0.0096 * 0.97}, *points[3:]]
    assert curve.refusal({"id": "p", "points": wobble}) is None
    loaded = [*points[:4], {**points[4], "under_load": True, "others_busy_cores": 1.1}]
    assert curve.untrusted_sizes({"points": loaded}) == [512]
    assert curve.refusal({"id": "p", "points": loaded}) == (
        "profile p cannot be trusted: 1 of 5 batch sizes were measured under load (other processes kept 1.10 to "
        "1.10 cores busy); rerun on a quiet machine, or pass --accept-load"
    )


@pytest.mark.slow
def test_the_recommend_page_warns_offers_a_reprofile_and_refuses_until_accepted(monkeypatch, home):
    from largestep.ui import recommend as recviews

    spool_profile(home, replay_issue_profile(monkeypatch))
    at = open_page(monkeypatch, home, "recommend")
    warnings = [w.value for w in at.warning]
    assert any(
        w.startswith(f"profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes")
        and w.endswith(f"rerun on a quiet machine, or tick **{recviews.ACCEPT_LOAD_LABEL}**")
        for w in warnings
    )
    assert at.button(key="recommend.reprofile").label == "Re-profile the 8 untrusted batch sizes"
    at.button(key="recommend.compute").click().run()
    assert [e.value for e in at.error][0].startswith(f"profile {PROFILE_ID} cannot be trusted")
    assert saved_recommendations(home) == []
    at.checkbox(key="recommend.accept_load").check().run()
    at.button(key="recommend.compute").click().run()
    assert not at.error and len(saved_recommendations(home)) == 1
    assert any(w.value.startswith("accepted under load (--accept-load)") for w in at.warning)


@pytest.mark.slow
def test_the_overview_shows_an_autopilot_stopped_on_an_untrusted_profile_with_a_button_to_profile_again(
    monkeypatch, home
):
    line = (
        f"the machine did not quieten within 600 s (the autopilot's --quiet-timeout): profile {PROFILE_ID} "
        f"cannot be trusted: 8 of 8 batch sizes were measured under load; rerun on a quiet machine, or pass "
        f"--accept-load"
    )
    spec = {
        "id": "auto-1",
        "kind": "autopilot",
        "device": "autopilot-cpu",
        "workload": "fraud-mlp",
        "created_at": time.time(),
        "home": str(home.root),
        "params": {"workload": "fraud-mlp", "options": {}, "device": "cpu", "autopilot": {"repeats": 2}},
    }
    job_dir = spool_job(
        home,
        "auto-1",
        "autopilot",
        [
            ("autopilot_phase", {"phase": "profile", "index": 0, "job": PROFILE_ID}),
            ("autopilot_phase", {"phase": "profile", "index": 0, "untrusted": line, "profile_id": PROFILE_ID}),
        ],
        state=None,
        spec=spec,
    )
    from largestep.jobs.spool import Spool

    spool = Spool(job_dir)
    spool.emit("exit", state="FAILED", error=line)
    spool.status(state="FAILED", pid=12345, phase="done", started_at=time.time(), ended_at=time.time(), error=line)
    spool.close()
    at = open_page(monkeypatch, home, "overview", timeout=120)
    assert line in [w.value for w in at.warning]
    assert at.button(key="overview.reprofile").label == "Profile & train again"
    assert not any(line in e.value for e in at.error)  # said once, in the warning box


# -- the autopilot never trains on it --------------------------------------------------------------------------


def test_the_autopilot_waits_for_a_quiet_window_and_stops_with_the_line_if_none_comes(monkeypatch, home):
    import largestep.jobs.start as start
    from largestep.jobs import autopilot, events
    from largestep.jobs.runner import JobContext
    from largestep.jobs.spool import Spool

    result = replay_issue_profile(monkeypatch)
    started: list[str] = []

    def profile(home_, *args, **kwargs):
        spool_profile(home_, result)
        started.append("profile")
        return PROFILE_ID

    monkeypatch.setattr(start, "start_profile", profile)
    for name in ("start_reprofile", "start_noise", "start_noise_curve", "start_train"):
        monkeypatch.setattr(start, name, lambda *a, _name=name, **k: started.append(_name) or f"job-{len(started)}")
    windows: list[float] = []
    monkeypatch.setattr(autopilot, "_others_busy_over", lambda s: windows.append(s) or 1.1)  # never quiet
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(autopilot, "_quiet_clock", lambda: float(next(clock)))
    job_dir = home.job_dir("auto-2")
    job_dir.mkdir(parents=True)
    spec = {
        "id": "auto-2",
        "kind": "autopilot",
        "params": {
            "workload": tiny_workload.__file__ + ":make",
            "options": {},
            "device": "cpu",
            "autopilot": {"repeats": 1, "quiet_timeout_s": 20.0},
        },
    }
    spool = Spool(job_dir)
    with pytest.raises(UnusableProfile) as refused:
        autopilot.autopilot_task(JobContext("auto-2", job_dir, home, spec, spool))
    spool.close()  # as the job process does, recording why it ended
    assert str(refused.value).startswith(
        "the machine did not quieten within 20 s (the autopilot's --quiet-timeout): "
        f"profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes"
    )
    assert str(refused.value).endswith("rerun on a quiet machine, or pass --accept-load")
    assert started == ["profile"]  # no re-profile without a quiet window, no noise scale, no run
    assert windows == [autopilot.QUIET_WINDOW_S] * 4  # 20 s of windows, then it gave up
    phases = [e for e in events.read_all(job_dir) if e["type"] == "autopilot_phase"]
    assert phases[-1]["untrusted"] == str(refused.value) and phases[-1]["profile_id"] == PROFILE_ID
    assert any("waiting up to 20 s for a quiet window" in (e.get("detail") or "") for e in phases)


def test_a_quiet_window_re_profiles_the_untrusted_sizes_and_a_clean_profile_is_used(monkeypatch):
    from largestep.jobs.autopilot import trusted_profile, wait_for_quiet

    issue = {"id": PROFILE_ID, "points": [p.to_dict() for p in replay_issue_profile(monkeypatch).points]}
    clean = {
        "id": "prof-again",
        "points": [
            {
                "batch_size": b,
                "status": "ok",
                "median_s": f / 1e3 * 1.05,
                "estimate_s": f / 1e3,
                "p25_s": f / 1e3,
                "p75_s": f / 1e3 * 1.1,
            }
            for b, (_m, f, _s) in ISSUE_TABLE.items()
        ],
    }
    asked: list[list[int]] = []

    def reprofile(profile, sizes):
        asked.append(sizes)
        return clean

    assert trusted_profile(issue, False, 60, lambda _t: True, reprofile) is clean
    assert asked == [list(ISSUE_TABLE)]  # every loaded size, measured again
    assert trusted_profile(issue, True, 60, lambda _t: False, reprofile) is issue  # accepted: used as it is
    with pytest.raises(UnusableProfile, match="measured again in a quiet window, still: profile prof-issue23"):
        trusted_profile(issue, False, 60, lambda _t: True, lambda p, s: {**issue})
    # the wait: window after window of other processes' load, until one leaves the spare cores free
    loads, clock = iter([1.4, 1.1, 0.2]), iter([0.0, 5.0, 10.0, 15.0])
    waits = []
    assert wait_for_quiet(
        lambda _s: next(loads), 0.0, 60, on_wait=lambda w, b: waits.append((w, b)), clock=lambda: next(clock)
    )
    assert waits == [(5.0, 1.4), (10.0, 1.1)]
    loads, clock = iter([1.4, 1.1, 1.2]), iter([0.0, 5.0, 10.0, 15.0])
    assert not wait_for_quiet(lambda _s: next(loads), 0.0, 10, clock=lambda: next(clock))


# -- threads against cores -------------------------------------------------------------------------------------


def test_threads_beyond_the_cores_others_leave_are_said_and_threads_offered(monkeypatch, capsys):
    from largestep.cli.measure import print_profile
    from largestep.store import profile_summary

    result = replay_issue_profile(monkeypatch)
    stored = {
        "id": PROFILE_ID,
        "workload": "fraud-mlp",
        "device_name": "CPU",
        "device_kind": "cpu",
        "dtype": "fp32",
        "threads": 2,
        "cores": 2,
        "estimator": "min",
        "points": [p.to_dict() for p in result.points],
    }
    note = curve.threads_note(stored)
    assert re.fullmatch(
        r"torch's 2 threads and the 1\.1\d cores other processes kept busy exceed this machine's 2 "
        r"cores: a step waits whenever one of its threads loses its core; `--threads 1` leaves 1 core "
        r"to them \(the runs trained from the profile use the same\)",
        note,
    )
    print_profile(profile_summary(stored))
    out = " ".join(capsys.readouterr().out.split())
    assert f"threads: {note}" in out and "step ms (min)" in out
    assert curve.threads_note({**stored, "threads": 1}) is None  # one thread leaves a core to them
    assert curve.threads_note({**stored, "device_kind": "cuda"}) is None


# -- re-profiling the untrusted sizes ----------------------------------------------------------------------------


def test_a_re_profile_measures_the_untrusted_sizes_and_carries_the_others_over(monkeypatch, home):
    import types

    import largestep.jobs.start as start
    from largestep.jobs.bodies import _carried_points

    result = replay_issue_profile(monkeypatch)
    # only 128 and 256 measured under load; the others quietly, the hardware's curve
    quiet = [
        ProfilePoint(
            b,
            "ok",
            step_times_s=(f / 1e3,) * 3,
            median_s=f / 1e3 * 1.05,
            estimate_s=f / 1e3,
            p25_s=f / 1e3,
            p75_s=f / 1e3 * 1.1,
            samples_per_s=b / f * 1e3,
            under_load=b in (128, 256),
            others_busy_cores=1.1 if b in (128, 256) else 0.1,
        )
        for b, (_m, f, _s) in ISSUE_TABLE.items()
    ]
    spool_profile(home, profiler.replace(result, points=tuple(quiet)))
    with store.connect(home) as con:
        stored = store.load_profile(con, PROFILE_ID)
    assert curve.untrusted_sizes(stored) == [128, 256]
    asked = {}
    monkeypatch.setattr(
        start,
        "start_profile",
        lambda home_, spec, options, device, config, **kw: (
            asked.update(spec=spec, device=device, config=config, **kw) or "prof-again"
        ),
    )
    assert start.start_reprofile(home, stored, curve.untrusted_sizes(stored), "cpu") == "prof-again"
    assert asked["config"].batch_sizes == (128, 256) and asked["carry_from"] == PROFILE_ID
    assert asked["config"].rounds == result.config.rounds and asked["spec"] == "fraud-mlp"
    # in the job: the other profile's points at the sizes not measured again, with their background load
    carried = _carried_points(types.SimpleNamespace(home=home), PROFILE_ID, [128, 256])
    assert [p.batch_size for p, _ in carried] == [32, 64, 512, 1024, 2048, 4096]
    again = profiler.replace(
        result,
        points=tuple(
            ProfilePoint(
                b,
                "ok",
                step_times_s=(0.0012, 0.0013),
                median_s=0.00125,
                estimate_s=0.0012,
                p25_s=0.0012,
                p75_s=0.0013,
                samples_per_s=b / 0.0012,
            )
            for b in (128, 256)
        ),
    )
    whole = profiler.with_points(again, [p for p, _ in carried])
    assert [p.batch_size for p in whole.points] == list(ISSUE_TABLE)
    assert whole.points[2].median_s == 0.00125 and whole.points[0] == carried[0][0]


def test_the_threads_a_profile_ran_on_go_with_its_recommendation_to_the_runs(capsys, home):
    from helpers import profile_events

    events = profile_events("prof-threads1")
    events[0][1]["config"] = {"dtype": "fp32", "threads": 1}
    spool_job(home, "prof-threads1", "profile", events)
    code, out, err = run_cli(capsys, "recommend", "--profile", "prof-threads1", "--noise-scale", "300", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["threads"] == 1
    code, out, _ = run_cli(capsys, "export", "--recommendation", rec["recommendation_id"], "--format", "cli")
    assert "--threads 1" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "--workload", "fraud-mlp", "--threads", "0"],
        ["train", "--workload", "fraud-mlp", "--batch-size", "128", "--lr", "0.001", "--threads", "two"],
        ["autopilot", "--workload", "fraud-mlp", "--threads", "-1"],
        ["autopilot", "--workload", "fraud-mlp", "--quiet-timeout", "soon"],
    ],
)
def test_bad_threads_and_quiet_timeouts_are_one_line_and_start_nothing(capsys, home, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and ("--threads" in err or "--quiet-timeout" in err)
    assert not home.jobs.exists() or not any(home.jobs.iterdir())


def test_the_python_api_refuses_and_accepts_as_the_command_line_does(monkeypatch, home):
    import largestep

    spool_profile(home, replay_issue_profile(monkeypatch))
    with pytest.raises(UnusableProfile, match=f"^profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes"):
        largestep.recommend(PROFILE_ID, home=home.root, quiet=True)
    assert saved_recommendations(home) == []
    rec = largestep.recommend(PROFILE_ID, home=home.root, quiet=True, accept_load=True)
    assert rec.reasons[0].startswith("accepted under load (--accept-load)") and rec.document["accepted_load"]


def test_the_html_report_says_the_profile_cannot_be_trusted_and_the_recommendation_was_accepted(
    monkeypatch, capsys, home, tmp_path
):
    spool_profile(home, replay_issue_profile(monkeypatch))
    assert run_cli(capsys, "recommend", "--profile", PROFILE_ID, "--accept-load")[0] == 0
    target = tmp_path / "report.html"
    code, _, err = run_cli(capsys, "report", "-o", str(target))
    assert code == 0, err
    text = target.read_text()
    assert f"profile {PROFILE_ID} cannot be trusted: 8 of 8 batch sizes" in text
    assert "accepted under load (--accept-load)" in text.split("id='recommendation'")[1][:400]


def test_a_re_profile_job_measures_its_sizes_again_and_carries_the_others(profiled_home):
    from conftest import PROFILED_BATCHES
    from helpers import wait_finished

    from largestep.jobs.start import start_reprofile

    home, profile_id = profiled_home
    with store.connect(home) as con:
        first = store.load_profile(con, profile_id)
    again_id = start_reprofile(home, first, [32, 128], "cpu")
    wait_finished(home, again_id, timeout_s=180)
    store.ingest(home)
    with store.connect(home) as con:
        again = store.load_profile(con, again_id)
    assert again["carried_from"] == profile_id and again["config"]["batch_sizes"] == [32, 128]
    points = {p["batch_size"]: p for p in again["points"]}
    assert sorted(points) == sorted(PROFILED_BATCHES)  # whole: its own two, the other two carried over
    old = {p["batch_size"]: p for p in first["points"]}
    for b in set(PROFILED_BATCHES) - {32, 128}:
        assert points[b]["step_times_s"] == old[b]["step_times_s"]
    for b in (32, 128):
        assert points[b]["step_times_s"] != old[b]["step_times_s"]
    assert again["estimator"] == curve.DEFAULT_ESTIMATOR and again["threads"] and again["cores"]
