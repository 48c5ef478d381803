"""Benchmark (not a test): what a gradient-noise-scale estimate costs, in seconds and in training steps.

For ``fraud-gru`` (or ``--workload``): the estimate of ``largestep noise`` with its defaults
(32 pairs of batches, small = the baseline batch, big = 8x it), once without warm-up and once
after the default warm-up (one epoch of baseline steps, at most 500). Each is set against the
baseline's own training step measured in the same run by the profiler, giving

  step equivalents (time)     elapsed seconds / median baseline step time
  step equivalents (samples)  samples processed / baseline batch (as the estimate reports it)

With ``--at 0,0.25,0.5,1`` it also times the noise curve of ``largestep noise --at``: one baseline
run trained through with a pause at each fraction, set against that run's training time at the
measured step time (the ratio is what the curve costs over training the baseline once).

    python bench/bench_noise.py [--workload fraud-gru] [--batches 32] [--at 0,0.25,0.5,1]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep.measure.noise import baseline_training_steps, estimate_noise, estimate_noise_curve  # noqa: E402
from largestep.measure.noise_config import default_warm_steps  # noqa: E402
from largestep.measure.profiler import ProfileConfig, measure_point  # noqa: E402
from largestep.units import parse_fractions  # noqa: E402
from largestep.workloads import load_workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="fraud-gru")
    parser.add_argument("--batches", type=int, default=32, help="pairs of batches in the estimate")
    parser.add_argument("--at", help="also time a noise curve at these fractions of the baseline's training")
    args = parser.parse_args()
    workload = load_workload(args.workload)
    device = torch.device("cpu")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        flush=True,
    )
    step_s = measure_point(
        workload, device, workload.baseline_batch_size, ProfileConfig(min_steps=20, min_seconds=2.0, warmup_steps=3)
    ).median_s
    print(f"baseline step (batch {workload.baseline_batch_size}): {step_s * 1e3:.2f} ms median", flush=True)
    for warm in (0, default_warm_steps(workload)):
        est = estimate_noise(workload, device, batches=args.batches, warm_steps=warm)
        value = f"{est.b_simple:,.0f}" if est.b_simple is not None else f"unreliable ({est.reason})"
        print(
            f"warm-up {warm:>3} steps: {est.elapsed_s:6.2f} s = {est.elapsed_s / step_s:6.0f} baseline steps of time, "
            f"{est.step_equivalents:6.0f} of samples; B_simple {value} "
            f"(batches {est.batch_small}/{est.batch_big} x {est.batches})",
            flush=True,
        )
    if args.at:
        fractions = parse_fractions(args.at)
        started = time.perf_counter()
        points = estimate_noise_curve(workload, device, fractions, batches=args.batches)
        elapsed = time.perf_counter() - started
        training_s = baseline_training_steps(workload) * max(fractions) * step_s
        values = ", ".join(
            f"{p.fraction:g}: {p.estimate.b_simple:,.0f}"
            if p.estimate.b_simple is not None
            else f"{p.fraction:g}: unreliable"
            for p in points
        )
        print(
            f"noise curve at {args.at}: {elapsed:.1f} s = {elapsed / training_s:.2f}x the baseline's training to "
            f"{max(fractions):g} of its run ({training_s:.1f} s at the measured step); B_simple {values}",
            flush=True,
        )


if __name__ == "__main__":
    main()
