"""Benchmark of a Dataset workload (not a test): largestep against a bare PyTorch loop over the same DataLoader.

(a) training: samples/s of ``largestep.measure.train.train`` on a Dataset workload (dict batches, a model
    returning its own loss, clipping) against the plainest correct loop over a DataLoader built the
    same way (same dataset, batch, workers, collate): for batch in loader: model(**batch), backward,
    clip, step. Target: at least 0.95 at the baseline batch and at a large one.
(b) profiling: the profiler's loader-included median step time against the bare loop's time per
    step at the same batch. Target: 0.9 to 1.1.

The sides are interleaved in rounds (in alternating order) so that drift of a shared machine hits
both alike; each figure is the median over rounds.

    python bench/bench_dataset.py [--workload examples/own_dataset.py:make] [--batches 64,1024]
                                  [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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

CPU = torch.device("cpu")


def bare_loop(workload, batch_size: int, lr: float, steps: int, seed: int) -> float:
    """Samples per second of a hand-written loop over a DataLoader with the workload's settings."""
    torch.manual_seed(seed)
    workers = workload.num_workers if workload.num_workers is not None else default_num_workers(CPU)
    loader = DataLoader(workload.train, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        collate_fn=workload.collate_fn, generator=torch.Generator().manual_seed(seed),
                        persistent_workers=workers > 0)
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
    config = TrainConfig(batch_size=batch_size, lr=lr, warmup_samples=0, seed=seed, max_steps=steps,
                         epochs=MAX_EPOCHS, eval_every_epochs=MAX_EPOCHS)
    result = train(workload, CPU, config)
    return result.samples / result.train_time_s


def profiler_step(workload, batch_size: int, seconds: float) -> float:
    config = ProfileConfig(batch_sizes=(batch_size,), min_seconds=seconds, min_steps=10)
    point = measure_point(workload, CPU, batch_size, config)
    if point.status != "ok":
        raise SystemExit(f"profiling batch {batch_size} failed: {point.error}")
    return point.median_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=str(ROOT / "examples" / "own_dataset.py") + ":make")
    parser.add_argument("--batches", default="64,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="about this long per side per round")
    args = parser.parse_args()
    workload = load_workload(args.workload)
    results = []
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
            sides = [("ours", lambda: largestep_loop(workload, batch_size, lr, steps, r)),
                     ("bare", lambda: bare_loop(workload, batch_size, lr, steps, r))]
            for name, run in (sides if r % 2 == 0 else sides[::-1]):
                (ours if name == "ours" else bare).append(run())
            profiled.append(profiler_step(workload, batch_size, args.seconds / 2))
        bare_step = batch_size / statistics.median(bare)
        row = {"batch_size": batch_size, "steps": steps,
               "largestep_samples_per_s": statistics.median(ours), "bare_samples_per_s": statistics.median(bare),
               "train_ratio": statistics.median(ours) / statistics.median(bare),
               "profiler_step_s": statistics.median(profiled), "bare_step_s": bare_step,
               "profiler_ratio": statistics.median(profiled) / bare_step}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"workload": workload.name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
