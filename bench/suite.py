"""The benchmarks whose figures carry a target, one after another (``./dev bench``): each figure beside its target,
and a non-zero exit when one misses.

``--quick`` cuts each to a few seconds (their own ``--quick``: fewer sizes, short interleaved rounds, one torch
thread) with targets widened by the machine's floor; the whole takes about a minute on the development machine.
Run it before you stop whenever a change touches engine/measure, engine/jobs or engine/store. ``--floor``
measures each reference against itself in the same minute instead: the margins the quick targets carry. Without
``--quick`` each benchmark runs at its full size (many minutes): the figures of bench/README.md.

    python bench/suite.py [--quick] [--floor] [NAME ...]      (NAME: the keys of SUITE; default: every one, or with
                                                               --quick those in QUICK)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from targets import FIGURES_LINE

BENCH = Path(__file__).resolve().parent

SUITE = {  # name: (script, what its figures compare)
    "profiler": ("bench_profiler.py", "the profiler's median step against torch.utils.benchmark's"),
    "train": ("bench_train.py", "the training loop against a bare PyTorch loop"),
    "ingest": ("bench_ingest.py", "ingest against DuckDB's own insert of the same rows from Arrow"),
    "dead_time": ("bench_dead_time.py", "a job's start against `import torch`; a cached sweep outside its timed steps"),
    "track": ("bench_track.py", "a loop calling run.log against the same loop without it"),
    "dataset": ("bench_dataset.py", "a Dataset workload's training and profile against a bare DataLoader loop"),
}
# The quick set: one benchmark a figure family. The Dataset bench (another 30 s) runs with `./dev bench --quick
# dataset` and in the full run.
QUICK = ["ingest", "profiler", "train", "track", "dead_time"]
TIMEOUT_S = {True: 600, False: 7200}  # a benchmark still running after this (quick, full) is ended and failed
QUICK_BUDGET_S = 90


def run(name: str, quick: bool, floor: bool) -> tuple[int, dict | None]:
    """One benchmark in its own process, its output passed through; (its exit code, the figures it reported)."""
    script, _ = SUITE[name]
    argv = [sys.executable, str(BENCH / script), *(["--quick"] if quick else []), *(["--floor"] if floor else [])]
    print(f"==> {name}: {' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}", flush=True)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent, start_new_session=True
    )
    reported: list[dict] = []

    def relay() -> None:
        for line in proc.stdout:
            if line.startswith(FIGURES_LINE):
                reported.append(json.loads(line[len(FIGURES_LINE) :]))
            else:
                print(f"    {line}", end="", flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=TIMEOUT_S[quick])
    except subprocess.TimeoutExpired:
        print(f"    {name} ran past {TIMEOUT_S[quick]} s: ended", flush=True)
        code = -1
    finally:  # also on Ctrl-C
        if proc.poll() is None:
            end(proc)
    reader.join(timeout=5)
    return code, reported[-1] if reported else None


def end(proc: subprocess.Popen) -> None:
    """End a benchmark's whole process group: an interrupt first, as Ctrl-C (a command cancels the job it follows,
    a benchmark stops the launcher it started), then a kill."""
    for sig, grace_s in ((signal.SIGINT, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(SUITE))
    parser.add_argument("--quick", action="store_true", help="each benchmark cut to a few seconds")
    parser.add_argument("--floor", action="store_true", help="each reference against itself (the quick margins)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in SUITE]
    if unknown:
        print(f"no benchmark called {unknown[0]!r}; choose from {', '.join(SUITE)}", file=sys.stderr)
        return 2
    names = args.names or (QUICK if args.quick else list(SUITE))
    load_start, start = os.getloadavg()[0], time.monotonic()
    rows, failed = [], []
    for name in names:
        code, figures = run(name, args.quick, args.floor)
        if figures is None or code not in (0, 1):
            failed.append(f"{name} (exit code {code}, no figures)" if figures is None else f"{name} (exit code {code})")
        for f in (figures or {}).get("figures", []):
            rows.append((name, f))
    took = time.monotonic() - start
    print(f"\n{'benchmark':<10} {'figure':<78} {'value':>7}  {'target':<16} verdict")
    for name, f in rows:
        print(
            f"{name:<10} {f['name'][:78]:<78} {f['value']:>7.3f}  {f['target']:<16} {'met' if f['met'] else 'MISSED'}"
        )
    missed = [f"{name}: {f['name']}" for name, f in rows if not f["met"]]
    budget = f" (a quick run is meant to take under {QUICK_BUDGET_S} s)" if args.quick else ""
    print(
        f"\n{len(rows) - len(missed)} of {len(rows)} figures met their target; {took:.0f} s in all{budget}; "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"({os.cpu_count()} cores)"
    )
    for line in missed:
        print(f"MISSED {line}")
    for line in failed:
        print(f"FAILED {line}")
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
