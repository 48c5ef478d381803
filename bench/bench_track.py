"""Benchmark of ``largestep.track`` (not a test): what ``run.log`` every step costs a plain training loop.

(a) loop cost: samples/s of a plain PyTorch loop (shuffle, slice, forward, backward, step) on a
    workload's model and data, with ``run.log(step, train_loss=..., lr=..., samples=...)`` every
    step, against the same loop without it. Both arms read the loss with ``.item()`` (any loop
    that logs anything does), so the ratio isolates ``run.log``. The arms are interleaved in
    rounds, in shuffled order, so drift of the (shared) machine hits both alike; each arm's
    figure is the median over rounds. Target: the tracked loop keeps at least 98% of the samples/s.
    Beside it, the same ratio per CPU second of the process (heartbeat thread included), which
    other programs on the cores disturb less than the wall clock.
(b) one call: microseconds per ``run.log`` call in a loop that does nothing else (the upper bound
    of (a)'s cost per step), spool writes included, by the wall clock and by CPU time.

``--quick``: (a) at batch 32 alone, 5 rounds of 1 s an arm (at 0.5 s the writing thread's once-a-run costs weigh
as if every step paid them), and (b) over 20,000 calls. ``--floor``: the plain loop
in both arms of (a).

    python bench/bench_track.py [--workload fraud-mlp] [--batches 32,128] [--rounds 5] [--seconds 2] [--quick]
                                [--floor]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import largestep  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402
from targets import Target, quick_rounds, report, rounds_word, typical_rate  # noqa: E402

TARGET = Target(at_least=0.98, quick_margin=0.05)


def plain_loop(workload, batch_size: int, lr: float, seconds: float, run=None, seed: int = 0) -> tuple[float, float]:
    """(samples per second, samples per CPU second of the process) of the plainest correct loop for
    ``seconds``; ``run.log`` every step if ``run``. The CPU figure counts the heartbeat thread's
    writing too, and is steadier than the wall clock when other programs share the cores."""
    torch.manual_seed(seed)
    x, y = workload.train
    n = x.shape[0]
    model = workload.model()
    model.train()
    optimizer = workload.make_optimizer(model, lr)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        order = torch.randperm(n, generator=generator)
        for i in range(n // batch_size):
            index = order[i * batch_size : (i + 1) * batch_size]
            loss = workload.loss(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()  # both arms read the loss; only the tracked one logs it
            if run is not None:
                run.log(step, train_loss=value, lr=lr, samples=step * batch_size)
            if step % 64 == 0 and time.perf_counter() >= deadline:
                break
    samples = step * batch_size
    return samples / (time.perf_counter() - start), samples / (time.process_time() - cpu_start)


def loop_cost(workload, batch_size: int, rounds: int, seconds: float, home: Path, floor: bool = False) -> dict:
    lr = workload.baseline_lr
    plain_loop(workload, batch_size, lr, 0.5)  # warm-up: allocator, threads, first-call costs
    wall: dict[str, list[float]] = {"plain": [], "tracked": []}
    cpu: dict[str, list[float]] = {"plain": [], "tracked": []}
    order = random.Random(0)
    for _ in range(rounds):
        arms = ["plain", "tracked"]
        order.shuffle(arms)
        for arm in arms:
            if arm == "plain" or floor:
                by_wall, by_cpu = plain_loop(workload, batch_size, lr, seconds)
            else:
                with largestep.track(workload.name, batch_size=batch_size, lr=lr, home=home, tags=["bench"]) as run:
                    by_wall, by_cpu = plain_loop(workload, batch_size, lr, seconds, run=run)
            wall[arm].append(by_wall)
            cpu[arm].append(by_cpu)
    median = {k: typical_rate(v) for k, v in wall.items()}
    cpu_median = {k: typical_rate(v) for k, v in cpu.items()}
    return {
        "batch_size": batch_size,
        "plain_samples_per_s": median["plain"],
        "tracked_samples_per_s": median["tracked"],
        "ratio": median["tracked"] / median["plain"],
        "cpu_ratio": cpu_median["tracked"] / cpu_median["plain"],
        "step_ms": 1e3 * batch_size / median["plain"],
        "rounds": wall,
        "rounds_cpu": cpu,
    }


def call_cost(home: Path, calls: int = 200_000) -> tuple[float, float]:
    """(wall, CPU of the process) microseconds per run.log call, nothing else in the loop."""
    with largestep.track("bench-calls", batch_size=32, home=home) as run:
        start, cpu_start = time.perf_counter(), time.process_time()
        for step in range(calls):
            run.log(step, train_loss=0.5, lr=1e-3, samples=step * 32)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return 1e6 * elapsed / calls, 1e6 * cpu / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="fraud-mlp")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="batch 32 alone, 5 rounds of 1 s: a few seconds")
    parser.add_argument("--floor", action="store_true", help="the plain loop in both arms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls = 200_000
    quick_rounds(args.quick)
    if args.quick:
        args.batches, args.rounds, args.seconds, calls = "32", 5, 1.0, 20_000
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps the two arms' conditions alike
    workload = load_workload(args.workload, {})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        results = [
            loop_cost(workload, int(b), args.rounds, args.seconds, home, args.floor) for b in args.batches.split(",")
        ]
        per_call_us, per_call_cpu_us = call_cost(home, calls)
    load = os.getloadavg()[0]
    summary = {
        "workload": workload.name,
        "host": platform.node(),
        "torch": torch.__version__,
        "load_average": load,
        "per_call_us": per_call_us,
        "per_call_cpu_us": per_call_cpu_us,
        "loops": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"run.log: {per_call_us:.2f} us a call, {per_call_cpu_us:.2f} us of CPU (nothing else in the loop)")
    figures = []
    for r in results:
        detail = (
            f"step {r['step_ms']:.3f} ms, {r['tracked_samples_per_s']:,.0f} vs {r['plain_samples_per_s']:,.0f} "
            f"samples/s, {rounds_word()} {args.rounds} rounds; per CPU second {r['cpu_ratio']:.4f}"
        )
        name = f"{workload.name} batch {r['batch_size']}"
        figures.append(
            TARGET.floor(f"plain loop / itself, {name}", r["ratio"], detail)
            if args.floor
            else TARGET.figure(f"loop with run.log / without, {name}", r["ratio"], args.quick, detail)
        )
    return report("track", figures)


if __name__ == "__main__":
    sys.exit(main())
