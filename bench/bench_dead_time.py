"""Dead time: how much of a job's and a loop's wall time is not spent training (not a test).

All figures are ratios measured in the same run, so a busy machine slows both sides alike.

(a) start-up: a training job's time from submission (``start_train``, as ``largestep train`` calls it)
    to the end of its first training step, once its workload is cached, against the time of
    ``python -c "import torch"`` (a fresh interpreter importing torch). Target: at most 1.5x. A job forked by
    the home's warm launcher, and one started as a fresh process; beside them, the floor of any fresh
    PyTorch training process: importing torch and making a first optimizer. Each round also splits the job's
    time into spans:
    submit (validate, write the spec, spawn) -> the job's ``start`` event (interpreter, the runner's
    imports, the device lock) -> ``run_start`` (the body's imports, the workload, the model) ->
    the first step.
(b) a default sweep of fraud-gru (``largestep profile --workload fraud-gru``, as a user runs it):
    the share of its wall time outside the timed steps. Target: at most 15%.
(c) an autopilot on fraud-gru: the share of its wall time spent in measured work, that is the
    training runs' wall time (training steps and evaluation, as their loop clocks it), the
    profile's timed steps and the noise estimate's own time. Target: at least 85%.

    python bench/bench_dead_time.py [--rounds 5] [--skip-first-step] [--skip-sweep] [--sweeps 1] [--skip-autopilot]
                                    [--autopilot-repeats 3] [--autopilot-epochs E]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import jobs, store  # noqa: E402
from largestep.home import Home  # noqa: E402
from largestep.jobs import events  # noqa: E402

IMPORT_TORCH = "import torch"
# The floor of any PyTorch training process: torch's optimizers import torch._dynamo on first use
# (torch._disable_dynamo), which on this machine costs about as much again as importing torch.
FIRST_OPTIMIZER = "import torch; torch.optim.Adam(torch.nn.Linear(1, 1).parameters())"


def python_s(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def first_step(workload: str, rounds: int) -> dict:
    """(a): submission to first step vs `import torch`, interleaved round by round.

    Each round times a job forked by the home's warm launcher (the steady state of a user submitting
    jobs) and a fresh job process (LARGESTEP_WARM_LAUNCHER=0). Before the rounds, the first job of the
    home is timed on its own: no launcher is running yet, so it starts afresh while its launcher starts.
    """
    from largestep.jobs import forkserver
    from largestep.workloads import load_workload
    from largestep.workloads.cache import cache_of

    with tempfile.TemporaryDirectory() as root:
        home = Home(Path(root) / "home")
        load_workload(workload, {}, cache_of(home.ensure()))   # cached, as after the first job
        try:
            os.environ[forkserver.WARM_ENV] = "1"
            cold, _ = _first_step_s(home, workload, seed=0)
            print(f"the home's first job, its launcher cold: submission to first step {cold:.2f} s", flush=True)
            deadline = time.monotonic() + 300
            while not any(r["serving_since"] for r in forkserver.running(home)) and time.monotonic() < deadline:
                time.sleep(0.2)
            reference, floor, timed, spans = [], [], {"warm": [], "fresh": []}, {"warm": [], "fresh": []}
            for k in range(rounds):
                reference.append(python_s(IMPORT_TORCH))
                floor.append(python_s(FIRST_OPTIMIZER))
                for label, flag in (("warm", "1"), ("fresh", "0")):
                    os.environ[forkserver.WARM_ENV] = flag
                    took, split = _first_step_s(home, workload, seed=k + 1)
                    timed[label].append(took)
                    spans[label].append(split)
                print(f"round {k}: import torch {reference[-1]:.2f} s, and a first optimizer {floor[-1]:.2f} s; "
                      "submission to first step " + ", ".join(
                          f"{label} {timed[label][-1]:.2f} s (process and runner {spans[label][-1]['to_start_event']:.2f}"
                          f" s, body and workload {spans[label][-1]['to_run_start']:.2f} s, first step "
                          f"{spans[label][-1]['to_first_step']:.2f} s)" for label in timed), flush=True)
        finally:
            os.environ.pop(forkserver.WARM_ENV, None)
            forkserver.stop(home)
    torch_s = statistics.median(reference)
    ratios = {label: statistics.median(values) / torch_s for label, values in timed.items()}
    floor_ratio = statistics.median(floor) / torch_s
    median_spans = {label: {name: statistics.median(s[name] for s in spans[label]) for name in spans[label][0]}
                    for label in spans}
    print(f"(a) submission to first step / import torch {torch_s:.2f} s: warm launcher "
          f"{statistics.median(timed['warm']):.2f} s = {ratios['warm']:.2f} (target at most 1.5), fresh process "
          f"{statistics.median(timed['fresh']):.2f} s = {ratios['fresh']:.2f}, the home's first job (launcher cold) "
          f"{cold:.2f} s = {cold / torch_s:.2f}; import torch and a first optimizer alone: {floor_ratio:.2f}; "
          "median spans " + "; ".join(f"{label}: " + ", ".join(f"{name} {value:.2f} s" for name, value in
                                                              median_spans[label].items()) for label in median_spans),
          flush=True)
    return {"first_step_s": {label: statistics.median(values) for label, values in timed.items()},
            "cold_launcher_s": cold, "import_torch_s": torch_s, "first_optimizer_s": statistics.median(floor),
            "ratio": ratios, "floor_ratio": floor_ratio, "spans_s": median_spans}


def _first_step_s(home: Home, workload: str, seed: int) -> tuple[float, dict]:
    """One training job's submission to the end of its first step, and where that time went."""
    from largestep.jobs.start import start_train
    from largestep.measure.train import TrainConfig

    config = TrainConfig(batch_size=128, lr=1e-3, max_steps=3, log_every_steps=1, seed=seed)
    submitted = time.time()
    [job_id] = start_train(home, workload, {}, "cpu", config)
    if jobs.wait(home, job_id, timeout_s=300) != jobs.FINISHED:
        raise SystemExit(f"job {job_id} did not finish: {jobs.crash_reason(home.job_dir(job_id))}")
    read = events.read_all(home.job_dir(job_id))
    started = next(e["t"] for e in read if e["type"] == events.START)
    run_start = next(e for e in read if e["type"] == events.RUN_START)
    first = run_start["t"] + next(e for e in read if e["type"] == events.METRICS)["rows"][0]["wall_time_s"]
    return first - submitted, {"to_start_event": started - submitted, "to_run_start": run_start["t"] - started,
                               "to_first_step": first - run_start["t"]}


