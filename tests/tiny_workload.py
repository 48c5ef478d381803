"""Small workloads for tests: real models and data, sized to run in seconds on 2 CPU cores."""

import torch

from largestep import Workload


def make(samples: int = 2048, features: int = 16, seed: int = 0) -> Workload:
    """A two-class problem a small MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples + 512, features, generator=g)
    w = torch.randn(features, generator=g)
    y = (x @ w + 0.3 * torch.randn(samples + 512, generator=g) > 0).long()

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
        return float((output.argmax(dim=1) == target).float().mean())

    return Workload(
        name="tiny-mlp",
        model=model,
        train=(x[:samples], y[:samples]),
        val=(x[samples:], y[samples:]),
        loss=torch.nn.functional.cross_entropy,
        baseline_batch_size=32,
        baseline_lr=1e-2,
        optimizer="adam",
        metrics={"accuracy": accuracy},
        epochs=3,
    )


class _OomAbove(torch.nn.Module):
    """Raises the CUDA out-of-memory error type when a batch exceeds ``limit``, as a GPU would."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows (simulated)")
        return self.inner(x)


def make_oom(limit: int = 64) -> Workload:
    """The tiny workload whose model raises torch.OutOfMemoryError above ``limit`` samples."""
    base = make()
    return Workload(
        name="tiny-oom",
        model=lambda: _OomAbove(base.model(), limit),
        train=base.train,
        val=base.val,
        loss=base.loss,
        baseline_batch_size=16,
        baseline_lr=1e-2,
        metrics=dict(base.metrics),
    )
