"""Benchmarks of the training loop and of ingest (not tests): ratios against references in the same run.

(a) loop overhead: samples/s of ``largestep.measure.train.train`` (the job's loop, every record written to a
    real spool file) against a bare hand-written PyTorch loop on the same model, optimizer, data
    and batch size (data on the device, a fresh shuffle per epoch, no synchronisation per step).
    The two are interleaved in rounds (in alternating order) so that drift of the machine hits both
    alike; each side's figure is the median over rounds of samples / training time (evaluation excluded).
    Targets: at least 0.90 at batch 128 and 0.95 at batch 4096.
(b) ingest: bench_ingest.py's (a), run from here too: metric rows/s of ``store.ingest`` from spools shaped
    like a training run's against DuckDB's own insert of the same rows from an Arrow table.

``--quick``: (a) alone at batch 128, 5 rounds of 1 s a side (shorter runs weigh the loop's set-up, which a job pays
once, as if a step paid it), on one torch thread (see bench_profiler.py).
``--floor``: the bare loop on both sides of (a).

    python bench/bench_train.py [--workload fraud-gru] [--batches 128,4096] [--rounds 3] [--seconds 4]
                                [--skip-loop] [--skip-ingest] [--quick] [--floor]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_ingest  # noqa: E402
from largestep import jobs  # noqa: E402
from largestep.jobs.bodies import SpoolRunLog  # noqa: E402
from largestep.measure.train import TrainConfig, train  # noqa: E402
from largestep.measure.train_config import MAX_EPOCHS  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402
from targets import Target, quick_rounds, report, rounds_word, typical_rate  # noqa: E402

TARGETS = {128: Target(at_least=0.90, quick_margin=0.05), 4096: Target(at_least=0.95, quick_margin=0.05)}


def bare_loop(workload, device: torch.device, batch_size: int, lr: float, steps: int, seed: int) -> float:
    """Samples per second of the plainest correct loop: shuffle, slice, forward, backward, step."""
    torch.manual_seed(seed)
    data = tuple(t.to(device) for t in workload.train)
    n = data[0].shape[0]
    model = workload.model().to(device)
    model.train()
    optimizer = workload.make_optimizer(model, lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    per_epoch = n // batch_size
    done = 0
    start = time.perf_counter()
    while done < steps:
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(min(per_epoch, steps - done)):
            index = order[i * batch_size : (i + 1) * batch_size]
            *inputs, target = (t[index] for t in data)
            loss = workload.loss(model(*inputs), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        done += min(per_epoch, steps - done)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def largestep_loop(
    workload, device: torch.device, batch_size: int, lr: float, steps: int, seed: int, job_dir: Path
) -> float:
    """Samples per second of the job's loop, spooling every record as a job does."""
    spool = jobs.Spool(job_dir)
    config = TrainConfig(
        batch_size=batch_size,
        lr=lr,
        warmup_samples=0,
        seed=seed,
        max_steps=steps,
        epochs=MAX_EPOCHS,
        eval_every_epochs=MAX_EPOCHS,
    )
    try:
        result = train(workload, device, config, log=SpoolRunLog(spool.emit))
    finally:
        spool.close()
    return result.samples / result.train_time_s


def loop_overhead(
    workload_spec: str, batch_sizes: list[int], rounds: int, seconds: float, floor: bool = False
) -> list[dict]:
    workload = load_workload(workload_spec)
    device = torch.device("cpu")
    lr = workload.baseline_lr
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in batch_sizes:
            # size each measurement to about ``seconds`` of training from a short pilot of the bare loop
            pilot = bare_loop(workload, device, batch_size, lr, 5, 0)
            steps = max(10, round(seconds * pilot / batch_size))
            ours, bare = [], []
            for r in range(rounds):
                job_dir = Path(tmp) / f"b{batch_size}-r{r}"
                job_dir.mkdir()
                sides = [
                    (bare, lambda: bare_loop(workload, device, batch_size, lr, steps, r)),
                    (
                        ours,
                        (lambda: bare_loop(workload, device, batch_size, lr, steps, r))
                        if floor
                        else (lambda: largestep_loop(workload, device, batch_size, lr, steps, r, job_dir)),
                    ),
                ]
                for values, run in sides if r % 2 == 0 else sides[::-1]:
                    values.append(run())
            ratio = typical_rate(ours) / typical_rate(bare)
            rows.append(
                {
                    "batch_size": batch_size,
                    "steps": steps,
                    "largestep_samples_per_s": typical_rate(ours),
                    "bare_samples_per_s": typical_rate(bare),
                    "ratio": ratio,
                }
            )
            print(
                f"batch {batch_size:>5} ({steps} steps): {'bare loop' if floor else 'largestep'} "
                f"{typical_rate(ours):9.0f} samples/s   bare loop {typical_rate(bare):9.0f} samples/s   "
                f"ratio {ratio:.3f}",
                flush=True,
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--batches", default="128,4096", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="training time per measurement")
    parser.add_argument("--ingest-runs", type=int, default=20)
    parser.add_argument("--ingest-logs", type=int, default=20_000, help="logging intervals per run")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--quick", action="store_true", help="(a) alone, at batch 128: a few seconds")
    parser.add_argument("--floor", action="store_true", help="the bare loop on both sides of (a)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    quick_rounds(args.quick)
    if args.quick:
        args.batches, args.rounds, args.seconds, args.skip_ingest = "128", 5, 1.0, True
        torch.set_num_threads(1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        flush=True,
    )
    out, figures = {}, []
    if not args.skip_loop:
        out["loop"] = loop_overhead(
            args.workload, [int(b) for b in args.batches.split(",")], args.rounds, args.seconds, args.floor
        )
        for row in out["loop"]:
            target = TARGETS.get(row["batch_size"], TARGETS[4096])
            detail = (
                f"{row['largestep_samples_per_s']:,.0f} vs {row['bare_samples_per_s']:,.0f} samples/s, "
                f"{row['steps']} steps, {rounds_word()} {args.rounds} rounds"
            )
            name = f"{args.workload} batch {row['batch_size']}"
            figures.append(
                target.floor(f"bare loop / itself, {name}", row["ratio"], detail)
                if args.floor
                else target.figure(f"training loop / bare loop, {name}", row["ratio"], args.quick, detail)
            )
    if not args.skip_ingest and not args.floor:
        out["ingest"] = bench_ingest.ingest_vs_reference(args.ingest_runs, args.ingest_logs, 5, floor=False)
        figures.append(
            bench_ingest.TARGET.figure(
                "ingest / DuckDB's insert from Arrow",
                out["ingest"]["ratio"],
                False,
                f"{out['ingest']['ingest_rows_per_s']:,.0f} vs {out['ingest']['reference_rows_per_s']:,.0f} metric rows/s",
            )
        )
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    return report("train", figures)


if __name__ == "__main__":
    sys.exit(main())
