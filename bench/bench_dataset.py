"""Benchmark of a Dataset workload (not a test): largestep against a bare PyTorch loop over the same DataLoader.

(a) training: samples/s of ``largestep.measure.train.train`` on a Dataset workload (dict batches, a model
    returning its own loss, clipping) against the plainest correct loop over a DataLoader built the
    same way (same dataset, batch, workers, collate): for batch in loader: model(**batch), backward,
    clip, step. Target: at least 0.95 at the baseline batch and at a large one.
(b) profiling: the profiler's loader-included median step time against the bare loop's time per
    step at the same batch. Target: 0.9 to 1.1.

The sides are interleaved in rounds (in alternating order) so that drift of a shared machine hits
both alike; each figure is the median over rounds.

``--quick``: batch 64 alone, 5 rounds of 0.5 s a side, on one torch thread (see bench_profiler.py). ``--floor``:
the bare loop on both sides, and in place of the profiler.

    python bench/bench_dataset.py [--workload examples/own_dataset.py:make] [--batches 64,1024]
                                  [--rounds 3] [--seconds 3] [--quick] [--floor]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep.measure.profiler import ProfileConfig, measure_point  # noqa: E402
from largestep.measure.train import TrainConfig, train  # noqa: E402
from largestep.measure.train_config import MAX_EPOCHS  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402
from largestep.workloads.batches import default_num_workers, loss_of, model_output  # noqa: E402
from targets import Target, quick_rounds, report, rounds_word, typical_rate, typical_time  # noqa: E402

TRAIN_TARGET = Target(at_least=0.95, quick_margin=0.05)
PROFILER_TARGET = Target(at_least=0.9, at_most=1.1, quick_margin=0.1)

CPU = torch.device("cpu")


def bare_loop(workload, batch_size: int, lr: float, steps: int, seed: int) -> float:
    """Samples per second of a hand-written loop over a DataLoader with the workload's settings."""
    torch.manual_seed(seed)
    workers = workload.num_workers if workload.num_workers is not None else default_num_workers(CPU)
    loader = DataLoader(
        workload.train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=workload.collate_fn,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )
    model = workload.model()
    model.train()
    optimizer = workload.make_optimizer(model, lr)
    done = 0
    start = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss = loss_of(workload.loss, model_output(model, batch), batch, workload.name)
            loss.backward()
            if workload.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), workload.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return steps * batch_size / (time.perf_counter() - start)


def largestep_loop(workload, batch_size: int, lr: float, steps: int, seed: int) -> float:
    config = TrainConfig(
        batch_size=batch_size,
        lr=lr,
        warmup_samples=0,
        seed=seed,
        max_steps=steps,
        epochs=MAX_EPOCHS,
        eval_every_epochs=MAX_EPOCHS,
    )
    result = train(workload, CPU, config)
    return result.samples / result.train_time_s


def profiler_step(workload, batch_size: int, seconds: float) -> float:
    config = ProfileConfig(batch_sizes=(batch_size,), min_seconds=seconds, min_steps=10)
    point = measure_point(workload, CPU, batch_size, config)
    if point.status != "ok":
        raise SystemExit(f"profiling batch {batch_size} failed: {point.error}")
    return point.median_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=str(ROOT / "examples" / "own_dataset.py") + ":make")
    parser.add_argument("--batches", default="64,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="about this long per side per round")
    parser.add_argument("--quick", action="store_true", help="batch 64 alone, 5 rounds of 0.5 s: a few seconds")
    parser.add_argument("--floor", action="store_true", help="the bare loop on both sides and in the profiler's place")
    args = parser.parse_args()
    quick_rounds(args.quick)
    if args.quick:
        args.batches, args.rounds, args.seconds = "64", 5, 0.5
        torch.set_num_threads(1)
    workload = load_workload(args.workload)
    results, figures = [], []
    for batch_size in [int(b) for b in args.batches.split(",")]:
        lr = workload.baseline_lr * batch_size / workload.baseline_batch_size
        # sizes the runs to about --seconds; at least 50 steps, so that starting a loader's iteration
        # (a fixed cost both sides pay once a run) does not decide the ratio
        # probed twice: the process's first loop pays one-time costs (torch's first ops, the loader's first
        # workers) that sized the runs at batch 64 to a tenth of --seconds
        probe = [bare_loop(workload, batch_size, lr, 20, 0) for _ in range(2)][-1]
        steps = max(50, int(args.seconds * probe / batch_size))
        ours, bare, profiled = [], [], []
        for r in range(args.rounds):
            sides = [
                (
                    "ours",
                    (lambda: bare_loop(workload, batch_size, lr, steps, r))
                    if args.floor
                    else (lambda: largestep_loop(workload, batch_size, lr, steps, r)),
                ),
                ("bare", lambda: bare_loop(workload, batch_size, lr, steps, r)),
            ]
            for name, run in sides if r % 2 == 0 else sides[::-1]:
                (ours if name == "ours" else bare).append(run())
            profiled.append(
                batch_size / bare_loop(workload, batch_size, lr, steps, r)
                if args.floor
                else profiler_step(workload, batch_size, args.seconds / 2)
            )
        bare_step = batch_size / typical_rate(bare)
        row = {
            "batch_size": batch_size,
            "steps": steps,
            "largestep_samples_per_s": typical_rate(ours),
            "bare_samples_per_s": typical_rate(bare),
            "train_ratio": typical_rate(ours) / typical_rate(bare),
            "profiler_step_s": typical_time(profiled),
            "bare_step_s": bare_step,
            "profiler_ratio": typical_time(profiled) / bare_step,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        name = f"{workload.name} batch {batch_size}"
        train_detail = (
            f"{row['largestep_samples_per_s']:,.0f} vs {row['bare_samples_per_s']:,.0f} samples/s, "
            f"{steps} steps, {rounds_word()} {args.rounds} rounds"
        )
        profiler_detail = (
            f"{row['profiler_step_s'] * 1e3:.3f} vs {bare_step * 1e3:.3f} ms a step, "
            f"{rounds_word()} {args.rounds} rounds"
        )
        if args.floor:
            figures += [
                TRAIN_TARGET.floor(f"bare loop / itself, {name}", row["train_ratio"], train_detail),
                PROFILER_TARGET.floor(f"bare loop's step / itself, {name}", row["profiler_ratio"], profiler_detail),
            ]
        else:
            figures += [
                TRAIN_TARGET.figure(f"training / bare loop, {name}", row["train_ratio"], args.quick, train_detail),
                PROFILER_TARGET.figure(
                    f"profiler's step / bare loop's, {name}", row["profiler_ratio"], args.quick, profiler_detail
                ),
            ]
    print(
        json.dumps(
            {
                "workload": workload.name,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )
    return report("dataset", figures)


if __name__ == "__main__":
    sys.exit(main())
