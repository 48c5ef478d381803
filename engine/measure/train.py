"""The training loop, run as a job: real training of a workload at one batch size and learning rate.

:func:`train` reads top to bottom: the checked config, the setup (data, model on the ranks, optimizer, noise
probe), the loop (forward backward update; divergence; timing and logging; evaluation, outside the clock;
termination; the batch schedule's next phase), and the final record. Each of those is a function or a small
object below it, in the order it meets them: the loop's per-micro-batch path is one call (forward and backward)
and its per-step path one more (the update); everything else runs at logging, checking or evaluation steps.

- Tensor workloads: data stays on the device when it fits; otherwise each gathered batch is pinned and
  copied non-blocking one batch ahead. Dataset workloads: read through their DataLoader (workers,
  collate_fn, pinning) in the same seeded order. A fresh shuffle per epoch comes from the seed.
- A dict batch calls ``model(**batch)``; ``loss=None`` takes the loss from the model's output.
- No host-device synchronisation per step: losses are kept on the device (no kernel a step), summed and read only
  at logging intervals (and every ``check_every`` steps for divergence).
- Learning rate: gradual linear warm-up over a number of samples (not steps), then constant,
  cosine, linear or WSD (warm-up, stable, decay), all defined in samples, so a larger batch keeps
  the same shape over the same data. Each parameter group runs at its own base rate (as the
  optimizer factory set it) times that factor. Gradients are clipped to the workload's
  ``max_grad_norm``. Gradient accumulation: ``accumulate`` micro-batches per optimizer step.
- Wall time is recorded with and without evaluation; time to a target validation loss too.
- Data-parallel (``nproc > 1``, inside a torch.distributed process group started by
  :mod:`largestep.jobs.torchrun`): the model is wrapped in DistributedDataParallel; every global
  batch is cut into disjoint shards, one per rank; ``batch_size`` stays the global batch
  (micro-batch x accumulate x nproc), so the learning rate and warm-up follow it. Only rank 0
  evaluates and logs; its decisions (target reached, diverged) are broadcast to every rank.
- Gradient noise scale almost for free in data-parallel runs: DDP's communication hook sees each
  rank's gradient (B_small = micro-batch x accumulate) just before the all-reduce, and the
  all-reduced gradient is the global batch's (B_big); McCandlish's estimator over the probed steps of
  each logging interval is logged as ``noise_scale`` (with ``noise_g2``, ``noise_trace_sigma``). The
  probe (float64 norms of every gradient bucket) runs on every NOISE_PROBE_EVERY-th step and on each
  logging step, not on every step: a profile's steps run without it, so a run that paid it every step
  would be slower than its profile said.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Protocol

import torch

from ..errors import Diverged, UsageError
from . import batch_schedule, devices
from . import distributed as ddp_util
from .noise_config import noise_scale_from_norms
from .train_config import TrainConfig
from ..workloads import batches
from ..workloads.base import Workload
from ..workloads.base_config import SCHEDULES

__all__ = [
    "TrainConfig",
    "RunResult",
    "RunLog",
    "NullLog",
    "train",
    "lr_at",
    "lr_factor",
    "SCHEDULES",
    "TensorBatches",
    "training_batches",
]

WSD_DEFAULT_DECAY = 0.2  # "wsd" without decay_samples: the last fifth of the run decays
NOISE_PROBE_EVERY = 8  # data-parallel: the noise probe reads the gradients' norms on every 8th step (and on each
# logging step), so the run's steps cost what its profile's did, give or take an eighth of it


class RunLog(Protocol):
    """Where a run reports as it trains: a job's spool (largestep.jobs.bodies), or a test's list."""

    def started(self, **facts) -> None:
        """Once, before the first step: the config and what the run is made of."""

    def logged(self, rows: list[dict]) -> None:
        """Training metrics at a logging step: wide rows (step, epoch, samples, times, train_loss, lr, ...)."""

    def logged_values(self, rows: list[dict]) -> None:
        """Named values at a logging step: long rows (the data-parallel noise scale)."""

    def evaluated(self, **evaluation) -> None:
        """A validation pass: step, epoch, samples, wall and training time, val_loss, metrics."""


class NullLog:
    """Reports nothing: a rank other than 0, or a caller that wants only the result."""

    def started(self, **facts) -> None:
        pass

    def logged(self, rows: list[dict]) -> None:
        pass

    def logged_values(self, rows: list[dict]) -> None:
        pass

    def evaluated(self, **evaluation) -> None:
        pass


_INDEX = ("step", "epoch", "samples", "wall_time_s", "train_time_s")  # where a metric row sits in the run
PROGRESS_EVERY_S = 1.0  # progress reported at most this often: a job's report rewrites and fsyncs its status
# file (about 250 µs of CPU and 0.5 ms of wall time), and its heartbeat runs at 1 s


@dataclass
class RunResult:
    steps: int = 0
    samples: int = 0
    epochs: float = 0.0
    wall_time_s: float = 0.0  # everything, evaluation included
    train_time_s: float = 0.0  # training only: evaluation is outside this clock
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_metrics: dict = field(default_factory=dict)
    reached_target: bool = False
    time_to_target_s: float | None = None  # training time at the first evaluation at or below the target
    peak_memory_bytes: int | None = None
    diverged: bool = False
    stop_reason: str = "epochs"  # epochs | target | max_steps | diverged


def lr_factor(
    samples_seen: int,
    warmup_samples: int,
    total_samples: int,
    schedule: str = "constant",
    decay_samples: int | None = None,
) -> float:
    """The multiple of each group's base rate for the optimizer step about to run; lengths in samples.

    Linear warm-up over ``warmup_samples``, then:
    constant 1; cosine from 1 at the start of the run to 0 at its end; linear from 1 after warm-up
    to 0 at the end; wsd (warm-up, stable, decay) 1 until the last ``decay_samples`` (default: the
    last fifth of the run), then linearly to 0.
    """
    if warmup_samples > 0 and samples_seen < warmup_samples:
        return (samples_seen + 1) / warmup_samples  # never exactly zero: the first step moves
    if total_samples <= 0 or schedule == "constant":
        return 1.0
    progress = min(1.0, samples_seen / total_samples)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        span = total_samples - warmup_samples
        return max(0.0, 1.0 - (samples_seen - warmup_samples) / span) if span > 0 else 1.0
    if schedule == "wsd":
        decay = decay_samples if decay_samples is not None else round(WSD_DEFAULT_DECAY * total_samples)
        decay_start = total_samples - decay
        if samples_seen < decay_start or decay <= 0:
            return 1.0
        return max(0.0, 1.0 - (samples_seen - decay_start) / decay)
    raise ValueError(f"unknown schedule {schedule!r}")


def lr_at(
    samples_seen: int,
    peak_lr: float,
    warmup_samples: int,
    total_samples: int,
    schedule: str = "constant",
    decay_samples: int | None = None,
) -> float:
    """Learning rate for the optimizer step about to run (one parameter group at ``peak_lr``)."""
    return peak_lr * lr_factor(samples_seen, warmup_samples, total_samples, schedule, decay_samples)


class TensorBatches:
    """Per-epoch shuffled batches; on the device when the data fits, else each batch pinned + prefetched.
    (The profiler steps on data left on the host through this same path.)

    With ``world > 1`` every rank draws the same permutation (from the seed) and each global
    micro-step of ``micro_batch * world`` samples is cut into ``world`` disjoint shards; rank r
    takes the r-th. So the union of the shards is exactly the single-process micro-batch.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        device: torch.device,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.device = device
        self.micro_batch = micro_batch
        self.rank, self.world = rank, world
        self.seed = seed
        self.n = int(tensors[0].shape[0])
        on_device = devices.fits_on_device(tensors, device)
        # data left on the host is not pinned as a whole: a gathered batch (index_select) is a new,
        # unpinned tensor anyway, so each batch is pinned once, as it is copied
        self.tensors = tuple(t.to(device) for t in tensors) if on_device else tuple(tensors)
        self.on_device = on_device

    def epoch(self, epoch: int):
        """Micro-batches of one epoch, in a fresh order from the seed; a partial last batch is dropped."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.on_device:
            order = order.to(self.device)
        span = self.micro_batch * self.world  # one global micro-step, all ranks together
        starts = range(self.rank * self.micro_batch, self.n - span + 1 + self.rank * self.micro_batch, span)
        if self.on_device:
            for start in starts:
                index = order[start : start + self.micro_batch]
                yield tuple(t.index_select(0, index) for t in self.tensors)
        else:
            # copy the next batch while the current one computes
            pending = None
            for start in starts:
                index = order[start : start + self.micro_batch]
                batch = tuple(
                    t.index_select(0, index).pin_memory().to(self.device, non_blocking=True) for t in self.tensors
                )
                if pending is not None:
                    yield pending
                pending = batch
            if pending is not None:
                yield pending

    def steps_per_epoch(self, accumulate: int) -> int:
        return (self.n // (self.micro_batch * self.world)) // accumulate


class _LoaderBatches:
    """Per-epoch batches of a Dataset workload, read through its DataLoader (workers, collate_fn,
    pinning) in the same seeded order and with the same sharding over ranks as :class:`TensorBatches`;
    each batch is copied to the device as the step takes it."""

    on_device = False

    def __init__(
        self, workload: Workload, device: torch.device, micro_batch: int, seed: int, rank: int = 0, world: int = 1
    ):
        self.device = device
        self.n = workload.n_train
        self.order = batches.EpochOrder(self.n, micro_batch, seed, rank, world)
        self.loader = batches.make_loader(workload, "train", device, sampler=self.order)

    def epoch(self, epoch: int):
        self.order.set_epoch(epoch)
        if self.device.type == "cpu":  # the loader's batches are in host memory already: nothing to copy
            yield from self.loader
            return
        for batch in self.loader:
            yield batches.to_device(batch, self.device, non_blocking=self.loader.pin_memory)

    def steps_per_epoch(self, accumulate: int) -> int:
        return len(self.order) // accumulate


def training_batches(
    workload: Workload, device: torch.device, micro_batch: int, seed: int, rank: int = 0, world: int = 1
) -> TensorBatches | _LoaderBatches:
    """The run's source of micro-batches: device-resident tensors, or the Dataset's loader."""
    if workload.uses_dataset:
        return _LoaderBatches(workload, device, micro_batch, seed, rank, world)
    return TensorBatches(workload.train, device, micro_batch, seed, rank, world)


def _validation_batches(workload: Workload, device: torch.device, batch: int):
    """The whole validation set in order, a batch at a time, on the device (the last may be partial)."""
    if workload.uses_dataset:
        loader = batches.make_loader(workload, "val", device, batch_size=batch)
        for part in loader:
            yield batches.to_device(part, device, non_blocking=loader.pin_memory)
        return
    for start in range(0, workload.n_val, batch):
        yield tuple(t[start : start + batch].to(device, non_blocking=True) for t in workload.val)


def _as_float(output):
    """A low-precision (autocast) tensor output as float32, so the loss and metrics are computed in full."""
    return output.float() if isinstance(output, torch.Tensor) else output


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, workload: Workload, device: torch.device, dtype: str, batch: int = 4096
) -> tuple[float, dict[str, float]]:
    """Validation loss (sample-weighted mean) and the workload's metrics on the whole validation set.

    Metrics score the logits (``out["logits"]``/``out.logits`` for models that return more) against
    the targets (a dict batch's ``labels``).
    """
    if workload.uses_dataset:
        batch = min(batch, 256)  # items may be large (images, sequences); a loader batch is held whole
    model.eval()
    logits, targets, total, count = [], [], 0.0, 0
    for part in _validation_batches(workload, device, batch):
        with devices.autocast(device, dtype):
            out = batches.model_output(model, part)
        n = batches.batch_length(part)
        total += float(workload.loss_of(_as_float(out), part)) * n
        count += n
        if workload.metrics:
            logits.append(_as_float(batches.logits_of(out)))
            targets.append(batches.target_of(part, workload.where))
    model.train()
    metrics = workload.evaluate_metrics(torch.cat(logits), torch.cat(targets)) if workload.metrics else {}
    return total / max(1, count), metrics


def _quiet(phase: str, fraction: float) -> None:
    """Reports no progress: a rank other than 0, or a caller that does not ask."""


def _never() -> bool:
    """Never asks the run to stop."""
    return False


def train(workload: Workload, device: torch.device, config: TrainConfig, log: RunLog | None = None,
          progress: Callable[[str, float], None] = _quiet, should_stop: Callable[[], bool] = _never,
          save_to: str | None = None) -> RunResult:  # fmt: skip
    """Train once, reporting to ``log`` as it goes; raises Diverged when the loss explodes. With ``config.nproc > 1``
    this runs in each rank of a process group (:mod:`largestep.jobs.torchrun`); rank 0 alone reports."""
    world, rank = ddp_util.world_size(), ddp_util.rank()
    config, phases = _checked(workload, device, config, world)
    if log is None or rank != 0:  # one voice: rank 0 logs for the run
        log, progress = NullLog(), progress if rank == 0 else _quiet

    # -- setup: TF32 and cuDNN, data and the run's length, model on the ranks, optimizer, noise probe ---------------
    math_settings = devices.use_math(workload, config.tf32)  # recorded with the run, as a profile records its own
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    data = _Data(workload, device, config, phases, rank, world)
    model, forward, compile_s = _model_on_ranks(workload, device, config, world, rank)
    update = _Update(workload, model, config, device, data)
    probe = update.probe = _noise_probe(forward, model, device, config, update.scaler, world)
    length, clock = data.length, _Clock(device, data.length)
    interval, divergence = _Interval(log, progress, probe, data, clock), _Divergence(config, log, clock)
    evaluation = _Evaluation(model, workload, device, config, length, log, clock, rank, world)
    forward_backward = _forward_backward(workload, forward, model, config, device, update.scaler, probe, interval)
    devices.reset_peak_memory(device)
    _started(log, config, workload, model, data, world, compile_s, probe, math_settings)

    # -- the loop: a step, then what some steps ask for, until a stop -----------------------------------------------
    result, step, stop = RunResult(), 0, None
    clock.start()  # sync: the setup's copies are done before the clock starts
    for micro, micro_batch in data.micro_batches():
        # forward backward update (the update once every `accumulate` micro-batches)
        syncing = micro % config.accumulate == 0
        loss = forward_backward(micro_batch, syncing, step)
        if not syncing:
            continue
        lr = update.step(result.samples)  # the rate logged: the run's peak rate times the schedule
        step, result.samples = step + 1, result.samples + data.batch

        # divergence: a sync every few steps, not every step
        if step % config.check_every == 0 or step <= 3:
            divergence.check(loss, step, lr, result)

        # timing and logging (a sync); an adaptive batch schedule reads the noise scale just logged
        if step % length.log_every == 0:
            interval.log(step, result.samples, lr)

        # evaluation, outside the training clock
        last_step = step >= length.total_steps or result.samples >= length.total_samples
        stop = evaluation.run(step, result) if result.samples >= evaluation.next or last_step else None

        # termination
        stop = stop or (length.end_reason(step) if last_step else "stopped" if should_stop() else None)
        if stop is not None:
            break

        # the batch schedule's next phase: a new source of batches at its batch, from the next micro-batch on
        if data.phases is not None and data.next_phase(result.samples):
            interval.phase_started(step, result.samples, lr)
            del micro_batch  # the old phase's last batch goes with its data, before the next phase's is made
    return _finished(result, step, stop, clock, model, save_to, rank)


# -- the loop's parts, in the order train() meets them ------------------------------------------------------------


def _checked(
    workload: Workload, device: torch.device, config: TrainConfig, world: int
) -> tuple[TrainConfig, batch_schedule.Phases | None]:
    """The config as run (the workload's schedule when it names none), checked against the workload, the device and
    the process group; and the batch schedule's phases (None: one batch throughout). An adaptive run starts with
    one phase and adds one each time its noise scale calls for a larger batch."""
    config.validate()
    config = replace(config, schedule=config.schedule or workload.schedule)  # recorded as run
    devices.check_dtype(device, config.dtype)
    if config.nproc != world:
        raise UsageError(
            f"--nproc {config.nproc} needs a process group of {config.nproc} ranks (launched by the job "
            f"runner); this one has {world}"
        )
    if config.batch_size > workload.n_train:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the {workload.n_train} training samples")
    if config.adaptive_batches is not None:
        return config, ((config.batch_size, 0.0),)
    if config.batch_schedule:
        return config, batch_schedule.check_batch_schedule(
            tuple(tuple(p) for p in config.batch_schedule), workload.n_train
        )
    return config, None


@dataclass(frozen=True)
class _Length:
    """How long the run is, in optimizer steps and samples, and how often it logs and evaluates."""

    epochs: float
    warmup_samples: int  # the learning rate's linear warm-up
    steps_per_epoch: int  # at the first batch
    total_steps: int  # a batch schedule takes the first batch's samples in fewer steps
    samples_per_epoch: int
    total_samples: int  # the schedule's length: warm-up, decay, the batch schedule's phases
    log_every: int  # optimizer steps a logging interval
    eval_every_samples: int  # in samples, so a batch that grows does not make evaluation rarer
    max_steps: int | None

    @classmethod
    def of(cls, workload: Workload, config: TrainConfig, source, phases) -> "_Length":
        epochs = config.epochs if config.epochs is not None else workload.epochs
        steps_per_epoch = source.steps_per_epoch(config.accumulate)
        if steps_per_epoch == 0:
            raise UsageError(f"--batch-size {config.batch_size} is larger than the {workload.n_train} training samples")
        epoch_steps = max(1, math.ceil(epochs * steps_per_epoch))  # the run's steps at the first batch
        total_steps = epoch_steps
        if phases is not None:  # the same samples as at the first batch, in fewer steps as the batch grows
            total_steps = batch_schedule.scheduled_steps(phases, epoch_steps * config.batch_size)
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        return cls(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            warmup_samples=(
                config.warmup_samples if config.warmup_samples is not None else workload.default_warmup_samples()
            ),
            samples_per_epoch=steps_per_epoch * config.batch_size,
            total_samples=(total_steps if phases is None else epoch_steps) * config.batch_size,
            log_every=config.log_every_steps or max(1, steps_per_epoch // 20),
            eval_every_samples=max(1, round(config.eval_every_epochs * steps_per_epoch)) * config.batch_size,
            max_steps=config.max_steps,
        )

    def facts(self) -> dict:
        """What the run's start reports of its length."""
        return {
            "epochs": self.epochs,
            "warmup_samples": self.warmup_samples,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
        }

    def end_reason(self, step: int) -> str:
        """Why the run's last step was its last: the step cap, or the run's epochs done."""
        return "max_steps" if self.max_steps is not None and step >= self.max_steps else "epochs"


class _Data:
    """The run's micro-batches, epoch after epoch, at the batch of the batch schedule's phase in force.

    Each new phase gets a new source of batches at its batch, from a fresh shuffle (a new epoch); an adaptive
    run adds a phase each time its smoothed noise scale calls for a larger batch.
    """

    def __init__(self, workload: Workload, device: torch.device, config: TrainConfig, phases, rank: int, world: int):
        self.workload, self.device, self.config, self.rank, self.world = workload, device, config, rank, world
        self.phases = phases  # None: one batch throughout
        self.batch = config.batch_size  # samples per optimizer step; a batch schedule changes it between phases
        self.switching = False  # a new phase starts with the next micro-batch
        self.trend = batch_schedule.NoiseTrend(config.seed) if config.adaptive_batches is not None else None
        self.source = training_batches(workload, device, config.micro_batch, config.seed, rank, world)
        self.length = _Length.of(workload, config, self.source, phases)
        self.current = None  # this epoch's batches

    def micro_batches(self) -> Iterator[tuple[int, batches.Batch]]:
        """(number within its epoch from 1, micro-batch), epoch after epoch, for as long as the caller asks (no
        Python frame of its own between the loop and the source's batches)."""
        return itertools.chain.from_iterable(map(self._epoch, itertools.count()))

    def _epoch(self, epoch: int) -> Iterator[tuple[int, batches.Batch]]:
        if self.switching:
            # the old phase's source, and its copy of the data on the device, go before the next phase makes its
            # own: the two copies at once would need twice the room the run was planned with
            self.source = None
            self.source = training_batches(
                self.workload,
                self.device,
                self.batch // self.config.accumulate,
                self.config.seed,
                self.rank,
                self.world,
            )
            self.switching = False
        self.current = self.source.epoch(epoch)  # kept until the run returns: a loader's workers stop off the clock
        return enumerate(self.current, 1)

    def next_phase(self, samples: int) -> bool:
        """Whether the step about to run (after ``samples``) starts a phase at another batch, in a new epoch: its
        source of batches is made when the next micro-batch is asked for."""
        batch = self.phases[batch_schedule.phase_index(self.phases, samples, self.length.total_samples)][0]
        if batch == self.batch:
            return False
        self.batch, self.switching = batch, True
        self.current.close()  # the old phase's batches end here; its source goes as the next micro-batch is asked for
        return True

    def observe(self, noise_rows: list[dict], row: dict, samples: int, log: RunLog) -> None:
        """Adaptive: feed one logging interval's |G|² and tr(Σ) to the smoothed noise scale, log it with its interval,
        and add a phase at a larger batch from here when it calls for one."""
        if self.trend is None:
            return
        values = {r["name"]: r["value"] for r in noise_rows}
        self.trend.add(values.get("noise_g2"), values.get("noise_trace_sigma"))
        estimate = self.trend.estimate()
        if estimate is not None:
            index = {k: row[k] for k in _INDEX}
            smoothed = zip(("noise_scale_smoothed", "noise_scale_low", "noise_scale_high"), estimate)
            log.logged_values(
                [{**index, "name": name, "value": value} for name, value in smoothed if value is not None]
            )
        grown = self.trend.grown(
            self.batch,
            tuple(self.config.adaptive_batches),
            self.config.adaptive_multiple,
            self.workload.n_train,
            estimate,
        )
        if grown is not None and samples < self.length.total_samples:
            self.phases = (*self.phases, (grown, samples / self.length.total_samples))


def _model_on_ranks(
    workload: Workload, device: torch.device, config: TrainConfig, world: int, rank: int
) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """The workload's model on the device, what the loop runs forward, and the seconds its compilation took (None:
    not compiled). With several ranks, forward is the model wrapped in DistributedDataParallel and each rank draws
    its own dropout noise from here; compiled (when asked) before the clock starts."""
    model = workload.model().to(device)
    model.train()
    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(config.seed + 1_000_003 * rank)  # dropout and other noise: independent per rank
    compile_s = None
    if config.compile:
        forward = devices.compile_model(forward)
        compile_s = compile_before_clock(forward, workload, device, config.dtype, (config.micro_batch,))
    return model, forward, compile_s


class _Update:
    """The optimizer step at the schedule's rate, after the noise probe has read the step's gradients.

    Each parameter group runs at its own base rate (as the optimizer factory set it) times the schedule's factor:
    warm-up then constant, cosine, linear or wsd, times the batch schedule's multiple. Gradients are clipped to the
    workload's ``max_grad_norm`` (the true ones: under fp16 the loss-scaled gradients are unscaled first).
    """

    def __init__(
        self, workload: Workload, model: torch.nn.Module, config: TrainConfig, device: torch.device, data: _Data
    ):
        self.model, self.data = model, data
        self.optimizer = workload.make_optimizer(model, config.lr)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # each group's own peak rate
        self.scaler = torch.amp.GradScaler(device.type) if devices.needs_grad_scaler(device, config.dtype) else None
        self.probe: _NoiseProbe | None = None
        self.max_grad_norm = workload.max_grad_norm
        self.peak_lr, self.schedule, self.rule = config.lr, config.schedule, config.batch_schedule_rule
        self.warmup, self.total_samples = data.length.warmup_samples, data.length.total_samples
        self.decay_samples = workload.decay_samples
        self.factor_set = None  # the schedule's multiple the parameter groups run at now

    def step(self, samples: int) -> float:
        """The optimizer step after ``samples``; the rate it ran at (the run's peak rate times the schedule)."""
        factor = lr_factor(samples, self.warmup, self.total_samples, self.schedule, self.decay_samples)
        if self.data.phases is not None:
            factor *= batch_schedule.lr_multiple(self.data.phases, samples, self.total_samples, self.warmup, self.rule)
        if factor != self.factor_set:  # constant stretches (after warm-up, wsd's stable phase) set nothing a step
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base_lr * factor
            self.factor_set = factor
        if self.probe is not None:
            self.probe.after_backward(self.model)
        if self.max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.peak_lr * factor


def _noise_probe(
    forward: torch.nn.Module, model: torch.nn.Module, device: torch.device, config: TrainConfig, scaler, world: int
) -> _NoiseProbe | None:
    """The run's gradient noise probe: an adaptive batch's, from each step's micro-batches (loss-scaled ones
    unscaled); else a data-parallel run's, from the ranks' gradients (fp16 goes without: a loss-scaled gradient
    would need unscaling first); else none."""
    if config.adaptive_batches is not None:
        return _MicroNoiseProbe(model, device, config.accumulate, config.micro_batch, config.batch_size, scaler)
    if world > 1 and scaler is None:
        return _NoiseProbe(forward, device, config.rank_batch, config.batch_size)
    return None


class _Clock:
    """The run's training clock: started once the setup's work is done, stopped while the model is evaluated."""

    def __init__(self, device: torch.device, length: _Length):
        self.device, self.samples_per_epoch = device, length.samples_per_epoch
        self.started = self.eval_time = 0.0

    def start(self) -> None:
        devices.synchronize(self.device)  # sync: the setup's copies are done before the clock starts
        self.started = time.perf_counter()

    def wall(self) -> float:
        """Seconds since the start, evaluation included."""
        return time.perf_counter() - self.started

    def train_time(self, now: float | None = None) -> float:
        """Seconds of training since the start (at ``now``, a reading of the clock): evaluation left out."""
        return (time.perf_counter() if now is None else now) - self.started - self.eval_time

    @contextlib.contextmanager
    def stopped(self):
        """Work outside the training clock (evaluation): the device's queued work is done either side."""
        devices.synchronize(self.device)
        stopped = time.perf_counter()  # stop the clock
        yield
        devices.synchronize(self.device)
        self.eval_time += time.perf_counter() - stopped  # start the clock again

    def row(self, step: int, samples: int, loss: float, lr: float, throughput: float | None) -> dict:
        """A metrics row: where the run is (step, epoch, samples, wall and training time) and its values now."""
        wall = time.perf_counter() - self.started
        return {
            "step": step,
            "epoch": samples / self.samples_per_epoch,
            "samples": samples,
            "wall_time_s": wall,
            "train_time_s": wall - self.eval_time,
            "train_loss": loss,
            "lr": lr,
            "samples_per_s": throughput,
        }


class _Interval:
    """The logging interval: its mean training loss (kept on the device until read), its throughput in training
    time, and the noise probe's estimate, logged at its end; progress reported at most every PROGRESS_EVERY_S."""

    def __init__(
        self, log: RunLog, progress: Callable[[str, float], None], probe: _NoiseProbe | None, data: _Data, clock: _Clock
    ):
        self.run_log, self.progress, self.probe, self.data, self.clock = log, progress, probe, data, clock
        self.total_steps = data.length.total_steps
        self.losses = _IntervalLoss()
        self.last_train_time, self.last_samples = 0.0, 0
        self.last_progress = -math.inf  # the first logging step reports progress, then at most every PROGRESS_EVERY_S

    def log(self, step: int, samples: int, lr: float) -> None:
        devices.synchronize(self.clock.device)  # sync: the interval's steps are done before the clock is read
        now = time.perf_counter()
        mean_loss = float(ddp_util.mean_across_ranks(self.losses.mean()))
        train_time = self.clock.train_time(now)
        elapsed = train_time - self.last_train_time
        throughput = (samples - self.last_samples) / elapsed if elapsed > 0 else None
        row = self.clock.row(step, samples, mean_loss, lr, throughput)
        self.run_log.logged([row])
        if self.probe is not None:
            noise_rows = self.probe.log_rows(row)  # a collective: every rank computes, rank 0 logs
            self.run_log.logged_values(noise_rows)
            self.data.observe(noise_rows, row, samples, self.run_log)  # adaptive: the next phase when it calls for it
        self.losses.reset()
        self.last_train_time, self.last_samples = train_time, samples
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.progress(f"step {step}/{self.total_steps}, loss {mean_loss:.4f}", step / self.total_steps)
            self.last_progress = now

    def phase_started(self, step: int, samples: int, lr: float) -> None:
        """A batch schedule's new phase: logged as the value ``batch_size``, and the live noise probe's batches."""
        batch = self.data.batch
        if isinstance(self.probe, _MicroNoiseProbe):
            self.probe.batch_small, self.probe.batch_big = batch // self.data.config.accumulate, batch
        row = self.clock.row(step, samples, float("nan"), lr, None)
        self.run_log.logged_values([{**{k: row[k] for k in _INDEX}, "name": "batch_size", "value": batch}])


def _forward_backward(
    workload: Workload,
    forward: torch.nn.Module,
    model: torch.nn.Module,
    config: TrainConfig,
    device: torch.device,
    scaler,
    probe: _NoiseProbe | None,
    interval: _Interval,
):
    """The loop's forward and backward of one micro-batch, as a function of (micro-batch, whether the step's gradient
    is complete after it, steps done) that returns the micro-batch's loss (kept for the interval's mean).

    The loss is scaled so that accumulation averages; with DDP the gradient all-reduce runs inside the last
    micro-batch's backward only. Everything a call needs is looked up once, here: this runs every micro-batch.
    """
    autocast = devices.autocast(device, config.dtype)  # one context, entered every micro-batch
    accumulate, loss_fn, where = config.accumulate, workload.loss, workload.where
    log_every = interval.data.length.log_every
    arm = probe.arm if probe is not None and probe.every > 1 else None
    after_micro_batch = probe.after_micro_batch if isinstance(probe, _MicroNoiseProbe) else None
    keep = interval.losses.add

    def forward_backward(micro_batch, syncing: bool, step: int) -> torch.Tensor:
        if arm is not None:
            arm(step + 1, log_every)  # whether the step about to run is probed
        with _no_sync_unless(forward, syncing):
            with autocast:
                loss = batches.loss_of(loss_fn, batches.model_output(forward, micro_batch), micro_batch, where)
            scaled = loss / accumulate if accumulate > 1 else loss  # no op a step when not accumulating
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if after_micro_batch is not None:
            after_micro_batch(model)
        keep(loss)
        return loss

    return forward_backward


class _Divergence:
    """The training loss against its first value, on the first three steps and every ``check_every`` (each a sync)."""

    def __init__(self, config: TrainConfig, log: RunLog, clock: _Clock):
        self.factor, self.log, self.clock = config.divergence_factor, log, clock
        self.first: float | None = None

    def check(self, loss: torch.Tensor, step: int, lr: float, result: RunResult) -> None:
        """Raises Diverged, with a logged row, when the loss is not finite or above ``factor`` times its start."""
        current = float(ddp_util.mean_across_ranks(loss.detach().float()))  # sync (and all ranks agree)
        if self.first is None and math.isfinite(current):
            self.first = current
        if math.isfinite(current) and not (
            self.first is not None and self.first > 0 and current > self.factor * self.first
        ):
            return
        result.diverged, result.stop_reason = True, "diverged"
        self.log.logged([self.clock.row(step, result.samples, current, lr, None)])
        raise Diverged(_divergence(current, step, lr, self.first, self.factor))


class _Evaluation:
    """Validation every ``eval_every_samples`` and at the last step, outside the training clock: rank 0 evaluates
    and decides for every rank."""

    def __init__(
        self,
        model: torch.nn.Module,
        workload: Workload,
        device: torch.device,
        config: TrainConfig,
        length: _Length,
        log: RunLog,
        clock: _Clock,
        rank: int,
        world: int,
    ):
        self.model, self.workload, self.device, self.dtype = model, workload, device, config.dtype
        self.target, self.log, self.clock, self.rank, self.world = config.target_val_loss, log, clock, rank, world
        self.every = self.next = length.eval_every_samples  # the next evaluation: once this many samples are done

    def run(self, step: int, result: RunResult) -> str | None:
        """Evaluate and record it; "target" when the validation loss reached the target. Raises Diverged when it is
        not finite."""
        while self.next <= result.samples:
            self.next += self.every
        with self.clock.stopped():
            val_loss, metrics = (
                evaluate(self.model, self.workload, self.device, self.dtype) if self.rank == 0 else (None, {})
            )
            val_loss = ddp_util.broadcast_float(val_loss) if self.world > 1 else val_loss  # rank 0 decides for all
        train_time = self.clock.train_time()
        result.final_val_loss, result.final_metrics = val_loss, metrics
        result.best_val_loss = val_loss if result.best_val_loss is None else min(result.best_val_loss, val_loss)
        self.log.evaluated(
            step=step,
            epoch=result.samples / self.clock.samples_per_epoch,
            samples=result.samples,
            wall_time_s=self.clock.wall(),
            train_time_s=train_time,
            val_loss=val_loss,
            metrics=metrics,
        )
        if not math.isfinite(val_loss):
            result.diverged, result.stop_reason = True, "diverged"
            raise Diverged(
                f"validation loss {val_loss} at step {step}: the model's weights or the validation "
                f"data hold NaN or infinite values"
            )
        if self.target is not None and val_loss <= self.target:
            result.reached_target, result.time_to_target_s = True, train_time
            return "target"
        return None


def _started(
    log: RunLog,
    config: TrainConfig,
    workload: Workload,
    model: torch.nn.Module,
    data: _Data,
    world: int,
    compile_s: float | None,
    probe: _NoiseProbe | None,
    math_settings: dict,
) -> None:
    """The run's first report: its config and what it is made of."""
    log.started(
        config=asdict(config),
        **data.length.facts(),
        micro_batch=config.micro_batch,
        n_train=workload.n_train,
        n_params=sum(p.numel() for p in model.parameters()),
        on_device=data.source.on_device,
        world_size=world,
        backend=torch.distributed.get_backend() if world > 1 else None,
        compile_s=compile_s,
        noise_probe_every=probe.every if probe is not None else None,
        math_settings=math_settings,
    )


def _finished(
    result: RunResult, step: int, stop: str, clock: _Clock, model: torch.nn.Module, save_to: str | None, rank: int
) -> RunResult:
    """The run's record, once the device's queued work is done; its weights saved by rank 0 when asked."""
    devices.synchronize(clock.device)
    result.steps, result.stop_reason = step, stop
    result.epochs = result.samples / clock.samples_per_epoch
    result.wall_time_s = clock.wall()
    result.train_time_s = result.wall_time_s - clock.eval_time
    result.peak_memory_bytes = devices.peak_memory(clock.device)
    if result.peak_memory_bytes is None:
        result.peak_memory_bytes = _process_peak_rss()
    if save_to is not None and rank == 0:
        torch.save(model.state_dict(), save_to)
    return result


def _divergence(loss: float, step: int, lr: float, first_loss: float | None, factor: float) -> str:
    """Why a run diverged, in words that point at the cause: a loss not finite from the start is the data or
    the loss function (no learning rate makes the first step NaN), one that grew is the learning rate."""
    where = f"loss {loss:.4g} at step {step} (lr {lr:.3g})"
    if first_loss is None:
        return (
            f"{where}, not finite from the first step: look for NaN or infinite values in the training data "
            f"(inputs or targets) or the loss function"
        )
    if not math.isfinite(loss):
        return (
            f"{where} after starting at {first_loss:.4g}: the learning rate is too high for this batch, or a "
            f"later batch holds NaN or infinite values"
        )
    return (
        f"{where}, more than {factor:g} times its start {first_loss:.4g}: the learning rate is too high for this batch"
    )


def compile_before_clock(
    forward: torch.nn.Module, workload: Workload, device: torch.device, dtype: str, batch_sizes: tuple[int, ...]
) -> float:
    """Compile the forward and backward for each of ``batch_sizes`` (a batch shape each), outside the
    clock of the work that follows; their seconds.

    No optimizer step: the weights stay as initialised, the gradients are dropped. (A model with
    batch norm updates its running statistics once a size, as one more forward would.)
    """
    elapsed = 0.0
    for batch_size in dict.fromkeys(batch_sizes):
        batch = batches.to_device(workload.first_batch(batch_size), device)
        devices.synchronize(device)
        start = time.perf_counter()
        with devices.autocast(device, dtype):
            loss = workload.loss_of(batches.model_output(forward, batch), batch)
        loss.backward()
        devices.synchronize(device)
        elapsed += time.perf_counter() - start
        for parameter in forward.parameters():
            parameter.grad = None
    return elapsed


def _no_sync_unless(forward: torch.nn.Module, syncing: bool):
    """DDP's ``no_sync()`` for the micro-batches that only accumulate; nothing otherwise."""
    if syncing or not hasattr(forward, "no_sync"):
        return contextlib.nullcontext()
    return forward.no_sync()


class _NoiseProbe:
    """McCandlish's |G_small|² and |G_big|² from a data-parallel step, at no extra forward or backward.

    DDP's communication hook receives each gradient bucket of this rank before the all-reduce:
    the sum of their squared norms is |G_small|² for B_small = this rank's samples per step. After
    the backward, the parameters' gradients are the all-reduced mean over ranks: |G_big|² for
    B_big = the global batch. Sums stay on the device; at a logging step one scalar all-reduce
    averages |G_small|² over the ranks, then the estimator (largestep.measure.noise) gives |G|², tr(Σ), B_simple
    over the steps of the interval (averages first, then the ratio).
    """

    def __init__(
        self, ddp_model, device: torch.device, batch_small: int, batch_big: int, every: int = NOISE_PROBE_EVERY
    ):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.batch_small, self.batch_big = batch_small, batch_big
        self.small_sum = torch.zeros((), dtype=torch.float64, device=device)  # Σ over probed steps of local |g|²
        self.big_sum = torch.zeros((), dtype=torch.float64, device=device)  # Σ over probed steps of |all-reduced g|²
        self.steps = 0  # probed steps in the sums
        self.every, self.probing = every, True

        def hook(_state, bucket):
            if self.probing:
                self.small_sum += torch.linalg.vector_norm(bucket.buffer(), dtype=torch.float64) ** 2
            return allreduce_hook(None, bucket)  # the default: average over the ranks

        ddp_model.register_comm_hook(None, hook)

    def arm(self, step: int, log_every: int) -> None:
        """Whether optimizer step ``step`` (counted from 1) is probed: every ``every``-th, and each logging step, so
        that every logging interval has its estimate."""
        self.probing = step % self.every == 0 or step % log_every == 0

    def after_backward(self, model: torch.nn.Module) -> None:
        if not self.probing:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            self.big_sum += (
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]))
                ** 2
            )
        self.steps += 1

    def log_rows(self, row: dict) -> list[dict]:
        """Metric rows for this logging interval; resets the sums."""
        small = float(ddp_util.mean_across_ranks(self.small_sum)) / max(1, self.steps)  # sync
        big = float(self.big_sum) / max(1, self.steps)
        self.small_sum.zero_()
        self.big_sum.zero_()
        self.steps = 0
        g2, trace_sigma = noise_scale_from_norms(small, big, self.batch_small, self.batch_big)
        index = {k: row[k] for k in _INDEX}
        values = {
            "noise_g_small_sq": small,
            "noise_g_big_sq": big,
            "noise_g2": g2,
            "noise_trace_sigma": trace_sigma,
            # B_simple only where both estimates are positive: a single interval can be noisy
            "noise_scale": trace_sigma / g2 if g2 > 0 and trace_sigma > 0 else None,
        }
        return [
            {**index, "name": name, "value": value}
            for name, value in values.items()
            if value is not None and math.isfinite(value)
        ]


