"""Benchmark (not a test): is a profile job's step time the step's, or does the job itself slow it?

A profile job times the same training step ``torch.utils.benchmark`` does, but beside it run the job's own
threads (the telemetry sampler at 10 Hz, the heartbeat rewriting status.json every second, the spool writer
fsyncing telemetry events) and the job process itself was forked from the warm launcher (or started afresh).
On a machine whose cores torch's threads already fill, any of them could take a core from a step. This bench
switches each on alone, so the one that costs, if any, is named:

- ``in-process``: the profiler's sweep in this process, nothing else running (the profiler's own method);
- ``+ sampler``, ``+ heartbeat``, ``+ spool``: the same with one of the job's threads running beside it
  (``+ spool``: the sampler's samples written to a spool as the job writes them, fsync included);
- ``+ all three``: as a profile job has them, in this process;
- ``job, warm launcher`` and ``job, fresh process``: a real profile job (``largestep profile``), forked from the
  warm launcher or started as a new ``python -m largestep.jobs``.

Each is set against ``blocked_autorange(min_run_time)`` on the same step (same model, optimizer, data and
batch) measured in this process in the same round; the rounds alternate (every method once a round, in a
shuffled order) and the figure is the median over the rounds of the ratio, the profiler's median step over the
reference's (and its estimate over the reference's). Target: 0.9 to 1.1, or the bench names what makes the
difference. Workloads: fraud-mlp at three sizes and a small conv net (bench/conv_workload.py) at three.

    python bench/bench_job_overhead.py [--rounds 5] [--seconds 1] [--only fraud-mlp|small-conv] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import jobs  # noqa: E402
from largestep.home import Home  # noqa: E402
from largestep.jobs import events, forkserver  # noqa: E402
from largestep.jobs.runner import _heartbeat, job_environment  # noqa: E402
from largestep.jobs.spool import Spool  # noqa: E402
from largestep.jobs.start import start_profile  # noqa: E402
from largestep.measure import devices, telemetry  # noqa: E402
from largestep.measure.profiler import OK, ProfileConfig, StepRunner, run_profile  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402

CPU = torch.device("cpu")
WORKLOADS = {
    "fraud-mlp": ("fraud-mlp", (256, 1024, 2048)),
    "small-conv": (f"{ROOT / 'bench' / 'conv_workload.py'}:make", (32, 128, 256)),
}
IN_PROCESS = ("in-process", "+ sampler", "+ heartbeat", "+ spool", "+ all three")
JOBS = ("job, warm launcher", "job, fresh process")


@contextmanager
def instruments(which: str, folder: Path):
    """The job's own threads named by ``which`` running while the block runs (in this process)."""
    with ExitStack() as stack:
        spool = None
        if which in ("+ heartbeat", "+ spool", "+ all three"):
            job_dir = Path(tempfile.mkdtemp(dir=folder))
            spool = Spool(job_dir)
            stack.callback(spool.close)
        if which in ("+ sampler", "+ spool", "+ all three"):
            write = (lambda samples: spool.emit(events.TELEMETRY, samples=samples)) if spool else (lambda _s: None)
            sampler = telemetry.Sampler(devices.device_info(CPU), on_samples=write)
            stack.enter_context(sampler)
        if which in ("+ heartbeat", "+ all three"):
            stop = threading.Event()
            beat = threading.Thread(target=_heartbeat, args=(spool, stop), daemon=True)
            beat.start()
            stack.callback(beat.join)
            stack.callback(stop.set)
        yield


def profile_in_process(workload, sizes, seconds: float, which: str, folder: Path) -> dict[int, tuple[float, float]]:
    """{batch: (median, estimate)} of one profile in this process, with ``which`` of the job's threads beside it."""
    window = telemetry.WindowLoad()

    def tag(batch_size):  # as the profile job opens and closes each timed window
        window.open() if batch_size is not None else window.close()

    config = ProfileConfig(batch_sizes=sizes, min_seconds=seconds, full=True)
    with instruments(which, folder):
        result = run_profile(workload, CPU, config, telemetry_tag=tag, others_busy_cores=window.others_busy_cores)
    return {p.batch_size: (p.median_s, p.estimate_s) for p in result.points if p.status == OK}


