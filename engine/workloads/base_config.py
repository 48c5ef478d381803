"""The names a workload's optimizer and schedule may take: checked by a command before it imports torch."""

__all__ = ["OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "wsd")  # after warm-up; see largestep.measure.train.lr_factor
