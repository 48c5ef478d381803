"""What a training run is asked to do: its config, checked before any job is written. Apart from
:mod:`largestep.measure.train` so that submitting a run imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from . import batch_schedule
from .batch_schedule import DEFAULT_ADAPTIVE_MULTIPLE
from .devices_config import MAX_NPROC
from .profiler_config import MAX_THREADS
from ..units import INT64_MAX, check_int, check_number, check_switch
from ..workloads.base_config import SCHEDULES

__all__ = ["MAX_EPOCHS", "TrainConfig"]

MAX_EPOCHS = 1e6  # far beyond any real run; it keeps step counts within the BIGINT columns


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int  # global batch: samples per optimizer step, all ranks together
    lr: float  # peak learning rate, reached after warm-up
    epochs: float | None = None  # None: the workload's epochs
    warmup_samples: int | None = None  # linear warm-up length in samples; None: the workload's
    accumulate: int = 1  # micro-batches per optimizer step (micro = batch / accumulate / nproc)
    nproc: int = 1  # data-parallel processes (ranks); each takes a shard of every batch
    schedule: str | None = None  # after warm-up: constant | cosine | linear | wsd; None: the workload's
    dtype: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast)
    compile: bool = False  # torch.compile the model, compiled before the clock starts
    tf32: bool | None = None  # TF32 in float32 matmuls and convolutions; None: the workload's field
    threads: int | None = None  # torch's intra-op threads on the CPU (--threads); None: torch's default
    seed: int = 0  # model initialisation and data order
    eval_every_epochs: float = 1.0  # evaluate this often (in epochs); also at the end
    log_every_steps: int | None = None  # None: about 20 logs per epoch
    check_every: int = 5  # steps between divergence checks (each one syncs)
    divergence_factor: float = 10.0  # loss above this times its start value: diverged
    batch_schedule: tuple[tuple[int, float], ...] | None = None  # (batch, start fraction of the samples) per
    # phase; batch_size is the first phase's, lr its rate
    batch_schedule_rule: str = "linear"  # later phases' lr: "linear" (lr/batch fixed) | "sqrt"
    adaptive_batches: tuple[int, ...] | None = None  # --batch-schedule adaptive: the (measured, memory-safe)
    # batches the run may double into as its live noise scale grows
    adaptive_multiple: float = DEFAULT_ADAPTIVE_MULTIPLE  # double when the live B_noise > this x the batch
    target_val_loss: float | None = None  # stop when validation loss reaches this
    max_steps: int | None = None  # hard cap on optimizer steps (tests, smoke runs)
    group: str | None = None  # repeats of one config share a group
    tags: tuple[str, ...] = ()

    def validate(self) -> None:
        """Every field against its meaning and the column it lands in, before any job is written."""
        check_int(self.batch_size, "--batch-size")
        check_number(self.lr, "--lr", low=0)
        if self.epochs is not None:
            check_number(self.epochs, "--epochs", low=0, high=MAX_EPOCHS)
        if self.warmup_samples is not None:
            check_int(self.warmup_samples, "--warmup-samples", low=0, high=INT64_MAX)
        check_int(self.accumulate, "--accumulate")
        check_int(self.nproc, "--nproc", high=MAX_NPROC)
        if self.batch_size % (self.accumulate * self.nproc):
            if self.nproc == 1:
                raise UsageError(f"--batch-size {self.batch_size} is not divisible by --accumulate {self.accumulate}")
            raise UsageError(
                f"--batch-size {self.batch_size} is not divisible by --nproc {self.nproc} x --accumulate "
                f"{self.accumulate} = {self.nproc * self.accumulate}; the global batch is micro-batch x "
                f"accumulate x nproc"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        check_int(self.seed, "--seed", low=0)
        check_switch(self.tf32, "--tf32")
        if self.threads is not None:
            check_int(self.threads, "--threads", high=MAX_THREADS)
        if self.batch_schedule is not None and self.adaptive_batches is not None:
            raise UsageError("give a batch schedule or adaptive, not both")
        if self.batch_schedule is not None:
            self._validate_batch_schedule()
        if self.adaptive_batches is not None:
            batch_schedule.check_adaptive(
                tuple(self.adaptive_batches), self.batch_size, self.adaptive_multiple, self.accumulate, self.nproc
            )
        if self.target_val_loss is not None:
            check_number(self.target_val_loss, "--target-val-loss")
        check_number(self.eval_every_epochs, "--eval-every", low=0, high=MAX_EPOCHS)
        if self.log_every_steps is not None:
            check_int(self.log_every_steps, "the logging interval", high=INT64_MAX)
        if self.max_steps is not None:
            check_int(self.max_steps, "--max-steps", high=INT64_MAX)

    def _validate_batch_schedule(self) -> None:
        phases = batch_schedule.check_batch_schedule(tuple(tuple(p) for p in self.batch_schedule))
        if self.batch_size != phases[0][0]:
            raise UsageError(f"--batch-size {self.batch_size} is not the batch schedule's first batch {phases[0][0]}")
        if self.accumulate != 1 or self.nproc != 1:
            raise UsageError("--batch-schedule runs one process without accumulation: drop --accumulate and --nproc")
        if self.batch_schedule_rule not in batch_schedule.RULES:
            raise UsageError(f"the batch schedule's rule must be linear or sqrt, not {self.batch_schedule_rule!r}")

    @property
    def micro_batch(self) -> int:
        """Samples per forward pass on one rank."""
        return self.batch_size // (self.accumulate * self.nproc)

    @property
    def rank_batch(self) -> int:
        """Samples per optimizer step on one rank (its share of the global batch)."""
        return self.batch_size // self.nproc
