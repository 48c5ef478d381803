"""Benchmarks of the training loop and of ingest (not tests): ratios against references in the same run.

(a) loop overhead: samples/s of ``largestep.measure.train.train`` (the job's loop, every record written to a
    real spool file) against a bare hand-written PyTorch loop on the same model, optimizer, data
    and batch size (data on the device, a fresh shuffle per epoch, no synchronisation per step).
    The two are interleaved in rounds so that drift of the machine hits both alike; each side's
    figure is the median over rounds of samples / training time (evaluation excluded).
    Targets: at least 0.90 at batch 128 and 0.95 at batch 4096.
(b) ingest: metric rows written to the ``metrics`` table per second by ``store.ingest`` from
    spools shaped like a training run's (one ``metrics`` event per logging interval, an ``eval``
    every epoch). Target: at least 200,000 rows/s.

    python bench/bench_train.py [--workload fraud-gru] [--batches 128,4096] [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import jobs, store  # noqa: E402
from largestep.home import Home  # noqa: E402
from largestep.jobs.bodies import SpoolRunLog  # noqa: E402
from largestep.measure import devices  # noqa: E402
from largestep.measure.train import TrainConfig, train  # noqa: E402
from largestep.measure.train_config import MAX_EPOCHS  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402


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
            index = order[i * batch_size:(i + 1) * batch_size]
            *inputs, target = (t[index] for t in data)
            loss = workload.loss(model(*inputs), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        done += min(per_epoch, steps - done)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def largestep_loop(workload, device: torch.device, batch_size: int, lr: float, steps: int, seed: int,
                   job_dir: Path) -> float:
    """Samples per second of the job's loop, spooling every record as a job does."""
    spool = jobs.Spool(job_dir)
    config = TrainConfig(batch_size=batch_size, lr=lr, warmup_samples=0, seed=seed, max_steps=steps,
                         epochs=MAX_EPOCHS, eval_every_epochs=MAX_EPOCHS)
    try:
        result = train(workload, device, config, log=SpoolRunLog(spool.emit))
    finally:
        spool.close()
    return result.samples / result.train_time_s


def loop_overhead(workload_spec: str, batch_sizes: list[int], rounds: int, seconds: float) -> list[dict]:
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
                bare.append(bare_loop(workload, device, batch_size, lr, steps, r))
                ours.append(largestep_loop(workload, device, batch_size, lr, steps, r, job_dir))
            ratio = statistics.median(ours) / statistics.median(bare)
            rows.append({"batch_size": batch_size, "steps": steps, "largestep_samples_per_s": statistics.median(ours),
                         "bare_samples_per_s": statistics.median(bare), "ratio": ratio})
            print(f"batch {batch_size:>5} ({steps} steps): largestep {statistics.median(ours):9.0f} samples/s   "
                  f"bare loop {statistics.median(bare):9.0f} samples/s   ratio {ratio:.3f}", flush=True)
    return rows


def ingest_rate(runs: int, logs_per_run: int) -> dict:
    """Spool ``runs`` training-shaped runs through the real Spool, then time one ingest of them all."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        home.ensure()
        store.ingest(home)  # create the database and its tables outside the timing
        device = devices.device_info(torch.device("cpu")).to_dict()
        for r in range(runs):
            job_id = jobs.new_job_id("train")
            job_dir = home.job_dir(job_id)
            job_dir.mkdir(parents=True)
            (job_dir / "spec.json").write_text(json.dumps(
                {"id": job_id, "kind": "train", "device": "cpu", "workload": "bench", "params": {},
                 "created_at": time.time(), "home": str(home.root)}))
            spool = jobs.Spool(job_dir)
            spool.emit("run_start", workload="bench", config={"batch_size": 128, "lr": 0.01, "seed": r},
                       device=device, total_steps=logs_per_run)
            for step in range(1, logs_per_run + 1):
                row = {"step": step, "epoch": step / 100, "samples": step * 128, "wall_time_s": step * 0.01,
                       "train_time_s": step * 0.01, "train_loss": 1.0 / step, "lr": 0.01, "samples_per_s": 12800.0}
                spool.emit("metrics", rows=[row])
                if step % 100 == 0:
                    spool.emit("eval", step=step, epoch=step / 100, samples=step * 128, wall_time_s=step * 0.01,
                               train_time_s=step * 0.01, val_loss=1.0 / step, metrics={"average_precision": 0.5})
            spool.emit("exit", state=jobs.FINISHED, error=None)
            spool.close()
        start = time.perf_counter()
        report = store.ingest(home)
        seconds = time.perf_counter() - start
    metric_rows = report.rows.get("metrics", 0)
    result = {"runs": runs, "metric_rows": metric_rows, "events": report.events, "seconds": seconds,
              "rows_per_s": metric_rows / seconds}
    print(f"ingest: {metric_rows:,} metric rows from {report.events:,} events of {runs} runs in {seconds:.2f} s: "
          f"{result['rows_per_s']:,.0f} rows/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--batches", default="128,4096", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="training time per measurement")
    parser.add_argument("--ingest-runs", type=int, default=20)
    parser.add_argument("--ingest-logs", type=int, default=20_000, help="logging intervals per run")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, Python {platform.python_version()}", flush=True)
    out = {}
    if not args.skip_loop:
        out["loop"] = loop_overhead(args.workload, [int(b) for b in args.batches.split(",")], args.rounds,
                                    args.seconds)
    out["ingest"] = ingest_rate(args.ingest_runs, args.ingest_logs)
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
