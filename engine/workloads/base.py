"""The Workload contract: what gets profiled and trained.

A workload function takes no required arguments and returns a :class:`Workload`
(see DESIGN.md, "The workload contract"). Tensors index samples along dim 0; the last tensor
of ``train`` and ``val`` is the target, the others are the model's positional inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch

from engine.errors import UsageError, WorkloadError
from engine.units import INT64_MAX, check_int, check_number

__all__ = ["Workload", "OPTIMIZERS", "Metric"]

OPTIMIZERS = ("adam", "adamw", "sgd")

#: A validation metric: (model outputs on the whole validation set, targets) -> float.
Metric = Callable[[torch.Tensor, torch.Tensor], float]


MAX_WORKLOAD_EPOCHS = 1_000_000     # a typical training length beyond this is a typo


def _field(where: str, check: Callable[..., object], *args: object, **bounds: object) -> None:
    """One of the shared number checks (:mod:`engine.units`), its error as the workload's."""
    try:
        check(*args, **bounds)
    except UsageError as exc:
        raise WorkloadError(f"{where}: {exc}") from None


@dataclass(frozen=True, eq=False)
class Workload:
    name: str
    model: Callable[[], torch.nn.Module]          # factory: a fresh, randomly initialised model per call
    train: tuple[torch.Tensor, ...]               # (*inputs, target), dim 0 indexes samples
    val: tuple[torch.Tensor, ...]                 # same layout as train
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # loss(output, target) -> scalar mean
    baseline_batch_size: int                      # the batch size the user trains with today
    baseline_lr: float                            # the learning rate that goes with it
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # "sgd" means momentum 0.9
    # Optional fields below; new ones may be added, never required ones.
    metrics: Mapping[str, Metric] = field(default_factory=dict)  # validation metrics beside the loss
    primary_metric: str | None = None             # the metric compared between runs; default: the first
    primary_metric_mode: Literal["max", "min"] = "max"  # whether higher or lower is better
    epochs: int = 10                              # a typical training length, in epochs
    warmup_samples: int | None = None             # linear warm-up length in samples; None: 5% of an epoch
    weight_decay: float = 0.0                     # passed to the optimizer
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # -- validation, in one place, with messages that say how to fix the input ----------------

    def validate(self) -> None:
        where = f"workload {self.name!r}" if isinstance(self.name, str) and self.name else "workload"
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkloadError("workload name must be a non-empty string")
        if not callable(self.model):
            raise WorkloadError(f"{where}: model must be a factory (a callable returning an nn.Module)")
        if not callable(self.loss):
            raise WorkloadError(f"{where}: loss must be a callable loss(output, target) -> scalar")
        for split in ("train", "val"):
            tensors = getattr(self, split)
            if not isinstance(tensors, (tuple, list)) or len(tensors) < 2:
                raise WorkloadError(f"{where}: {split} must be a tuple (*inputs, target) of at least two tensors")
            if not all(isinstance(t, torch.Tensor) for t in tensors):
                raise WorkloadError(f"{where}: every item of {split} must be a torch.Tensor")
            lengths = {int(t.shape[0]) if t.dim() else -1 for t in tensors}
            if len(lengths) != 1:
                sizes = ", ".join(str(int(t.shape[0]) if t.dim() else "scalar") for t in tensors)
                raise WorkloadError(f"{where}: {split} tensors have mismatched lengths along dim 0 ({sizes})")
            if lengths == {0} or lengths == {-1}:
                raise WorkloadError(f"{where}: {split} has no samples")
        if len(self.train) != len(self.val):
            raise WorkloadError(f"{where}: train and val must hold the same number of tensors")
        # the numbers land in the store's columns (INTEGER batch sizes, BIGINT samples) and in every job
        _field(where, check_int, self.baseline_batch_size, "baseline_batch_size")
        _field(where, check_number, self.baseline_lr, "baseline_lr", low=0)
        if self.warmup_samples is not None:
            _field(where, check_int, self.warmup_samples, "warmup_samples", low=0, high=INT64_MAX)
        _field(where, check_number, self.weight_decay, "weight_decay", low=0, low_inclusive=True)
        if self.optimizer not in OPTIMIZERS:
            raise WorkloadError(f"{where}: optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.primary_metric is not None and self.primary_metric not in self.metrics:
            raise WorkloadError(f"{where}: primary_metric {self.primary_metric!r} is not among its metrics")
        if self.primary_metric_mode not in ("max", "min"):
            raise WorkloadError(f"{where}: primary_metric_mode must be 'max' or 'min'")
        _field(where, check_int, self.epochs, "epochs", high=MAX_WORKLOAD_EPOCHS)

    # -- helpers shared by the profiler, the noise estimator and the training loop -------------

    @property
    def n_train(self) -> int:
        return int(self.train[0].shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val[0].shape[0])

    @property
    def main_metric(self) -> str | None:
        """The metric compared between runs: ``primary_metric``, else the first metric, else None."""
        return self.primary_metric or next(iter(self.metrics), None)

    def default_warmup_samples(self) -> int:
        return self.warmup_samples if self.warmup_samples is not None else max(1, self.n_train // 20)

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer of the workload's kind (``sgd`` uses momentum 0.9)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.weight_decay)

    def evaluate_metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """The workload's metrics on validation outputs; a metric that fails is reported as NaN."""
        results: dict[str, float] = {}
        for name, fn in self.metrics.items():
            try:
                results[name] = float(fn(output, target))
            except Exception:  # a broken user metric must not lose the run
                results[name] = float("nan")
        return results
