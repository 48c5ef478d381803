"""Benchmarks of the profiler (not tests): ratios against references measured in the same run.

(a) accuracy: the profiler's median step time against ``torch.utils.benchmark.Timer
    .blocked_autorange`` on the same step (same model, optimizer, data and batch), interleaved
    in rounds so that drift of the machine hits both alike. Target: a ratio within 0.9..1.1.
(b) overhead: the wall time of a default sweep of ``fraud-gru`` from the command line, and the
    share of it spent outside the timed steps (start-up, data generation, warm-up, FLOP
    counting, ingest).

    python bench/bench_profiler.py [--workload fraud-gru] [--batches 128,1024] [--rounds 3] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import store  # noqa: E402
from largestep.home import Home  # noqa: E402
from largestep.measure.profiler import ProfileConfig, StepRunner, measure_point  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402


def accuracy(workload_spec: str, batch_sizes: list[int], rounds: int) -> list[dict]:
    workload = load_workload(workload_spec)
    device = torch.device("cpu")
    config = ProfileConfig(min_steps=10, min_seconds=1.0, warmup_steps=3)
    rows = []
    for batch_size in batch_sizes:
        ours, reference = [], []
        for _ in range(rounds):
            ours.append(measure_point(workload, device, batch_size, config).median_s)
            runner = StepRunner(workload, device, batch_size)
            for _ in range(config.warmup_steps):
                runner.step()
            timer = benchmark.Timer(stmt="runner.step()", globals={"runner": runner},
                                    num_threads=torch.get_num_threads())
            reference.append(timer.blocked_autorange(min_run_time=1.0).median)
            runner.close()
        ratio = statistics.median(ours) / statistics.median(reference)
        rows.append({"batch_size": batch_size, "profiler_median_s": statistics.median(ours),
                     "blocked_autorange_median_s": statistics.median(reference), "ratio": ratio})
        print(f"batch {batch_size:>6}: profiler {statistics.median(ours) * 1e3:8.3f} ms   "
              f"blocked_autorange {statistics.median(reference) * 1e3:8.3f} ms   ratio {ratio:.3f}", flush=True)
    return rows


def sweep_overhead(workload_spec: str) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, LARGESTEP_HOME=home)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "largestep.cli", "profile", "--workload", workload_spec, "--json"],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
        data = json.loads(proc.stdout)
        timed = _timed_seconds(Home(Path(home)), data["profile_id"])
    result = {"wall_s": wall, "timed_s": timed, "outside_share": 1 - timed / wall,
              "batches": [p["batch_size"] for p in data["points"] if p["status"] == "ok"],
              "stop_reason": data["stop_reason"], "saturation_batch": data["saturation_batch"]}
    print(f"default sweep of {workload_spec}: {wall:.1f} s wall, {timed:.1f} s in timed steps, "
          f"{result['outside_share']:.0%} outside them; batches {result['batches']}, "
          f"stopped on {result['stop_reason']}, saturation {result['saturation_batch']}", flush=True)
    return result


def _timed_seconds(home: Home, profile_id: str) -> float:
    """The sum of every raw timed step of the profile, read back from its database."""
    with store.connect(home) as con:
        points = store.profile_points(con, profile_id)
    return float(sum(sum(times) for times in points.step_times_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    accuracy(args.workload, [int(b) for b in args.batches.split(",")], args.rounds)
    if not args.skip_sweep:
        sweep_overhead(args.workload)


if __name__ == "__main__":
    main()
