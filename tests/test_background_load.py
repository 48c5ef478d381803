"""The background load a real training job records: other processes' share of the machine's CPU while it
trained, stored with the run, shown by `largestep runs`, and carried into the comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from helpers import run_cli, wait_finished

from largestep import store
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig

COMPETITOR_S = 120  # the competing process ends by itself after this, should the test's kill never come


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_train_job_records_a_competing_process_as_background_load(home, tiny_spec, capsys):
    spin = [sys.executable, "-c", f"import time\nend = time.time() + {COMPETITOR_S}\nwhile time.time() < end: pass"]
    competitor = subprocess.Popen(spin)
    started = time.perf_counter()
    try:
        # long enough for several one-second samples of the background load
        [run_id] = starts.start_train(home, tiny_spec, {}, "cpu", TrainConfig(batch_size=16, lr=1e-2, epochs=3))
        wait_finished(home, run_id, timeout_s=240)
        # the competitor's share of the machine while it ran (as much of a core as the shared machine gave it)
        times = psutil.Process(competitor.pid).cpu_times()
        competitor_share = 100.0 * (times.user + times.system) / ((time.perf_counter() - started) * psutil.cpu_count())
    finally:
        competitor.kill()
        competitor.wait()
    store.ingest(home)
    with store.connect(home) as con:
        [run] = store.runs_by_id(con, [run_id])
    # the competitor's load shows (the run's window is most of the competitor's life)
    assert competitor_share > 3.0 and run["background_cpu_pct"] > 0.5 * competitor_share, (run, competitor_share)
    assert run["background_cpu_pct"] <= run["background_cpu_p90_pct"] <= 100.0
    assert run["background_gpu_processes"] is None  # a CPU run: no GPU to share

    code, out, _err = run_cli(capsys, "runs")
    assert code == 0 and "background load" in out and f"{run['background_cpu_pct']:.0f}% CPU" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_profile_sets_aside_visits_a_competing_process_contends_and_flags_what_it_could_not_avoid(
    home, tiny_spec, capsys, monkeypatch
):
    from largestep.measure.profiler import QUIET_PATIENCE

    monkeypatch.setenv("OMP_NUM_THREADS", str(os.cpu_count()))  # the job's steps take every core: none is spare
    spin = [sys.executable, "-c", f"import time\nend = time.time() + {COMPETITOR_S}\nwhile time.time() < end: pass"]
    competitor = subprocess.Popen(spin)  # busy throughout: no visit finds the machine to itself
    try:
        code, out, err = run_cli(
            capsys,
            "profile",
            "--workload",
            tiny_spec,
            "--batch-sizes",
            "8,32",
            "--rounds",
            "2",
            "--min-steps",
            "4",
            "--min-seconds",
            "0.6",
            "--warmup-steps",
            "1",
        )
    finally:
        competitor.kill()
        competitor.wait()
    assert code == 0, err
    said = " ".join(out.split())  # as printed, wrapped to the terminal
    assert "under-load" in said and "profile again on a quieter machine" in said
    with store.connect(home) as con:
        points = store.load_profile(con, "latest")["points"]
    assert [p["status"] for p in points] == ["ok", "ok"]
    for point in points:  # visited as long as patience allows, then measured from every visit, and flagged
        assert point["under_load"] and point["visits"] == QUIET_PATIENCE * 2, point
        assert point["others_busy_cores"] > 0.25, point
