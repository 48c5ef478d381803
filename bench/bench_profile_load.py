"""Benchmark (not a test): does a profile hold while another job starts and stops on the machine?

fraud-mlp is profiled twice while a competing process switches on (a busy loop) and off at random
every 1 to 4 seconds, as another job starting and stopping would; both times with the profiler's
interleaved rounds, physics check and contended visits set aside (the default, as a profile job
measures: each visit's window load from largestep.measure.telemetry.WindowLoad), both times with the
rounds keeping every visit (as before visits were set aside), and both times measured contiguously,
one block per batch size (``rounds=1``: the sweep as it was before rounds, with no re-measure), the
six profiles alternating so that every method meets the same machine. Reported for each method:

- agreement: the relative throughput curve r(B) = samples/s at B over samples/s at the baseline
  batch, of the first profile against the second; the worst |r1(B) / r2(B) - 1| over the batch
  sizes. Target: within 10% at every batch size.
- physics: the batch sizes whose stored step time (the estimate) falls as the batch doubles. Target: none.
- refused or right: a profile of the profile job's method measured with no competitor first (the quiet
  one), then each profile measured under the competitor is either refused for recommending
  (largestep.curve.refusal: under load, or failing the physics check) or within ±10% of the quiet one at
  every batch size. Target: none used silently while further off.

    python bench/bench_profile_load.py [--workload fraud-mlp] [--batch-sizes 32,64,...] [--min-seconds 1] [--rounds 3]
                                       [--threads 1] [--profiler-only] [--no-competitor]

``--no-competitor`` runs the same comparison with no competing process: the machine's own floor, how far
two profiles taken one after the other disagree when nothing of ours loads the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import curve  # noqa: E402
from largestep.measure.profiler import OK, ProfileConfig, ProfileResult, run_profile  # noqa: E402
from largestep.measure.telemetry import WindowLoad  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402

LOAD_MAX_S = 3600  # the load generator ends by itself after an hour, should the kill never come

# A busy loop that switches on and off at random every 1 to 4 seconds, like another job starting and stopping.
LOAD_GENERATOR = f"""
import random, time
end = time.time() + {LOAD_MAX_S}
rng = random.Random(0)
while time.time() < end:
    until = time.time() + rng.uniform(1.0, 4.0)
    if rng.random() < 0.5:
        while time.time() < until:
            pass
    else:
        time.sleep(max(0.0, until - time.time()))
