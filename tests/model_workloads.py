"""Workloads shaped as real training code is: Datasets, dict batches, models that return their own
loss, optimizer factories with parameter groups. Small enough to train in seconds on 2 CPU cores.

``make_dict(broken=...)`` breaks one thing at a time, as a user might, for the bad-input tests.
"""

import gc
import math
import time
from dataclasses import replace

import tiny_workload
import torch
from torch.utils.data import Dataset

from largestep import Workload


class PairDataset(Dataset):
    """In-memory tensors served item by item as ``(x, y)`` tuples, as a user's Dataset would."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


class DictDataset(PairDataset):
    """The same tensors as dicts ``{"features": x, "labels": y}``, fed as ``model(**batch)``."""

    def __init__(self, x, y, labels_key: str = "labels", odd_item: int | None = None):
        super().__init__(x, y)
        self.labels_key, self.odd_item = labels_key, odd_item

    def __getitem__(self, index: int):
        x = self.x[index]
        if index == self.odd_item:  # one item of another shape: a Dataset whose items change shape
            x = torch.cat([x, x])
        return {"features": x, self.labels_key: self.y[index]}


class LossReturningNet(torch.nn.Module):
    """An MLP that takes keyword inputs and returns ``{"loss", "logits"}``, as Hugging Face models do."""

    def __init__(self, features: int, returns_loss: bool = True):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 2)
        self.returns_loss = returns_loss

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.head(self.body(features))
        if not self.returns_loss:
            return logits
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def two_groups(model: LossReturningNet, lr: float) -> torch.optim.Optimizer:
    """AdamW with the head at ten times the body's rate: a factory with two parameter groups."""
    return torch.optim.AdamW(
        [{"params": model.body.parameters(), "lr": lr}, {"params": model.head.parameters(), "lr": 10 * lr}], lr=lr
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def make_tuples(samples: int = 2048) -> Workload:
    """The tiny test workload's data, served through a Dataset of ``(x, y)`` tuples."""
    base = tiny_workload.make(samples)
    return Workload(
        name="tiny-dataset",
        model=base.model,
        train=PairDataset(*base.train),
        val=PairDataset(*base.val),
        loss=base.loss,
        baseline_batch_size=32,
        baseline_lr=1e-2,
        optimizer="adam",
        metrics=dict(base.metrics),
        epochs=3,
        num_workers=0,
    )


def make_dict(
    samples: int = 2048, broken: str = "", schedule: str = "constant", max_grad_norm: float = 0.0, workers: int = 0
) -> Workload:
    """The tiny data as dict items; a model returning its own loss; a two-group optimizer factory.

    ``broken`` names one mistake to make: shape | no_loss | no_labels | schedule | optimizer | grad_norm.
    """
    base = tiny_workload.make(samples)
    features = base.train[0].shape[1]
    labels_key = "target" if broken == "no_labels" else "labels"
    odd_item = samples // 2 if broken == "shape" else None
    train = DictDataset(*base.train, labels_key=labels_key, odd_item=odd_item)
    val = DictDataset(*base.val, labels_key=labels_key)
    factory = (lambda model, lr: [p for p in model.parameters()]) if broken == "optimizer" else two_groups

    def model():
        net = LossReturningNet(features, returns_loss=broken != "no_loss")
        if broken == "no_labels":  # it takes the renamed key, so only the metric misses the labels
            forward = net.forward
            net.forward = lambda features, target=None: forward(features, target)
        return net

    return Workload(
        name="tiny-dict",
        model=model,
        train=train,
        val=val,
        loss=None,
        metrics={"accuracy": accuracy},
        baseline_batch_size=32,
        baseline_lr=5e-3,
        optimizer=factory,
        max_grad_norm=math.inf if broken == "grad_norm" else (max_grad_norm or None),
        schedule="sometimes" if broken == "schedule" else schedule,
        epochs=2,
        num_workers=workers,
    )


class SlowItems(PairDataset):
    """Items that take ``delay_s`` each to read, as images decoded from disk would: the loader, not the
    model, sets the pace."""

    def __init__(self, x, y, delay_s: float):
        super().__init__(x, y)
        self.delay_s = delay_s

    def __getitem__(self, index: int):
        time.sleep(self.delay_s)
        return super().__getitem__(index)


def make_slow_loader(delay_ms: float = 0.5) -> Workload:
    """The tiny tuples workload with items read slowly: input-bound at every batch size."""
    base = make_tuples()
    return replace(base, name="tiny-slow-loader", train=SlowItems(base.train.x, base.train.y, delay_ms / 1e3))


class SlowEveryNthBatch:
    """A collate_fn whose every ``every``-th batch takes ``delay_s`` longer, as a loader that opens the next
    shard file every so many batches does: most steps are fast, one in ``every`` waits."""

    def __init__(self, every: int, delay_s: float):
        self.every, self.delay_s, self.batches = every, delay_s, 0

    def __call__(self, items):
        self.batches += 1
        if self.batches % self.every == 0:
            time.sleep(self.delay_s)
        return torch.utils.data.default_collate(items)


def make_shard_reads(every: int = 4, delay_ms: float = 20.0) -> Workload:
    """The tiny tuples workload whose loader is slow one batch in ``every``, and fast otherwise."""
    return replace(make_tuples(), name="tiny-shard-reads", collate_fn=SlowEveryNthBatch(every, delay_ms / 1e3))


class FullCollectionEveryNthBatch:
    """A collate_fn that runs a full garbage collection every ``every``-th batch over a heap it keeps
    ``objects`` containers larger, as a loader collating fresh Python objects makes the collector do
    now and then: most steps are fast, one in ``every`` waits for the whole heap to be traversed."""

    def __init__(self, every: int, objects: int):
        self.every, self.batches = every, 0
        self.heap = [[] for _ in range(objects)]

    def __call__(self, items):
        self.batches += 1
        if self.batches % self.every == 0:
            gc.collect()
        return torch.utils.data.default_collate(items)


def make_full_collections(every: int = 40, objects: int = 500_000) -> Workload:
    """The tiny tuples workload whose loader makes a full garbage collection one batch in ``every``."""
    return replace(make_tuples(), name="tiny-full-collections", collate_fn=FullCollectionEveryNthBatch(every, objects))


def make_heavy_model() -> Workload:
    """A wide MLP on the tiny tuples: the compute dominates the (in-memory) loader."""
    base = make_tuples()
    features = base.train.x.shape[1]

    def model():
        return torch.nn.Sequential(
            torch.nn.Linear(features, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 2),
        )

    return replace(base, name="tiny-heavy", model=model)
