"""Benchmarks of the profiler (not tests): ratios against references measured in the same run.

(a) accuracy: the profiler's median step time against ``torch.utils.benchmark.Timer
    .blocked_autorange`` on the same step (same model, optimizer, data and batch), interleaved
    in rounds (in alternating order) so that drift of the machine hits both alike; each side's figure is the
    median over rounds. Target: a ratio within 0.9..1.1.
(b) overhead: the wall time of a default sweep of ``fraud-gru`` from the command line, and the
    share of it spent outside the timed steps (start-up, data generation, warm-up, FLOP
    counting, ingest).

``--quick``: (a) alone at batch 128, 5 rounds of 0.5 s a side, on one torch thread (on a shared machine two threads
stall whenever another process takes a core, which no ordering of rounds evens out); the sweep's dead time is
bench_dead_time.py's.
``--floor``: ``blocked_autorange`` on both sides, the machine's own disagreement in the same minute.

    python bench/bench_profiler.py [--workload fraud-gru] [--batches 128,1024] [--rounds 3] [--skip-sweep]
                                   [--quick] [--floor]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from targets import Target, quick_rounds, report, rounds_word, typical_time  # noqa: E402

TARGET = Target(at_least=0.9, at_most=1.1, quick_margin=0.1)


def _autorange_s(workload, device: torch.device, batch_size: int, warmup_steps: int, seconds: float) -> float:
    """The reference: torch.utils.benchmark's blocked_autorange median of the same step."""
    runner = StepRunner(workload, device, batch_size)
    try:
        for _ in range(warmup_steps):
            runner.step()
        timer = benchmark.Timer(stmt="runner.step()", globals={"runner": runner}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=seconds).median
    finally:
        runner.close()


def accuracy(
    workload_spec: str, batch_sizes: list[int], rounds: int, seconds: float = 1.0, floor: bool = False
) -> list[dict]:
    workload = load_workload(workload_spec)
    device = torch.device("cpu")
    config = ProfileConfig(min_steps=10, min_seconds=seconds, warmup_steps=3)
    rows = []
    for batch_size in batch_sizes:
        ours, reference = [], []
        sides = [
            (
                ours,
                (lambda: _autorange_s(workload, device, batch_size, config.warmup_steps, seconds))
                if floor
                else (lambda: measure_point(workload, device, batch_size, config).median_s),
            ),
            (reference, lambda: _autorange_s(workload, device, batch_size, config.warmup_steps, seconds)),
        ]
        for r in range(rounds):
            for values, measure in sides if r % 2 == 0 else sides[::-1]:
                values.append(measure())
        ratio = typical_time(ours) / typical_time(reference)
        rows.append(
            {
                "batch_size": batch_size,
                "profiler_median_s": typical_time(ours),
                "blocked_autorange_median_s": typical_time(reference),
                "ratio": ratio,
            }
        )
        print(
            f"batch {batch_size:>6}: {'blocked_autorange' if floor else 'profiler'} "
            f"{typical_time(ours) * 1e3:8.3f} ms   blocked_autorange {typical_time(reference) * 1e3:8.3f} ms"
            f"   ratio {ratio:.3f}",
            flush=True,
        )
    return rows


def sweep_overhead(workload_spec: str) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, LARGESTEP_HOME=home)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "largestep.cli", "profile", "--workload", workload_spec, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
        data = json.loads(proc.stdout)
        timed = _timed_seconds(Home(Path(home)), data["profile_id"])
    result = {
        "wall_s": wall,
        "timed_s": timed,
        "outside_share": 1 - timed / wall,
        "batches": [p["batch_size"] for p in data["points"] if p["status"] == "ok"],
        "stop_reason": data["stop_reason"],
        "saturation_batch": data["saturation_batch"],
    }
    print(
        f"default sweep of {workload_spec}: {wall:.1f} s wall, {timed:.1f} s in timed steps, "
        f"{result['outside_share']:.0%} outside them; batches {result['batches']}, "
        f"stopped on {result['stop_reason']}, saturation {result['saturation_batch']}",
        flush=True,
    )
    return result


def _timed_seconds(home: Home, profile_id: str) -> float:
    """The sum of every raw timed step of the profile, read back from its database."""
    with store.connect(home) as con:
        points = store.profile_points(con, profile_id)
    return float(sum(sum(times) for times in points.step_times_s))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds a side a round")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="(a) alone, at batch 128: a few seconds")
    parser.add_argument("--floor", action="store_true", help="the reference on both sides")
    args = parser.parse_args()
    quick_rounds(args.quick)
    if args.quick:
        args.batches, args.rounds, args.seconds, args.skip_sweep = "128", 5, 0.5, True
        torch.set_num_threads(1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = accuracy(args.workload, [int(b) for b in args.batches.split(",")], args.rounds, args.seconds, args.floor)
    if not args.skip_sweep and not args.floor:
        sweep_overhead(args.workload)
    figures = []
    for row in rows:
        detail = (
            f"{row['profiler_median_s'] * 1e3:.3f} vs {row['blocked_autorange_median_s'] * 1e3:.3f} ms, "
            f"{rounds_word()} {args.rounds} rounds"
        )
        name = f"{args.workload} batch {row['batch_size']}"
        figures.append(
            TARGET.floor(f"blocked_autorange / itself, {name}", row["ratio"], detail)
            if args.floor
            else TARGET.figure(f"profiler / blocked_autorange, {name}", row["ratio"], args.quick, detail)
        )
    return report("profiler", figures)


if __name__ == "__main__":
    sys.exit(main())
