"""Benchmark (not a test): how well does a profile reproduce, against the machine's own floor?

In one run, alternating, ``--rounds`` rounds (default five) of: two profiles of the same workload and batch sizes
(in this process, as a profile job measures: interleaved rounds, contended visits set aside by their window load),
and two sweeps of ``torch.utils.benchmark`` ``blocked_autorange(min_run_time)`` over the same training step at
the same sizes (the reference). The order within a round alternates (profile, reference, profile, reference,
then reference first), so that drift falls on both methods alike.

For each pair, the relative throughput curve r(B) = samples/s at B over samples/s at the baseline batch, and
the worst |r1(B) / r2(B) - 1| over the batch sizes: how far two measurements of the same curve, a minute apart,
disagree. The reference's disagreement is the machine's floor. The profiles' raw step times give every
estimator in :data:`largestep.curve.ESTIMATORS` from the same measurements, so the estimators are compared on
the same data; each is also set against the reference's step time (profiler / reference, per size).
Target: the profiler's median disagreement over the rounds no worse than the reference's.

    python bench/bench_profile_repro.py [--workload fraud-mlp] [--batch-sizes 64,128,256,512,1024,2048]
                                        [--rounds 5] [--min-seconds 1] [--competitor] [--threads N] [--out FILE]

``--competitor`` runs the same with the busy loop of bench_profile_load.py switching on and off (the loaded
condition).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_profile_load import LOAD_GENERATOR, start_outside_this_process_tree  # noqa: E402

from largestep.curve import ESTIMATORS, estimate  # noqa: E402
from largestep.measure.profiler import OK, ProfileConfig, StepRunner, run_profile  # noqa: E402
from largestep.measure.telemetry import WindowLoad  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402

CPU = torch.device("cpu")
WARMUP_STEPS = 3


def profile_times(workload, sizes: tuple[int, ...], min_seconds: float, window: WindowLoad) -> dict:
    """One profile as a job measures it; {batch size: raw step times kept}, and the visits set aside."""

    def tag(batch_size: int | None) -> None:
        if batch_size is not None:
            window.open()
        else:
            window.close()

    config = ProfileConfig(batch_sizes=sizes, min_seconds=min_seconds, full=True)
    result = run_profile(workload, CPU, config, telemetry_tag=tag, others_busy_cores=window.others_busy_cores)
    points = {p.batch_size: p for p in result.points if p.status == OK}
    return {
        "times": {b: list(p.step_times_s) for b, p in points.items()},
        "under_load": [b for b, p in points.items() if p.under_load],
        "set_aside": sum(p.loaded_visits for p in points.values()),
    }


def reference_times(workload, sizes: tuple[int, ...], min_seconds: float) -> dict[int, float]:
    """blocked_autorange's median step time at each size, on the profiler's own step (same model, optimizer, data)."""
    out = {}
    for batch_size in sizes:
        runner = StepRunner(workload, CPU, batch_size)
        for _ in range(WARMUP_STEPS):
            runner.step()
        timer = benchmark.Timer(stmt="runner.step()", globals={"runner": runner}, num_threads=torch.get_num_threads())
        out[batch_size] = timer.blocked_autorange(min_run_time=min_seconds).median
        runner.close()
    return out


def relative(step_s: dict[int, float], baseline: int) -> dict[int, float]:
    return {b: (b / t) / (baseline / step_s[baseline]) for b, t in step_s.items()}


def worst(first: dict[int, float], second: dict[int, float]) -> tuple[float, int]:
    both = sorted(set(first) & set(second))
    at = max(both, key=lambda b: abs(first[b] / second[b] - 1))
    return first[at] / second[at] - 1, at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-mlp")
    parser.add_argument("--batch-sizes", default="64,128,256,512,1024,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="a profile's timed seconds a size, and the reference's min_run_time",
    )
    parser.add_argument("--competitor", action="store_true", help="a busy loop switching on and off (loaded)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workload = load_workload(args.workload)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    baseline = workload.baseline_batch_size
    if baseline not in sizes:
        sys.exit(f"the batch sizes must include the baseline {baseline}")
    print(
        f"{args.workload} at {list(sizes)}, {args.rounds} rounds, {torch.get_num_threads()} torch threads on "
        f"{os.cpu_count()} cores; load average at the start {os.getloadavg()[0]:.2f}"
        + ("; with the competitor" if args.competitor else ""),
        flush=True,
    )
    window = WindowLoad()
    load = start_outside_this_process_tree([sys.executable, "-c", LOAD_GENERATOR]) if args.competitor else None
    rounds = []
    started = time.perf_counter()
    try:
        for k in range(args.rounds):
            order = ("profile", "reference") * 2 if k % 2 == 0 else ("reference", "profile") * 2
            profiles, references = [], []
            for method in order:
                if method == "profile":
                    profiles.append(profile_times(workload, sizes, args.min_seconds, window))
                else:
                    references.append(reference_times(workload, sizes, args.min_seconds))
            rounds.append({"profiles": profiles, "references": references, "load_average": os.getloadavg()[0]})
            print(
                f"round {k + 1}: {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}; "
                f"visits set aside {[p['set_aside'] for p in profiles]}, under load "
                f"{[p['under_load'] for p in profiles]}",
                flush=True,
            )
    finally:
        if load is not None:
            load.kill()  # by its pid, always

    # per round: the worst disagreement of each estimator's two profiles, and of the two reference sweeps
    table: dict[str, list[tuple[float, int]]] = {name: [] for name in (*ESTIMATORS, "reference")}
    ratio: dict[str, dict[int, list[float]]] = {name: {b: [] for b in sizes} for name in ESTIMATORS}
    for r in rounds:
        refs = r["references"]
        table["reference"].append(worst(relative(refs[0], baseline), relative(refs[1], baseline)))
        for name in ESTIMATORS:
            curves = [{b: estimate(t, name) for b, t in p["times"].items()} for p in r["profiles"]]
            table[name].append(worst(relative(curves[0], baseline), relative(curves[1], baseline)))
            for curve, ref in zip(curves, refs):
                for b in sizes:
                    if b in curve:
                        ratio[name][b].append(curve[b] / ref[b])
    print(f"\nworst disagreement of two curves a round (|r1/r2 - 1| at its batch size), {args.rounds} rounds:")
    print(f"  {'method':<16}" + "".join(f"{'round ' + str(k + 1):>16}" for k in range(args.rounds)) + f"{'median':>10}")
    figures = {
        "workload": args.workload,
        "batch_sizes": list(sizes),
        "rounds": args.rounds,
        "min_seconds": args.min_seconds,
        "competitor": args.competitor,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "wall_s": round(time.perf_counter() - started),
        "load_average": [r["load_average"] for r in rounds],
        "worst_disagreement": {},
        "ratio_to_reference": {},
    }
    for name, worsts in table.items():
        median = statistics.median(abs(d) for d, _ in worsts)
        figures["worst_disagreement"][name] = {"rounds": worsts, "median": median}
        label = "reference" if name == "reference" else f"profile {name}"
        print(f"  {label:<16}" + "".join(f"{d:+9.1%} @{b:<5}" for d, b in worsts) + f"{median:10.1%}")
    print("\nprofiler's step time / the reference's median, median over rounds and the two profiles:")
    print(f"  {'estimator':<16}" + "".join(f"{b:>9}" for b in sizes))
    for name in ESTIMATORS:
        medians = {b: statistics.median(v) for b, v in ratio[name].items() if v}
        figures["ratio_to_reference"][name] = medians
        print(f"  {name:<16}" + "".join(f"{medians.get(b, float('nan')):9.3f}" for b in sizes))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {figures['wall_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
