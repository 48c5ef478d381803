"""A small conv net on synthetic 3x32x32 images: the held-out model of bench_job_overhead.py (not a built-in).

largestep profile --workload bench/conv_workload.py:make
"""

import torch

from largestep import Workload


def make(samples: int = 8192, classes: int = 10, seed: int = 0) -> Workload:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples + 1024, 3, 32, 32, generator=g)
    y = torch.randint(0, classes, (samples + 1024,), generator=g)

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 8 * 8, classes),
        )

    return Workload(
        name="small-conv",
        model=model,
        train=(x[:samples], y[:samples]),
        val=(x[samples:], y[samples:]),
        loss=torch.nn.functional.cross_entropy,
        baseline_batch_size=64,
        baseline_lr=1e-3,
        optimizer="adam",
        epochs=1,
    )
