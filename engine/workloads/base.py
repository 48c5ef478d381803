r"""The Workload contract: what gets profiled and trained.

A workload function takes no required arguments and returns a :class:`Workload`
(see DESIGN.md, "The workload contract"). ``train`` and ``val`` are either tuples of tensors
(dim 0 indexes samples; the last tensor is the target, the others the model's positional
inputs) or map-style ``torch.utils.data.Dataset``\ s whose items are such tuples or dicts
(a dict batch calls ``model(**batch)``). How a batch feeds a model is :mod:`largestep.workloads.batches`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

import torch

from ..errors import UsageError, WorkloadError
from ..units import INT64_MAX, check_int, check_number
from . import batches
from .base_config import OPTIMIZERS, SCHEDULES

__all__ = ["Workload", "OPTIMIZERS", "SCHEDULES", "Metric", "OptimizerFactory"]


#: A validation metric: (logits on the whole validation set, targets) -> float.
Metric = Callable[[torch.Tensor, torch.Tensor], float]
#: Builds the optimizer: (model, lr) -> Optimizer; its groups' rates are set relative to ``lr``.
OptimizerFactory = Callable[[torch.nn.Module, float], torch.optim.Optimizer]
Split = Union[tuple[torch.Tensor, ...], torch.utils.data.Dataset]

_ITEMS_CHECKED = 3  # Dataset items compared at validation: the first, the middle and the last


MAX_WORKLOAD_EPOCHS = 1_000_000  # a typical training length beyond this is a typo


def _field(where: str, check: Callable[..., object], *args: object, **bounds: object) -> None:
    """One of the shared number checks (:mod:`largestep.units`), its error as the workload's."""
    try:
        check(*args, **bounds)
    except UsageError as exc:
        raise WorkloadError(f"{where}: {exc}") from None