def sweep(workload: str, cached_runs: int = 1) -> dict:
    """(b): a default sweep from the command line, cold (its own empty home) and then ``cached_runs`` times with
    the cache warm."""
    from largestep.jobs import forkserver

    results = {}
    labels = ["cold"] + ["cached" if cached_runs == 1 else f"cached {k + 1}" for k in range(cached_runs)]
    with tempfile.TemporaryDirectory() as root:
        env = dict(os.environ, LARGESTEP_HOME=root)
        for label in labels:   # the later ones' jobs are forked by the launcher the first one started
            start, submitted = time.perf_counter(), time.time()
            proc = subprocess.run([sys.executable, "-m", "largestep.cli", "profile", "--workload", workload, "--json"],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
            data = json.loads(proc.stdout)
            with store.connect(Home(Path(root))) as con:
                timed = float(sum(sum(t) for t in store.profile_points(con, data["profile_id"]).step_times_s))
            job_dir = Home(Path(root)).job_dir(data["profile_id"])
            spans = _sweep_spans(job_dir, submitted, submitted + wall)
            first_visits = _first_visits_untimed(job_dir)
            results[label] = {"wall_s": wall, "timed_s": timed, "outside_share": 1 - timed / wall, "spans_s": spans,
                              "first_visits": first_visits}
            print(f"(b) default sweep of {workload}, {label} workload: {wall:.1f} s wall, {timed:.1f} s in timed "
                  f"steps, {1 - timed / wall:.0%} outside them (target at most 15%); "
                  + ", ".join(f"{name} {value:.1f} s" for name, value in spans.items()), flush=True)
            print("    each size's first visit, outside its timed steps: " + ", ".join(
                f"{b}: {v['untimed_s']:.2f} s ({v['warmup_steps']} untimed steps of {v['step_s'] * 1e3:.3g} ms)"
                for b, v in first_visits.items()), flush=True)
        forkserver.stop(Home(Path(root)))
    return results


def _sweep_spans(job_dir: Path, submitted: float, finished: float) -> dict:
    """Where a sweep's time outside its timed steps goes, from its spool: before the job's process
    starts (the command: interpreter, imports, validation), the job's start-up until its first batch
    size, each batch size's untimed work (warm-up, FLOP counting), and after the last one."""
    read = events.read_all(job_dir)
    started = next(e["t"] for e in read if e["type"] == events.START)
    points = [e for e in read if e["type"] == events.POINT and e.get("started_at") and e.get("ended_at")]
    # an interleaved profile spools a size's point more than once (its first pass, then its rounds): the
    # latest is the one kept, and holds the first pass's steps as its first visit
    kept = {p["batch_size"]: p for p in points}.values()
    timed = sum(p.get("timed_s") or sum(p["step_times_s"] or []) for p in kept)
    first, last = min(p["started_at"] for p in points), max(p["ended_at"] for p in points)
    ended = next(e["t"] for e in read if e["type"] == events.EXIT)
    return {"command before the job": started - submitted,
            "job start-up to the first batch size": first - started,
            "measuring, outside the kept timed steps": last - first - timed,
            "after the last batch size": ended - last,
            "command after the job": finished - ended}


def _first_visits_untimed(job_dir: Path) -> dict:
    """Each batch size's first visit (the first pass, where nearly all the untimed work is): its seconds outside
    its timed steps (warm-up, FLOP counting, the rest), its untimed steps and its median step time."""
    first: dict[int, dict] = {}
    for e in events.read_all(job_dir):   # a size's first point event is its first visit (later ones merge visits)
        if e["type"] == events.POINT and e.get("started_at") and e.get("ended_at") and e.get("median_s"):
            first.setdefault(e["batch_size"], e)
    return {b: {"untimed_s": p["ended_at"] - p["started_at"] - (p.get("timed_s") or sum(p["step_times_s"] or [])),
                "warmup_steps": p.get("warmup_steps"), "step_s": p["median_s"]} for b, p in sorted(first.items())}


def autopilot(workload: str, repeats: int, epochs: float | None) -> dict:
    """(c): one autopilot; its measured work against its wall time, from submission to its end."""
    from largestep.jobs.autopilot import AutopilotConfig
    from largestep.jobs.start import start_autopilot

    with tempfile.TemporaryDirectory() as root:
        home = Home(Path(root) / "home")
        config = AutopilotConfig(repeats=repeats, epochs=epochs)
        start = time.perf_counter()
        job_id = start_autopilot(home, workload, {}, "cpu", config)
        state = jobs.wait(home, job_id, timeout_s=7200)
        wall = time.perf_counter() - start
        if state != jobs.FINISHED:
            raise SystemExit(f"autopilot {job_id} ended {state}")
        store.ingest(home)
        with store.connect(home) as con:
            runs = con.execute("SELECT coalesce(sum(wall_time_s), 0), coalesce(sum(train_time_s), 0), count(*) "
                               "FROM runs").fetchone()
            [profile_id] = [r[0] for r in con.execute("SELECT id FROM profiles").fetchall()]
            timed = float(sum(sum(t) for t in store.profile_points(con, profile_id).step_times_s))
            noise = con.execute("SELECT coalesce(sum(elapsed_s), 0) FROM noise_estimates").fetchone()[0]
    runs_wall, runs_train, n_runs = runs
    work = runs_wall + timed + noise
    print(f"(c) autopilot on {workload} ({repeats} seed(s) an arm, epochs {epochs or 'the workload default'}): "
          f"{wall:.1f} s wall; {n_runs} runs {runs_wall:.1f} s ({runs_train:.1f} s training steps, the rest "
          f"evaluation), profile {timed:.1f} s timed steps, noise estimate {noise:.1f} s: {work / wall:.0%} measured "
          f"work (target at least 85%)", flush=True)
    return {"wall_s": wall, "runs_wall_s": runs_wall, "runs_train_s": runs_train, "profile_timed_s": timed,
            "noise_s": noise, "work_share": work / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-first-step", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--sweeps", type=int, default=1, help="default sweeps with the cache warm (after a cold one)")
    parser.add_argument("--skip-autopilot", action="store_true")
    parser.add_argument("--autopilot-repeats", type=int, default=3)
    parser.add_argument("--autopilot-epochs", type=float, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f}", flush=True)
    if not args.skip_first_step:
        first_step(args.workload, args.rounds)
    if not args.skip_sweep:
        sweep(args.workload, args.sweeps)
    if not args.skip_autopilot:
        autopilot(args.workload, args.autopilot_repeats, args.autopilot_epochs)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
