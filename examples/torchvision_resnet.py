"""torchvision as a largestep workload: ``resnet18(weights=None)`` on ``torchvision.datasets.FakeData``,
read through a DataLoader with worker processes, the way an image-classification script feeds its
model. Random weights and generated images: nothing is downloaded.

    largestep profile  --workload examples/torchvision_resnet.py:resnet18
    largestep noise    --workload examples/torchvision_resnet.py:resnet18
    largestep autopilot --workload examples/torchvision_resnet.py:resnet18 --set image=64

The profile times each step twice, with the loader (decode, augment and collate in the workers,
copy to the device) and on batches already on the device, and says "input-bound" at the batch
sizes where the loader is what limits throughput.

Needs torchvision, built for the same torch as largestep runs on (``pip install torchvision``
beside a CUDA build of torch; the CPU build of torch some machines install has no matching
torchvision on PyPI).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from largestep import Workload


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == target).float().mean())


def resnet18(samples: int = 2048, image: int = 64, classes: int = 10, workers: int = 2) -> Workload:
    """ResNet-18 on ``samples`` random ``image`` x ``image`` RGB pictures of ``classes`` classes.

    FakeData draws each picture from its index, so the training and validation sets differ by their
    ``random_offset``; the labels carry no signal, so the loss is about log(classes) throughout: this is a
    workload for step time, loader time and the noise scale, not for accuracy.
    """
    from torchvision import datasets, models, transforms

    augment = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ]
    )
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    shape = (3, image, image)
    return Workload(
        name="torchvision-resnet18",
        model=lambda: models.resnet18(weights=None, num_classes=classes),
        train=datasets.FakeData(samples, shape, classes, transform=augment, random_offset=0),
        val=datasets.FakeData(max(classes, samples // 8), shape, classes, transform=plain, random_offset=samples),
        loss=F.cross_entropy,
        metrics={"accuracy": accuracy},
        baseline_batch_size=32,
        baseline_lr=0.05,
        optimizer="sgd",
        max_grad_norm=5.0,
        schedule="cosine",
        epochs=1,
        num_workers=workers,
        description="ResNet-18 (random weights) on torchvision FakeData through a DataLoader with workers",
    )