@dataclass(frozen=True, eq=False)
class Workload:
    name: str
    model: Callable[[], torch.nn.Module]  # factory: a fresh, randomly initialised model per call
    train: Split  # (*inputs, target) tensors, dim 0 indexes samples; or a
    # map-style Dataset of tensor tuples or dicts
    val: Split  # same layout as train
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # loss(output, target) -> scalar mean;
    # None: the model's output carries it (out["loss"], out.loss)
    baseline_batch_size: int  # the batch size the user trains with today
    baseline_lr: float  # the learning rate that goes with it
    optimizer: Literal["adam", "adamw", "sgd"] | OptimizerFactory = "adam"  # a name ("sgd": momentum 0.9)
    # or a factory (model, lr) -> Optimizer
    # Optional fields below; new ones may be added, never required ones.
    metrics: Mapping[str, Metric] = field(default_factory=dict)  # validation metrics beside the loss
    primary_metric: str | None = None  # the metric compared between runs; default: the first
    primary_metric_mode: Literal["max", "min"] = "max"  # whether higher or lower is better
    epochs: int = 10  # a typical training length, in epochs
    warmup_samples: int | None = None  # linear warm-up length in samples; None: 5% of an epoch
    weight_decay: float = 0.0  # passed to a named optimizer
    max_grad_norm: float | None = None  # clip gradients to this global norm; None: no clipping
    schedule: Literal["constant", "cosine", "linear", "wsd"] = "constant"  # after warm-up (see SCHEDULES)
    decay_samples: int | None = None  # "wsd": the final decay's length in samples; None: 20% of the run
    collate_fn: Callable[[list], Any] | None = None  # Dataset workloads: the DataLoader's; None: torch's default
    num_workers: int | None = None  # Dataset workloads: loader processes; None: see default_num_workers
    pin_memory: bool | None = None  # Dataset workloads: pinned host batches; None: on a GPU
    tf32: bool | None = None  # TF32 in float32 matmuls and convolutions (Ampere and newer GPUs),
    # for profiles, runs and estimates alike; None: torch's defaults
    cudnn_benchmark: bool | None = None  # torch.backends.cudnn.benchmark (autotuned convolutions); None: as is
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
        if self.loss is not None and not callable(self.loss):
            raise WorkloadError(
                f"{where}: loss must be a callable loss(output, target) -> scalar, or None when "
                f"the model's output carries its loss"
            )
        if batches.is_dataset(self.train) != batches.is_dataset(self.val):
            raise WorkloadError(f"{where}: train and val must both be tensor tuples or both be Datasets")
        if batches.is_dataset(self.train):
            self._validate_datasets(where)
        else:
            self._validate_tensors(where)
        # the numbers land in the store's columns (INTEGER batch sizes, BIGINT samples) and in every job
        _field(where, check_int, self.baseline_batch_size, "baseline_batch_size")
        _field(where, check_number, self.baseline_lr, "baseline_lr", low=0)
        _field(where, check_number, self.weight_decay, "weight_decay", low=0, low_inclusive=True)
        if not callable(self.optimizer) and self.optimizer not in OPTIMIZERS:
            raise WorkloadError(
                f"{where}: optimizer must be one of {', '.join(OPTIMIZERS)} or a factory "
                f"(model, lr) -> torch.optim.Optimizer, not {self.optimizer!r}"
            )
        if self.max_grad_norm is not None and (
            isinstance(self.max_grad_norm, bool)
            or not isinstance(self.max_grad_norm, (int, float))
            or not math.isfinite(self.max_grad_norm)
            or self.max_grad_norm <= 0
        ):
            raise WorkloadError(
                f"{where}: max_grad_norm must be a finite positive number (or None for no "
                f"clipping), not {self.max_grad_norm!r}"
            )
        if self.schedule not in SCHEDULES:
            raise WorkloadError(f"{where}: schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        for name in ("warmup_samples", "decay_samples", "num_workers"):
            value = getattr(self, name)
            if value is not None:
                _field(where, check_int, value, name, low=0, high=INT64_MAX)
        for name in ("pin_memory", "tf32", "cudnn_benchmark"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise WorkloadError(f"{where}: {name} must be True, False or None, not {getattr(self, name)!r}")
        if self.collate_fn is not None and not callable(self.collate_fn):
            raise WorkloadError(f"{where}: collate_fn must be a callable (list of items) -> batch")
        if self.primary_metric is not None and self.primary_metric not in self.metrics:
            raise WorkloadError(f"{where}: primary_metric {self.primary_metric!r} is not among its metrics")
        if self.primary_metric_mode not in ("max", "min"):
            raise WorkloadError(f"{where}: primary_metric_mode must be 'max' or 'min'")
        _field(where, check_int, self.epochs, "epochs", high=MAX_WORKLOAD_EPOCHS)

    def _validate_tensors(self, where: str) -> None:
        for split in ("train", "val"):
            tensors = getattr(self, split)
            if not isinstance(tensors, (tuple, list)) or len(tensors) < 2:
                raise WorkloadError(
                    f"{where}: {split} must be a tuple (*inputs, target) of at least two tensors, "
                    f"or a map-style torch.utils.data.Dataset"
                )
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

    def _validate_datasets(self, where: str) -> None:
        """Items of one kind throughout: a tensor tuple or a dict, the same keys, types and (unless a
        collate_fn may pad them) shapes. Checks a few items, not all: reading a Dataset may be slow."""
        first_items = []
        for split in ("train", "val"):
            dataset = getattr(self, split)
            try:
                n = len(dataset)
            except TypeError:
                raise WorkloadError(
                    f"{where}: {split} is a Dataset without __len__ (an IterableDataset?); "
                    f"give a map-style Dataset with __len__ and __getitem__"
                ) from None
            if n == 0:
                raise WorkloadError(f"{where}: {split} has no samples")
            indices = sorted({0, n // 2, n - 1})[:_ITEMS_CHECKED]
            items = [self._item(dataset, split, i, where) for i in indices]
            shapes = self.collate_fn is None
            for index, item in zip(indices[1:], items[1:]):
                if batches.describe_item(item, shapes) != batches.describe_item(items[0], shapes):
                    raise WorkloadError(
                        f"{where}: {split} items change shape or type: item 0 is "
                        f"{batches.describe_item(items[0])}, item {index} is "
                        f"{batches.describe_item(item)}; make every item alike, or give a "
                        f"collate_fn that pads them"
                    )
            first_items.append(items[0])
        train_item, val_item = first_items
        if batches.describe_item(train_item, shapes=False) != batches.describe_item(val_item, shapes=False):
            raise WorkloadError(
                f"{where}: train and val items differ: {batches.describe_item(train_item)} vs "
                f"{batches.describe_item(val_item)}; give both splits the same kind of item"
            )

    @staticmethod
    def _item(dataset, split: str, index: int, where: str):
        try:
            item = dataset[index]
        except Exception as exc:  # user code: one line, not a traceback
            raise WorkloadError(
                f"{where}: reading item {index} of {split} raised {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; fix the Dataset"
            ) from None
        if isinstance(item, Mapping):
            if not item:
                raise WorkloadError(f"{where}: {split} items are empty dicts; give the model's keyword inputs")
            return item
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            return item
        raise WorkloadError(
            f"{where}: {split} items must be a tuple (*inputs, target) or a dict of model inputs, "
            f"not {batches.describe_item(item)}"
        )

    # -- helpers shared by the profiler, the noise estimator and the training loop -------------

    @property
    def uses_dataset(self) -> bool:
        """Whether the data is read through a DataLoader (else sliced from in-memory tensors)."""
        return batches.is_dataset(self.train)

    @property
    def n_train(self) -> int:
        return len(self.train) if self.uses_dataset else int(self.train[0].shape[0])

    @property
    def n_val(self) -> int:
        return len(self.val) if self.uses_dataset else int(self.val[0].shape[0])

    @property
    def optimizer_name(self) -> str:
        """The optimizer as words for records and exports: its name, or ``factory:<function name>``."""
        if isinstance(self.optimizer, str):
            return self.optimizer
        return f"factory:{getattr(self.optimizer, '__name__', type(self.optimizer).__name__)}"

    @property
    def where(self) -> str:
        return f"workload {self.name!r}"

    @property
    def main_metric(self) -> str | None:
        """The metric compared between runs: ``primary_metric``, else the first metric, else None."""
        return self.primary_metric or next(iter(self.metrics), None)

    def default_warmup_samples(self) -> int:
        return self.warmup_samples if self.warmup_samples is not None else max(1, self.n_train // 20)

    def make_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer for ``model`` at rate ``lr`` (``sgd`` uses momentum 0.9).

        A factory sets each parameter group's rate relative to ``lr``, so scaling ``lr`` scales
        every group by the same factor.
        """
        if callable(self.optimizer):
            try:
                optimizer = self.optimizer(model, lr)
            except Exception as exc:  # user code: one line, not a traceback
                raise WorkloadError(
                    f"{self.where}: the optimizer factory raised {type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:200]}; fix the factory"
                ) from None
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise WorkloadError(
                    f"{self.where}: the optimizer factory returned {type(optimizer).__name__}, not a "
                    f"torch.optim.Optimizer; return e.g. torch.optim.AdamW(model.parameters(), lr=lr)"
                )
            return optimizer
        params = model.parameters()
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.weight_decay)

    def loss_of(self, output: Any, batch: batches.Batch) -> torch.Tensor:
        """The training loss of a batch's output (the workload's loss function, or the output's own)."""
        return batches.loss_of(self.loss, output, batch, self.where)

    def check_runs(self) -> None:
        """One forward pass and optimizer on two training samples, on the CPU: the mistakes only a run
        shows (an output without its loss, dict batches without labels for a metric, a factory that
        returns no optimizer) become a one-line WorkloadError before any job starts."""
        batch = self.first_batch(2)
        try:
            model = self.model()
            self.make_optimizer(model, self.baseline_lr)
            with torch.no_grad():
                output = batches.model_output(model, batch)
                loss = self.loss_of(output, batch)
                finite = bool(torch.isfinite(loss.detach().float()).all())
        except WorkloadError:
            raise
        except Exception as exc:  # the user's model or loss: one line, not a traceback
            message = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkloadError(
                f"{self.where}: a trial step on 2 training samples raised {type(exc).__name__}: {message}"
            ) from None
        if not finite:  # every step would diverge at once: say so before a job starts
            raise WorkloadError(
                f"{self.where}: a trial step on its first 2 training samples gives the loss "
                f"{float(loss.detach().float().mean()):g}: look for NaN or infinite values in those "
                f"samples (inputs or targets), the model's initial weights or the loss function"
            )
        if self.metrics:
            batches.target_of(batch, self.where)

    def first_batch(self, size: int) -> batches.Batch:
        """The first ``size`` training samples as one batch (through the collate_fn for a Dataset)."""
        if not self.uses_dataset:
            return tuple(t[:size] for t in self.train)
        items = [self.train[i] for i in range(min(size, len(self.train)))]
        collate = self.collate_fn or torch.utils.data.default_collate
        try:
            return collate(items)
        except Exception as exc:
            raise WorkloadError(
                f"{self.where}: collating train items into a batch raised {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}; make items alike or fix the collate_fn"
            ) from None

    def evaluate_metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """The workload's metrics on validation outputs; a metric that fails is reported as NaN."""
        results: dict[str, float] = {}
        for name, fn in self.metrics.items():
            try:
                results[name] = float(fn(output, target))
            except Exception:  # a broken user metric must not lose the run
                results[name] = float("nan")
        return results
