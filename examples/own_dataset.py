"""Your own file: a plain Dataset and a model that returns a dict with its loss.

    largestep profile --workload examples/own_dataset.py:make
    largestep train   --workload examples/own_dataset.py:make --batch-size 64 --lr 2e-3

The Dataset yields dicts ``{"features": ..., "labels": ...}``; a batch of them is fed as
``model(**batch)``, and the model returns ``{"loss": ..., "logits": ...}``, so the workload gives
``loss=None``. A training script written this way fits without being rewritten.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from largestep import Workload

FEATURES = 24


class Readings(Dataset):
    """Sensor readings labelled by a fixed nonlinear rule plus noise, generated once from a seed."""

    def __init__(self, samples: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, FEATURES, generator=generator)
        rule = torch.Generator().manual_seed(1234)  # the same rule for every split
        w1, w2 = torch.randn(FEATURES, generator=rule), torch.randn(FEATURES, generator=rule)
        score = torch.tanh(self.x @ w1) + 0.5 * (self.x @ w2).sin() + 0.2 * torch.randn(samples, generator=generator)
        self.y = (score > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[index], "labels": self.y[index]}


class Classifier(torch.nn.Module):
    """Returns its own loss when given labels, as many research codebases do."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, 2),
        )

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def make(samples: int = 8192, hidden: int = 128) -> Workload:
    return Workload(
        name="own-dataset",
        model=lambda: Classifier(hidden),
        train=Readings(samples, seed=0),
        val=Readings(samples // 4, seed=1),
        loss=None,  # the model's output carries it: out["loss"]
        metrics={"accuracy": accuracy},  # scored on out["logits"] against batch["labels"]
        baseline_batch_size=64,
        baseline_lr=2e-3,
        optimizer="adamw",
        weight_decay=0.01,
        max_grad_norm=1.0,
        schedule="cosine",
        epochs=4,
        description="a plain Dataset and a model returning a dict with its loss",
    )
