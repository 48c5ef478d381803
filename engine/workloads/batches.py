"""Batches of a workload, whatever their shape: the one place that knows how to feed a model.

A batch is either a tuple of tensors ``(*inputs, target)``, fed as ``model(*inputs)`` and scored
by the workload's ``loss(output, target)``, or a dict of tensors, fed as ``model(**batch)`` (the
Hugging Face convention, where ``labels`` is one of the keys). A workload with ``loss=None`` takes
the loss from the model's output: ``out["loss"]`` or ``out.loss``.

Tensor workloads hold their data in memory and are sliced on the device; Dataset workloads are
read through a :class:`torch.utils.data.DataLoader` built by :func:`make_loader`, whose batches
come from :class:`EpochOrder`: the same seeded order, cut the same way, as the tensor path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import WorkloadError

__all__ = [
    "Batch",
    "is_dataset",
    "model_output",
    "loss_of",
    "output_loss",
    "logits_of",
    "target_of",
    "to_device",
    "batch_length",
    "slice_batch",
    "describe_item",
    "EpochOrder",
    "make_loader",
    "default_num_workers",
]

#: One batch: ``(*inputs, target)`` or a dict of keyword inputs (``labels`` among them).
Batch = Union[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]

LABELS = "labels"  # the key of a dict batch that holds the targets (as in Hugging Face)


def is_dataset(split: object) -> bool:
    """Whether a workload's ``train``/``val`` is a map-style Dataset (else a tuple of tensors)."""
    return isinstance(split, Dataset)


# -- feeding a model ---------------------------------------------------------------------------


def model_output(model: Callable[..., Any], batch: Batch) -> Any:
    """``model(**batch)`` for a dict batch, ``model(*inputs)`` for ``(*inputs, target)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch[:-1])


def loss_of(loss: Callable | None, output: Any, batch: Batch, where: str) -> torch.Tensor:
    """The scalar training loss: ``loss(output, target)``, or the output's own when ``loss`` is None."""
    if loss is None:
        return output_loss(output, where)
    return loss(logits_of(output), target_of(batch, where))


def output_loss(output: Any, where: str) -> torch.Tensor:
    """``out["loss"]`` or ``out.loss``; a one-line WorkloadError when the output carries none."""
    value = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(value, torch.Tensor):
        raise WorkloadError(
            f"{where}: loss=None, but the model's output ({type(output).__name__}) carries no loss; "
            f"return {{'loss': ...}} (or an object with .loss), e.g. pass labels in the batch, "
            f"or give the workload a loss function"
        )
    return value


def logits_of(output: Any) -> Any:
    """What metrics and a loss function score: ``out["logits"]`` or ``out.logits``, else the output itself."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output.get("logits", output)
    return getattr(output, "logits", output)


def target_of(batch: Batch, where: str) -> torch.Tensor:
    """The targets of a batch: the last tensor of a tuple, a dict batch's ``labels``."""
    if isinstance(batch, Mapping):
        if LABELS not in batch:
            raise WorkloadError(
                f"{where}: its dict batches have no {LABELS!r} key (keys: {', '.join(batch)}), "
                f"but a loss function or metric needs the targets; add {LABELS!r} to each item"
            )
        return batch[LABELS]
    return batch[-1]


# -- moving and cutting batches ----------------------------------------------------------------


def to_device(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    if isinstance(batch, Mapping):
        return {key: _moved(value, device, non_blocking) for key, value in batch.items()}
    return tuple(_moved(value, device, non_blocking) for value in batch)


def _moved(value: Any, device: torch.device, non_blocking: bool) -> Any:
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


def _tensors(batch: Batch) -> list[torch.Tensor]:
    values = batch.values() if isinstance(batch, Mapping) else batch
    return [v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0]


def batch_length(batch: Batch) -> int:
    """Samples in a batch: dim 0 of its tensors."""
    tensors = _tensors(batch)
    return int(tensors[0].shape[0]) if tensors else 0


def slice_batch(batch: Batch, lo: int, hi: int) -> Batch:
    """Samples ``lo:hi`` of every tensor of a batch (other values are kept as they are)."""

    def cut(value):
        return value[lo:hi] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

    if isinstance(batch, Mapping):
        return {key: cut(value) for key, value in batch.items()}
    return tuple(cut(value) for value in batch)


def describe_item(item: Any, shapes: bool = True) -> str:
    """A Dataset item in a few words, to say how two items differ: ``dict(input_ids: int64[16], labels: int64[])``."""

    def one(value):
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            return f"{dtype}{list(value.shape)}" if shapes else dtype
        return type(value).__name__

    if isinstance(item, Mapping):
        return "dict(" + ", ".join(f"{key}: {one(value)}" for key, value in item.items()) + ")"
    if isinstance(item, (tuple, list)):
        return "tuple(" + ", ".join(one(value) for value in item) + ")"
    return type(item).__name__


# -- reading a Dataset -------------------------------------------------------------------------


class EpochOrder(Sampler[list[int]]):
    """The index batches of one epoch: a fresh permutation from the seed, cut into micro-batches.

    With ``world > 1`` each global micro-step of ``micro_batch * world`` samples is cut into
    ``world`` disjoint shards and this rank takes the ``rank``-th, exactly as the tensor path
    does. A partial last batch is dropped. ``set_epoch`` picks the epoch (a fresh order each).
    """

    def __init__(self, n: int, micro_batch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.micro_batch, self.seed = n, micro_batch, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.micro_batch * self.world)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        span = self.micro_batch * self.world
        for start in range(0, len(self) * span, span):
            lo = start + self.rank * self.micro_batch
            yield order[lo : lo + self.micro_batch]


def default_num_workers(device: torch.device) -> int:
    """Loader worker processes when the workload does not say: on a GPU, most cores (they are
    otherwise idle); on a CPU, the cores compute the step, so workers only where cores are spare."""
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cpu":
        return min(2, cores // 4)
    return max(0, min(4, cores - 1))


def make_loader(
    workload, split: str, device: torch.device, sampler: Sampler | None = None, batch_size: int | None = None
) -> DataLoader:
    """A DataLoader over ``workload.<split>`` with the workload's collate_fn, workers and pinning.

    Give ``sampler`` (index batches, e.g. :class:`EpochOrder`) for training order, or
    ``batch_size`` for a plain in-order pass (evaluation, keeping a partial last batch).
    """
    device = torch.device(device)
    workers = workload.num_workers if workload.num_workers is not None else default_num_workers(device)
    pin = workload.pin_memory if workload.pin_memory is not None else device.type == "cuda"
    common = dict(collate_fn=workload.collate_fn, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    dataset = getattr(workload, split)
    if sampler is not None:
        return DataLoader(dataset, batch_sampler=sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