def profile_as_job(home: Home, spec: str, sizes, seconds: float, warm: bool) -> dict[int, tuple[float, float]]:
    """{batch: (median, estimate)} of one real profile job, forked from the warm launcher or started afresh."""
    os.environ[forkserver.WARM_ENV] = "1" if warm else "0"
    try:
        job_id = start_profile(home, spec, {}, "cpu", ProfileConfig(batch_sizes=sizes, min_seconds=seconds, full=True))
    finally:
        os.environ[forkserver.WARM_ENV] = "0"
    state = jobs.wait(home, job_id, timeout_s=900)
    if state != jobs.FINISHED:
        raise SystemExit(f"profile job {job_id} ended {state}: see {home.job_dir(job_id) / 'output.log'}")
    record = events.profile_record(events.read_all(home.job_dir(job_id)))
    return {
        p["batch_size"]: (p["median_s"], p.get("estimate_s") or p["median_s"])
        for p in record["points"]
        if p["status"] == OK
    }


def reference(workload, sizes, seconds: float) -> dict[int, float]:
    out = {}
    for batch_size in sizes:
        runner = StepRunner(workload, CPU, batch_size)
        for _ in range(3):
            runner.step()
        timer = benchmark.Timer(stmt="runner.step()", globals={"runner": runner}, num_threads=torch.get_num_threads())
        out[batch_size] = timer.blocked_autorange(min_run_time=seconds).median
        runner.close()
    return out


def start_launcher(home: Home) -> None:
    """The home's warm launcher, running before the first warm job (else that one starts afresh)."""
    env = dict(job_environment(), **{forkserver.WARM_ENV: "1"})
    forkserver.start_in_background(home, env)
    deadline = time.monotonic() + 120
    while not forkserver.running(home):
        if time.monotonic() > deadline:
            raise SystemExit("the warm launcher did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="a profile's timed seconds a size, and the reference's min_run_time"
    )
    parser.add_argument("--only", choices=list(WORKLOADS))
    parser.add_argument("--no-jobs", action="store_true", help="only the in-process methods")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    methods = IN_PROCESS + (() if args.no_jobs else JOBS)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average at the start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    figures: dict = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [],
        "workloads": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        home = Home(Path(scratch) / "home")
        home.ensure()
        os.environ[forkserver.WARM_ENV] = "0"
        try:
            if not args.no_jobs:
                start_launcher(home)
            for name, (spec, sizes) in WORKLOADS.items():
                if args.only and name != args.only:
                    continue
                workload = load_workload(spec)
                ratios = {m: {b: [] for b in sizes} for m in methods}
                estimates = {m: {b: [] for b in sizes} for m in methods}
                for k in range(args.rounds):
                    ref = reference(workload, sizes, args.seconds)
                    measured = {}
                    for method in rng.permutation(list(methods)).tolist():
                        if method in JOBS:
                            measured[method] = profile_as_job(home, spec, sizes, args.seconds, method == JOBS[0])
                        else:
                            measured[method] = profile_in_process(workload, sizes, args.seconds, method, Path(scratch))
                    for method, points in measured.items():
                        for b, (median, estimate) in points.items():
                            ratios[method][b].append(median / ref[b])
                            estimates[method][b].append(estimate / ref[b])
                    figures["load_average"].append(os.getloadavg()[0])
                    print(
                        f"{name} round {k + 1}: {time.perf_counter() - started:.0f} s, load average "
                        f"{os.getloadavg()[0]:.2f}; reference ms "
                        + ", ".join(f"{b}: {t * 1e3:.3g}" for b, t in ref.items()),
                        flush=True,
                    )
                table = {
                    m: {
                        b: (statistics.median(ratios[m][b]), statistics.median(estimates[m][b]))
                        for b in sizes
                        if ratios[m][b]
                    }
                    for m in methods
                }
                figures["workloads"][name] = {"sizes": list(sizes), "ratios": table}
                print(
                    f"\n{name}: profiler median step / blocked_autorange median (estimate / reference in "
                    f"brackets), median of {args.rounds} rounds"
                )
                print(f"  {'method':<22}" + "".join(f"{b:>18}" for b in sizes))
                for m in methods:
                    print(f"  {m:<22}" + "".join(f"{table[m][b][0]:>9.3f} ({table[m][b][1]:.3f})" for b in sizes))
                print(flush=True)
        finally:
            if not args.no_jobs:
                forkserver.stop(home)  # the launcher this bench started, by the pid its record names
    print(f"load average at the end {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
