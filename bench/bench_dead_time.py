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

``--quick``: (a) with the warm launcher alone, 3 rounds, then one default sweep up to batch 4096 in the same home
(its workload cached and its launcher warm, as (b)'s cached sweeps); no autopilot. ``--floor``: (a)'s reference against itself
(``import torch`` twice a round) and two cached sweeps, whose shares outside the timed steps differ by the floor.

    python bench/bench_dead_time.py [--rounds 5] [--skip-first-step] [--skip-sweep] [--sweeps 1] [--skip-autopilot]
                                    [--autopilot-repeats 3] [--autopilot-epochs E] [--quick] [--floor]
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
from targets import Target, quick_rounds, report, rounds_word, typical_time  # noqa: E402

START_TARGET = Target(at_most=1.5, quick_margin=0.3)  # a warm-launched job's first step / import torch
SWEEP_TARGET = Target(at_most=0.15, quick_margin=0.05)  # a cached sweep's share outside its timed steps
AUTOPILOT_TARGET = Target(at_least=0.85)  # an autopilot's share in measured work
QUICK_SWEEP = ("--max-batch", "4096")

IMPORT_TORCH = "import torch"
# The floor of any PyTorch training process: torch's optimizers import torch._dynamo on first use
# (torch._disable_dynamo), which on this machine costs about as much again as importing torch.
FIRST_OPTIMIZER = "import torch; torch.optim.Adam(torch.nn.Linear(1, 1).parameters())"


def python_s(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def first_step(workload: str, rounds: int, home: Home | None = None, fresh: bool = True, floor: bool = False) -> dict:
    """(a): submission to first step vs `import torch`, interleaved round by round.

    Each round times a job forked by the home's warm launcher (the steady state of a user submitting
    jobs) and, when ``fresh``, a fresh job process (LARGESTEP_WARM_LAUNCHER=0). Before the rounds, the first job of
    the home is timed on its own: no launcher is running yet, so it starts afresh while its launcher starts.
    ``home``: the home to use, its launcher left running (quick mode sweeps in it next); else a temporary one.
    ``floor``: ``import torch`` in the warm job's place.
    """
    from largestep.jobs import forkserver
    from largestep.workloads import load_workload
    from largestep.workloads.cache import cache_of

    with tempfile.TemporaryDirectory() as root:
        own_home = home is None
        home = home or Home(Path(root) / "home")
        load_workload(workload, {}, cache_of(home.ensure()))  # cached, as after the first job
        try:
            os.environ[forkserver.WARM_ENV] = "1"
            cold, _ = _first_step_s(home, workload, seed=0)
            print(f"the home's first job, its launcher cold: submission to first step {cold:.2f} s", flush=True)
            deadline = time.monotonic() + 300
            while not any(r["serving_since"] for r in forkserver.running(home)) and time.monotonic() < deadline:
                time.sleep(0.2)
            arms = (("warm", "1"), ("fresh", "0")) if fresh else (("warm", "1"),)
            reference, floor_s, timed, spans = [], [], {a: [] for a, _ in arms}, {a: [] for a, _ in arms}
            for k in range(rounds):
                reference.append(python_s(IMPORT_TORCH))
                if fresh:
                    floor_s.append(python_s(FIRST_OPTIMIZER))
                for label, flag in arms:
                    if floor:
                        timed[label].append(python_s(IMPORT_TORCH))
                        spans[label].append({"import torch": timed[label][-1]})
                        continue
                    os.environ[forkserver.WARM_ENV] = flag
                    took, split = _first_step_s(home, workload, seed=k + 1)
                    timed[label].append(took)
                    spans[label].append(split)
                print(
                    f"round {k}: import torch {reference[-1]:.2f} s; "
                    + ", ".join(
                        f"{label} {timed[label][-1]:.2f} s ("
                        + ", ".join(f"{name} {value:.2f} s" for name, value in spans[label][-1].items())
                        + ")"
                        for label in timed
                    ),
                    flush=True,
                )
        finally:
            os.environ.pop(forkserver.WARM_ENV, None)
            if own_home:
                forkserver.stop(home)
    torch_s = typical_time(reference)
    ratios = {label: typical_time(values) / torch_s for label, values in timed.items()}
    floor_ratio = statistics.median(floor_s) / torch_s if floor_s else None
    median_spans = {
        label: {name: statistics.median(s[name] for s in spans[label]) for name in spans[label][0]} for label in spans
    }
    print(
        f"(a) submission to first step / import torch {torch_s:.2f} s: "
        + ", ".join(f"{label} {typical_time(timed[label]):.2f} s = {ratios[label]:.2f}" for label in timed)
        + f" (target for warm: at most 1.5); the home's first job (launcher cold) {cold:.2f} s = {cold / torch_s:.2f}"
        + (f"; import torch and a first optimizer alone: {floor_ratio:.2f}" if floor_ratio else "")
        + "; median spans "
        + "; ".join(
            f"{label}: " + ", ".join(f"{name} {value:.2f} s" for name, value in median_spans[label].items())
            for label in median_spans
        ),
        flush=True,
    )
    return {
        "first_step_s": {label: typical_time(values) for label, values in timed.items()},
        "cold_launcher_s": cold,
        "import_torch_s": torch_s,
        "first_optimizer_s": statistics.median(floor_s) if floor_s else None,
        "ratio": ratios,
        "floor_ratio": floor_ratio,
        "spans_s": median_spans,
        "rounds": rounds,
    }


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
    return first - submitted, {
        "process and runner": started - submitted,
        "body and workload": run_start["t"] - started,
        "first step": first - run_start["t"],
    }


def sweep(workload: str, cached_runs: int = 1, home: Home | None = None, options: tuple[str, ...] = ()) -> dict:
    """(b): a default sweep from the command line, cold (its own empty home) and then ``cached_runs`` times with
    the cache warm. ``home``: one whose workload is cached and launcher warm already: its cached sweeps alone.
    ``options``: more of `largestep profile`'s options."""
    from largestep.jobs import forkserver

    results = {}
    labels = [] if home else ["cold"]
    labels += ["cached" if cached_runs == 1 else f"cached {k + 1}" for k in range(cached_runs)]
    with tempfile.TemporaryDirectory() as root:
        root = str(home.root) if home else root
        env = dict(os.environ, LARGESTEP_HOME=root)
        for label in labels:  # the later ones' jobs are forked by the launcher the first one started
            start, submitted = time.perf_counter(), time.time()
            proc = subprocess.run(
                [sys.executable, "-m", "largestep.cli", "profile", "--workload", workload, "--json", *options],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
            data = json.loads(proc.stdout)
            with store.connect(Home(Path(root))) as con:
                timed = float(sum(sum(t) for t in store.profile_points(con, data["profile_id"]).step_times_s))
            job_dir = Home(Path(root)).job_dir(data["profile_id"])
            spans = _sweep_spans(job_dir, submitted, submitted + wall)
            first_visits = _first_visits_untimed(job_dir)
            results[label] = {
                "wall_s": wall,
                "timed_s": timed,
                "outside_share": 1 - timed / wall,
                "spans_s": spans,
                "first_visits": first_visits,
            }
            print(
                f"(b) default sweep of {workload}, {label} workload: {wall:.1f} s wall, {timed:.1f} s in timed "
                f"steps, {1 - timed / wall:.0%} outside them (target at most 15%); "
                + ", ".join(f"{name} {value:.1f} s" for name, value in spans.items()),
                flush=True,
            )
            print(
                "    each size's first visit, outside its timed steps: "
                + ", ".join(
                    f"{b}: {v['untimed_s']:.2f} s ({v['warmup_steps']} untimed steps of {v['step_s'] * 1e3:.3g} ms)"
                    for b, v in first_visits.items()
                ),
                flush=True,
            )
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
    return {
        "command before the job": started - submitted,
        "job start-up to the first batch size": first - started,
        "measuring, outside the kept timed steps": last - first - timed,
        "after the last batch size": ended - last,
        "command after the job": finished - ended,
    }


def _first_visits_untimed(job_dir: Path) -> dict:
    """Each batch size's first visit (the first pass, where nearly all the untimed work is): its seconds outside
    its timed steps (warm-up, FLOP counting, the rest), its untimed steps and its median step time."""
    first: dict[int, dict] = {}
    for e in events.read_all(job_dir):  # a size's first point event is its first visit (later ones merge visits)
        if e["type"] == events.POINT and e.get("started_at") and e.get("ended_at") and e.get("median_s"):
            first.setdefault(e["batch_size"], e)
    return {
        b: {
            "untimed_s": p["ended_at"] - p["started_at"] - (p.get("timed_s") or sum(p["step_times_s"] or [])),
            "warmup_steps": p.get("warmup_steps"),
            "step_s": p["median_s"],
        }
        for b, p in sorted(first.items())
    }


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
            runs = con.execute(
                "SELECT coalesce(sum(wall_time_s), 0), coalesce(sum(train_time_s), 0), count(*) FROM runs"
            ).fetchone()
            [profile_id] = [r[0] for r in con.execute("SELECT id FROM profiles").fetchall()]
            timed = float(sum(sum(t) for t in store.profile_points(con, profile_id).step_times_s))
            noise = con.execute("SELECT coalesce(sum(elapsed_s), 0) FROM noise_estimates").fetchone()[0]
    runs_wall, runs_train, n_runs = runs
    work = runs_wall + timed + noise
    print(
        f"(c) autopilot on {workload} ({repeats} seed(s) an arm, epochs {epochs or 'the workload default'}): "
        f"{wall:.1f} s wall; {n_runs} runs {runs_wall:.1f} s ({runs_train:.1f} s training steps, the rest "
        f"evaluation), profile {timed:.1f} s timed steps, noise estimate {noise:.1f} s: {work / wall:.0%} measured "
        f"work (target at least 85%)",
        flush=True,
    )
    return {
        "wall_s": wall,
        "runs_wall_s": runs_wall,
        "runs_train_s": runs_train,
        "profile_timed_s": timed,
        "noise_s": noise,
        "work_share": work / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-first-step", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--sweeps", type=int, default=1, help="default sweeps with the cache warm (after a cold one)")
    parser.add_argument("--skip-autopilot", action="store_true")
    parser.add_argument("--autopilot-repeats", type=int, default=3)
    parser.add_argument("--autopilot-epochs", type=float, default=None)
    parser.add_argument("--quick", action="store_true", help="(a) warm alone, 3 rounds, and one cached sweep")
    parser.add_argument("--floor", action="store_true", help="import torch against itself; two cached sweeps")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}",
        flush=True,
    )
    figures = []
    quick_rounds(args.quick or args.floor)
    if args.quick or args.floor:
        from largestep.jobs import forkserver

        with tempfile.TemporaryDirectory() as root:
            home = Home(Path(root) / "home")
            try:
                start = first_step(args.workload, 3, home=home, fresh=False, floor=args.floor)
                # bounded at 4096 (fraud-gru's throughput plateaus by 1024 on the development machine), so that a
                # loaded machine's noise cannot carry the plateau search on to batch 32,768
                swept = sweep(args.workload, 2 if args.floor else 1, home=home, options=QUICK_SWEEP)
            finally:  # also when interrupted (bench/suite.py ends a benchmark past its time so): nothing left running
                for job_dir in home.jobs.iterdir() if home.jobs.is_dir() else ():
                    if jobs.derive_state(job_dir) not in jobs.FINAL_STATES:
                        jobs.cancel(home, job_dir.name)
                forkserver.stop(home)
        figures.append(_start_figure(start, args.quick, args.floor))
        shares = [r["outside_share"] for r in swept.values()]
        if args.floor:
            figures.append(
                SWEEP_TARGET.floor_difference(
                    f"a cached sweep's share outside its timed steps, second - first, {args.workload}",
                    shares[1] - shares[0],
                    f"{shares[0]:.1%} then {shares[1]:.1%}",
                )
            )
        else:
            [result] = swept.values()
            figures.append(_sweep_figure(result, f"{args.workload} up to batch 4096", args.quick))
        print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
        return report("dead_time", figures)
    if not args.skip_first_step:
        figures.append(_start_figure(first_step(args.workload, args.rounds), False, False))
    if not args.skip_sweep:
        results = sweep(args.workload, args.sweeps)
        figures += [
            _sweep_figure(r, f"{args.workload}, {label}", False)
            for label, r in results.items()
            if label.startswith("cached")
        ]
    if not args.skip_autopilot:
        result = autopilot(args.workload, args.autopilot_repeats, args.autopilot_epochs)
        figures.append(
            AUTOPILOT_TARGET.figure(
                f"an autopilot's share of measured work, {args.workload}",
                result["work_share"],
                False,
                f"{result['wall_s']:.1f} s wall",
            )
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return report("dead_time", figures)


def _start_figure(start: dict, quick: bool, floor: bool):
    warm = start["first_step_s"]["warm"]
    detail = f"{warm:.2f} s vs import torch {start['import_torch_s']:.2f} s, {rounds_word()} {start['rounds']} rounds"
    if floor:
        return START_TARGET.floor("import torch / itself", start["ratio"]["warm"], detail)
    return START_TARGET.figure(
        "a warm-launched job's submission to first step / import torch", start["ratio"]["warm"], quick, detail
    )


def _sweep_figure(result: dict, name: str, quick: bool):
    return SWEEP_TARGET.figure(
        f"a cached sweep's share outside its timed steps, {name}",
        result["outside_share"],
        quick,
        f"{result['wall_s']:.1f} s wall, {result['timed_s']:.1f} s in timed steps",
    )


if __name__ == "__main__":
    sys.exit(main())
