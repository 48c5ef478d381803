"""The benchmarks' runner (`./dev bench`, bench/suite.py): it catches a regression, and refuses what it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT

SUITE = ROOT / "bench" / "suite.py"


@pytest.mark.slow
def test_the_quick_bench_fails_when_ingest_is_three_times_as_slow():
    """The regression of 3b8e78b (ingest 3x slower, which nothing noticed) makes `./dev bench --quick` fail, and
    says which figure missed."""
    env = {**os.environ, "LARGESTEP_BENCH_SLOW_INGEST": "3"}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "ingest"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ingest slowed 3x" in proc.stdout
    assert "MISSED ingest: ingest / DuckDB's insert from Arrow" in proc.stdout


def test_the_bench_runner_refuses_a_benchmark_it_does_not_know():
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "ingset"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "no benchmark called 'ingset'; choose from profiler, train, ingest, dead_time, track, dataset"
    ]
