"""A Lightning logger that makes ``Trainer.fit`` a tracked largestep run.

    from .lightning import LargestepLogger
    trainer = lightning.pytorch.Trainer(logger=LargestepLogger("my-model"), ...)

The run starts when Lightning logs its hyperparameters at the start of ``fit``, with the
effective batch (the loader's batch x ``accumulate_grad_batches`` x processes), and ends when
Lightning finalizes its loggers: FINISHED on success, FAILED (with the error) when ``fit`` raises.
Metrics keep the names they were logged under (``train_loss``, ``val_loss``, ``val_acc``, ...;
``/`` becomes ``_``); the optimizer's current learning rate is logged as ``lr`` with them.
"""

from __future__ import annotations

import math
import sys
from argparse import Namespace
from typing import Any

from ..errors import UsageError
from .shared import json_safe, largestep_names, require
from ..api.track import track
from ..jobs.track import TrackedRun, new_run_id

require("lightning.pytorch", "lightning", f"{__package__}.lightning")
from lightning.pytorch.loggers.logger import Logger  # noqa: E402  (after the one-line check above)
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402

__all__ = ["LargestepLogger"]

# Lightning's names for what largestep calls train_loss (a loss logged with on_step and on_epoch
# comes as <name>_step and <name>_epoch).
RENAMES = {"loss": "train_loss", "train_loss_step": "train_loss", "train_loss_epoch": "train_loss_epoch_mean"}


class LargestepLogger(Logger):
    """Log a Lightning ``fit`` as a largestep run (see :func:`largestep.track` for the arguments).

    ``batch_size``: the global batch; by default the train loader's batch x gradient accumulation
    x processes. ``lr``: the peak learning rate; by default the optimizer's at the start of fit.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
        tags: tuple[str, ...] | list[str] = (),
        recommendation: str | None = None,
        home: str | None = None,
        **track_options: Any,
    ):
        super().__init__()
        self._name = name
        self._batch_size, self._lr, self._seed, self._tags = batch_size, lr, seed, tuple(tags)
        self._recommendation, self._home, self._options = recommendation, home, track_options
        self._hyperparameters: dict[str, Any] = {}
        self._run_id = new_run_id()  # Lightning asks for the version (its checkpoint folder) before fit starts
        self._trainer = None
        self.run: TrackedRun | None = None

    # -- what Lightning asks of a logger -----------------------------------------------------------

    @property
    def name(self) -> str:
        return "largestep"

    @property
    def version(self) -> str:
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self._hyperparameters.update(json_safe(params))

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Lightning calls this once at the start of fit, after the hyperparameters: the trainer is
        # set up (devices, accumulation), so the run can say its effective batch.
        self._trainer = getattr(model, "_trainer", None) or getattr(model, "trainer", None)
        if self.run is None and self._trainer is not None:
            self._start(model)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is None or not self.run.running:
            return  # before fit (a bare validate) or after it (test): not part of the training run
        metrics = dict(metrics)
        step = step if step is not None else self._trainer.global_step
        named = largestep_names(metrics, RENAMES)
        # Lightning adds its 0-based epoch index to every row; largestep's epoch is the training done, in
        # epochs (1.00 at the end of the first), as track() and the launched runs define it
        named.pop("epoch", None)
        done = _epochs_done(self._trainer, int(self._trainer.global_step))  # optimizer steps taken so far
        if done is not None:
            named["epoch"] = done
        training_row = not any(name.startswith("val_") for name in named)
        if training_row and "lr" not in named:  # the rate the optimizer is stepping with, beside its loss
            lr = _current_lr(self._trainer)
            if lr is not None:
                named["lr"] = lr
        self.run.log(int(step), **named)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.run is None:
            return
        if status == "failed":
            # Lightning finalizes inside its `except` clause: the exception in flight is why fit failed
            exc = sys.exc_info()[1] or RuntimeError("Lightning reported that fit failed")
            self.run.finish(exc)
        else:
            self.run.finish(steps=self._trainer.global_step)

    # -- the run ------------------------------------------------------------------------------------

    def _start(self, model: Any) -> None:
        trainer = self._trainer
        batch_size = self._batch_size or _effective_batch(trainer, model, self._hyperparameters)
        lr = self._lr if self._lr is not None else _current_lr(trainer)
        self.run = track(
            self._name or type(model).__name__,
            batch_size=batch_size,
            lr=lr,
            seed=self._seed,
            tags=self._tags,
            recommendation=self._recommendation,
            home=self._home,
            run_id=self._run_id,
            accumulate=int(trainer.accumulate_grad_batches),
            world_size=int(trainer.world_size),
            epochs=float(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None,
            total_steps=int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None,
            hyperparameters=self._hyperparameters,
            **self._options,
        )
        self.run.start()


def _effective_batch(trainer: Any, model: Any, hyperparameters: dict) -> int:
    """The global batch: the train loader's batch x gradient accumulation x processes."""
    per_device = _loader_batch(trainer)
    if per_device is None:
        for owner in (trainer.datamodule, model):
            value = getattr(owner, "batch_size", None)
            if isinstance(value, int):
                per_device = value
                break
    if per_device is None:
        per_device = hyperparameters.get("batch_size")
    if not isinstance(per_device, int) or isinstance(per_device, bool):
        raise UsageError(
            "LargestepLogger cannot tell the batch size from the train loader, the datamodule or the "
            "hyperparameters; pass LargestepLogger(batch_size=GLOBAL_BATCH)"
        )
    return per_device * int(trainer.accumulate_grad_batches) * int(trainer.world_size)


def _loader_batch(trainer: Any) -> int | None:
    """The batch of a DataLoader given to ``fit`` directly (a datamodule's is built later)."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    loader = getattr(source, "instance", None)
    batch = getattr(loader, "batch_size", None)
    if batch is None:
        batch = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return batch if isinstance(batch, int) and not isinstance(batch, bool) else None


def _epochs_done(trainer: Any, step: int) -> float | None:
    """Optimizer steps as epochs of training: ``step`` over the optimizer steps an epoch takes (None when
    the train loader has no length)."""
    batches = getattr(trainer, "num_training_batches", None)
    if not isinstance(batches, (int, float)) or isinstance(batches, bool) or not math.isfinite(batches) or batches <= 0:
        return None
    steps_per_epoch = math.ceil(batches / max(1, int(trainer.accumulate_grad_batches)))
    return step / steps_per_epoch


def _current_lr(trainer: Any) -> float | None:
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers or not optimizers[0].param_groups:
        return None
    return optimizers[0].param_groups[0].get("lr")