"""


def start_outside_this_process_tree(command: list[str]) -> psutil.Process:
    """Start ``command`` as another job would be: not a descendant of this process (a shell starts it in
    the background and exits), so the profile's window load counts it as another process's, not ours."""
    shell = subprocess.run(
        ["sh", "-c", '"$@" >/dev/null 2>&1 & echo $!', "sh", *command], capture_output=True, text=True, check=True
    )
    return psutil.Process(int(shell.stdout.strip()))


def relative_throughput(result: ProfileResult, baseline: int, statistic: str = "estimate_s") -> dict[int, float]:
    """samples/s at each measured batch size over samples/s at the baseline batch, from the points' step time
    (what the profiler stores as t(B): its estimate) or another of their statistics (``median_s``)."""
    step = {p.batch_size: getattr(p, statistic) for p in result.points if p.status == OK and p.median_s}
    return {b: (b / t) / (baseline / step[baseline]) for b, t in step.items()}


def worst_disagreement(first: dict[int, float], second: dict[int, float]) -> tuple[float, int]:
    """The largest |r1(B) / r2(B) - 1| (signed) and the batch size where it is."""
    both = sorted(set(first) & set(second))
    worst = max(both, key=lambda b: abs(first[b] / second[b] - 1))
    return first[worst] / second[worst] - 1, worst


def falls_as_the_batch_doubles(result: ProfileResult) -> list[int]:
    """The batch sizes B whose stored step time (the estimate) is below that at B/2."""
    median = {p.batch_size: p.estimate_s or p.median_s for p in result.points if p.status == OK and p.median_s}
    return [b for b in sorted(median) if b // 2 in median and b % 2 == 0 and median[b] < median[b // 2]]


def refused(result: ProfileResult) -> str | None:
    """Why `largestep recommend` refuses this profile (largestep.curve.refusal), or None."""
    return curve.refusal(
        {
            "id": "this profile",
            "points": [p.to_dict() for p in result.points],
            "config": {"noisy_iqr_ratio": result.config.noisy_iqr_ratio},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-mlp")
    parser.add_argument("--batch-sizes", default="32,64,128,256,512,1024,2048,4096")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=ProfileConfig.rounds, help="of the interleaved profiles")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's, one a core); on a "
        "CPU shared with other work, a step's threads wait on whichever one is descheduled",
    )
    parser.add_argument(
        "--profiler-only",
        action="store_true",
        help="only the method a profile job uses (the rounds setting contended visits aside)",
    )
    parser.add_argument(
        "--competitor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the competing process switching on and off (--no-competitor: the machine's floor)",
    )
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    workload = load_workload(args.workload)
    device = torch.device("cpu")
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    baseline = workload.baseline_batch_size
    if baseline not in sizes:
        sys.exit(f"the batch sizes must include the baseline {baseline}")
    interleaved = ProfileConfig(batch_sizes=sizes, min_seconds=args.min_seconds, full=True, rounds=args.rounds)
    # (config, whether contended visits are set aside)
    methods = {
        f"interleaved, {args.rounds} rounds, contended visits set aside": (interleaved, True),
        f"interleaved, {args.rounds} rounds, every visit kept": (interleaved, False),
        "contiguous (rounds=1)": (replace(interleaved, rounds=1), False),
    }
    if args.profiler_only:
        methods = dict(list(methods.items())[:1])
    results: dict[str, list[ProfileResult]] = {name: [] for name in methods}
    window = WindowLoad()

    def tag(batch_size: int | None) -> None:  # as the profile job opens and closes each timed window
        if batch_size is not None:
            window.open()
        else:
            window.close()

    started = time.perf_counter()
    # the quiet one: the profile job's method with no competitor, the curve a loaded profile must match or be refused
    quiet = run_profile(workload, device, interleaved, telemetry_tag=tag, others_busy_cores=window.others_busy_cores)
    print(
        f"quiet profile (no competitor): {time.perf_counter() - started:.0f} s; refused: {refused(quiet) or 'no'}",
        flush=True,
    )
    load = start_outside_this_process_tree([sys.executable, "-c", LOAD_GENERATOR]) if args.competitor else None
    try:
        for repeat in range(2):
            for name, (config, set_aside) in methods.items():
                t0 = time.perf_counter()
                result = run_profile(
                    workload,
                    device,
                    config,
                    telemetry_tag=tag,
                    others_busy_cores=window.others_busy_cores if set_aside else lambda: None,
                )
                results[name].append(result)
                aside = sum(p.loaded_visits for p in result.points)
                under = [p.batch_size for p in result.points if p.under_load]
                print(
                    f"{name}, profile {repeat + 1}: {time.perf_counter() - t0:.0f} s"
                    + (f"; {aside} visits set aside, under load at {under or 'none'}" if set_aside else ""),
                    flush=True,
                )
    finally:
        if load is not None:
            load.kill()  # by its pid, always

    figures = {
        "workload": args.workload,
        "batch_sizes": list(sizes),
        "baseline": baseline,
        "min_seconds": args.min_seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "wall_s": round(time.perf_counter() - started),
        "competitor": args.competitor,
        "methods": {},
    }
    for name, (first, second) in results.items():
        r1, r2 = relative_throughput(first, baseline), relative_throughput(second, baseline)
        both = sorted(set(r1) & set(r2))
        disagreement = {b: r1[b] / r2[b] - 1 for b in both}
        worst = max(both, key=lambda b: abs(disagreement[b]))
        falls = [falls_as_the_batch_doubles(first), falls_as_the_batch_doubles(second)]
        # the lower quartile instead of the estimate: background load only ever slows a step down
        low_quartile = worst_disagreement(
            relative_throughput(first, baseline, "p25_s"), relative_throughput(second, baseline, "p25_s")
        )
        # refused, or within ±10% of the quiet profile at every size: never used silently while further off
        against_quiet = [
            worst_disagreement(relative_throughput(r, baseline), relative_throughput(quiet, baseline))
            for r in (first, second)
        ]
        silent = [
            k
            for k, (r, (off, _)) in enumerate(zip((first, second), against_quiet))
            if refused(r) is None and abs(off) > 0.10
        ]
        figures["methods"][name] = {
            "against_quiet": against_quiet,
            "refused": [refused(r) for r in (first, second)],
            "used_silently_beyond_10pct": silent,
            "relative_throughput": [r1, r2],
            "disagreement": disagreement,
            "worst_disagreement_p25": low_quartile,
            "worst_disagreement": disagreement[worst],
            "worst_at": worst,
            "within_10pct": all(abs(d) <= 0.10 for d in disagreement.values()),
            "falls_as_the_batch_doubles": falls,
            "inconsistency": [first.inconsistency, second.inconsistency],
            "visits_set_aside": [sum(p.loaded_visits for p in r.points) for r in (first, second)],
            "under_load": [[p.batch_size for p in r.points if p.under_load] for r in (first, second)],
        }
        print(f"\n{name}")
        print("  batch   " + "".join(f"{b:>8}" for b in both))
        print("  r1(B)   " + "".join(f"{r1[b]:8.2f}" for b in both))
        print("  r2(B)   " + "".join(f"{r2[b]:8.2f}" for b in both))
        print("  r1/r2-1 " + "".join(f"{disagreement[b]:+8.0%}" for b in both))
        print(
            f"  worst disagreement {disagreement[worst]:+.1%} at batch {worst}; step time falls as the batch "
            f"doubles at {falls[0] or 'none'} (profile 1) and {falls[1] or 'none'} (profile 2)"
        )
        print(
            f"  from the lower quartile of the step times instead: worst disagreement {low_quartile[0]:+.1%} at "
            f"batch {low_quartile[1]}"
        )
        for k, (r, (off, at)) in enumerate(zip((first, second), against_quiet)):
            print(
                f"  profile {k + 1} against the quiet one: {off:+.1%} at {at}; "
                + (
                    f"refused ({refused(r).split(': ', 1)[1].split('; rerun')[0]})"
                    if refused(r)
                    else "trusted" + (" -- USED SILENTLY, beyond 10%" if k in silent else ", within 10%")
                )
            )
        for k, result in enumerate((first, second)):
            if result.inconsistency:
                print(f"  profile {k + 1} flagged: {result.inconsistency}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