class _MicroNoiseProbe(_NoiseProbe):
    """McCandlish's |G_small|² and |G_big|² from the micro-batches of gradient accumulation, for an adaptive
    batch: each micro-batch's gradient is the change it made to the accumulated ``.grad`` (times the
    accumulation, since each loss is divided by it), and the accumulated gradient is the whole batch's.
    One flattened copy of the gradients per micro-batch: cheap next to a forward and backward of the
    small models this is for. The interval's estimate and its rows are the data-parallel probe's."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        accumulate: int,
        batch_small: int,
        batch_big: int,
        scaler=None,
    ):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.accumulate = accumulate
        self.batch_small, self.batch_big = batch_small, batch_big
        self.small_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.big_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.step_small = torch.zeros((), dtype=torch.float64, device=device)  # this step's, loss-scaled
        self.good_steps = torch.zeros((), dtype=torch.float64, device=device)  # steps with finite gradients
        self.steps = 0
        self.every, self.probing = 1, True  # every step: an adaptive batch follows its live noise scale
        self.scaler = scaler  # fp16: every gradient is the loss scale times the true one until unscaled
        self.previous: torch.Tensor | None = None  # the accumulated gradient before this micro-batch

    def _flat(self) -> torch.Tensor:
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64) for p in self.params]
        )

    def after_micro_batch(self, model: torch.nn.Module) -> None:
        flat = self._flat()
        change = flat if self.previous is None else flat - self.previous
        # its own gradient is accumulate x the change; the mean over the step's micro-batches
        self.step_small += (self.accumulate * change).dot(self.accumulate * change) / self.accumulate
        self.previous = flat

    def after_backward(self, model: torch.nn.Module) -> None:
        """The step's |G_big|² and mean |G_small|², divided by the loss scale squared under fp16 (before the
        scaler unscales or steps: the scale is the one the step's gradients carry). A step whose gradients
        overflowed (the scaler skips it) is left out, on the device, without a sync."""
        flat = self._flat()
        big = flat.dot(flat)
        small = self.step_small
        scale = self.scaler._get_scale_async() if self.scaler is not None else None
        if scale is not None:
            inverse = 1.0 / scale.double() ** 2
            big, small = big * inverse, small * inverse
        finite = torch.isfinite(big) & torch.isfinite(small)
        self.big_sum += torch.where(finite, big, torch.zeros_like(big))
        self.small_sum += torch.where(finite, small, torch.zeros_like(small))
        self.good_steps += finite.double()
        self.step_small = torch.zeros_like(self.step_small)
        self.previous = None  # the optimizer step clears the gradients

    def log_rows(self, row: dict) -> list[dict]:
        self.steps = int(self.good_steps)  # sync, once an interval
        self.good_steps.zero_()
        return super().log_rows(row)


class _IntervalLoss:
    """The mean training loss of a logging interval, kept on the device with no arithmetic a step.

    Each micro-batch's loss is kept (detached: a new view, no kernel) and summed only when the mean is
    read, or every ``FOLD_EVERY`` losses so that a long interval holds a bounded list. Adding into one
    running tensor instead costs an in-place add (a dispatch on the CPU, a kernel on a GPU) every step.
    """

    FOLD_EVERY = 1024

    def __init__(self):
        self.kept: list[torch.Tensor] = []
        self.folded: torch.Tensor | None = None  # the sum of the losses folded so far, in float32
        self.folded_count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.kept.append(loss.detach())
        if len(self.kept) == self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        part = torch.stack(self.kept).float().sum()  # in float32, as autocast losses may be lower
        self.folded = part if self.folded is None else self.folded + part
        self.folded_count += len(self.kept)
        self.kept = []

    def mean(self) -> torch.Tensor:
        """The interval's mean loss so far (at least one loss kept), on the device: reading it is the caller's sync."""
        if self.kept:
            self._fold()
        return self.folded / self.folded_count

    def reset(self) -> None:
        self.kept, self.folded, self.folded_count = [], None, 0


def _process_peak_rss() -> int | None:
    """The job process's peak resident memory: on CPU the run's real peak (data, model, everything)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None
