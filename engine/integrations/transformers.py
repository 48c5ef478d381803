"""A Hugging Face ``TrainerCallback`` that makes ``Trainer.train`` a tracked largestep run.

    from .transformers import LargestepCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[LargestepCallback("my-model")])

The run starts at ``on_train_begin`` with the effective batch (per-device batch x gradient
accumulation x processes), the learning rate and the seed of the ``TrainingArguments``, and ends
FINISHED at ``on_train_end``. Each ``on_log`` becomes a row: ``loss`` as ``train_loss``,
``learning_rate`` as ``lr``, ``eval_loss`` as ``val_loss`` and ``eval_<metric>`` as
``val_<metric>``. A ``train`` that raises has no hook: the run ends FAILED, with the error, when
the process exits (and CRASHED if it is killed).
"""

from __future__ import annotations

from typing import Any

from .shared import json_safe, largestep_names, require
from ..api.track import track
from ..jobs.track import TrackedRun

require("transformers", "hf", f"{__package__}.transformers")
from transformers import TrainerCallback  # noqa: E402  (after the one-line check above)

__all__ = ["LargestepCallback"]

# The Trainer's log keys under largestep's names; None: bookkeeping that is not a metric of the run.
RENAMES = {
    "loss": "train_loss",
    "learning_rate": "lr",
    "eval_loss": "val_loss",
    "total_flos": None,
    "eval_runtime": None,
    "eval_samples_per_second": None,
    "eval_steps_per_second": None,
    "train_runtime": None,
    "train_samples_per_second": None,
    "train_steps_per_second": None,
    "train_loss": "train_loss_mean",
}  # the summary at the end: the mean over the whole run
PREFIXES = {"eval_": "val_"}  # the evaluation's metrics: eval_accuracy is val_accuracy
# The TrainingArguments kept with the run (the whole set is long and mostly about I/O).
ARGUMENTS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "optim",
    "seed",
    "bf16",
    "fp16",
)


class LargestepCallback(TrainerCallback):
    """Log a Hugging Face ``Trainer.train`` as a largestep run (see :func:`largestep.track` for the arguments)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        tags: tuple[str, ...] | list[str] = (),
        recommendation: str | None = None,
        home: str | None = None,
        **track_options: Any,
    ):
        self._name, self._tags = name, tuple(tags)
        self._recommendation, self._home, self._options = recommendation, home, track_options
        self.run: TrackedRun | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.run = track(
            self._name or _model_name(model),
            batch_size=batch_size,
            lr=args.learning_rate,
            seed=args.seed,
            tags=self._tags,
            recommendation=self._recommendation,
            home=self._home,
            accumulate=args.gradient_accumulation_steps,
            world_size=args.world_size,
            epochs=float(args.num_train_epochs) if args.max_steps <= 0 else None,
            total_steps=state.max_steps or None,
            hyperparameters=json_safe({name: getattr(args, name, None) for name in ARGUMENTS}),
            **self._options,
        )
        self.run.start()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not self.run.running or not logs:
            return
        named = largestep_names(logs, RENAMES, PREFIXES)
        if not named:
            return
        self.run.log(state.global_step, **named)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.finish()


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__
