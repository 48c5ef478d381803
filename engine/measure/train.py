"""The training loop, run as a job: real training of a workload at one batch size and learning rate.

Reads top to bottom: configuration, data, model and optimizer, the loop (forward backward
update; logging; evaluation outside the training clock; termination), and the final record.

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
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Protocol

import torch

from ..errors import Diverged, UsageError
from . import batch_schedule, devices
from . import distributed as ddp_util
from .train_config import TrainConfig
from ..workloads import batches
from ..workloads.base import Workload
from ..workloads.names import SCHEDULES

__all__ = ["TrainConfig", "RunResult", "RunLog", "NullLog", "train", "lr_at", "lr_factor", "SCHEDULES",
           "TensorBatches", "training_batches"]

WSD_DEFAULT_DECAY = 0.2   # "wsd" without decay_samples: the last fifth of the run decays
NOISE_PROBE_EVERY = 8     # data-parallel: the noise probe reads the gradients' norms on every 8th step (and on each
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


PROGRESS_EVERY_S = 1.0  # progress reported at most this often: a job's report rewrites and fsyncs its status
                        # file (about 250 µs of CPU and 0.5 ms of wall time), and its heartbeat runs at 1 s


@dataclass
class RunResult:
    steps: int = 0
    samples: int = 0
    epochs: float = 0.0
    wall_time_s: float = 0.0               # everything, evaluation included
    train_time_s: float = 0.0              # training only: evaluation is outside this clock
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_metrics: dict = field(default_factory=dict)
    reached_target: bool = False
    time_to_target_s: float | None = None  # training time at the first evaluation at or below the target
    peak_memory_bytes: int | None = None
    diverged: bool = False
    stop_reason: str = "epochs"            # epochs | target | max_steps | diverged


def lr_factor(samples_seen: int, warmup_samples: int, total_samples: int, schedule: str = "constant",
              decay_samples: int | None = None) -> float:
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


def lr_at(samples_seen: int, peak_lr: float, warmup_samples: int, total_samples: int, schedule: str = "constant",
          decay_samples: int | None = None) -> float:
    """Learning rate for the optimizer step about to run (one parameter group at ``peak_lr``)."""
    return peak_lr * lr_factor(samples_seen, warmup_samples, total_samples, schedule, decay_samples)


class TensorBatches:
    """Per-epoch shuffled batches; on the device when the data fits, else each batch pinned + prefetched.
    (The profiler steps on data left on the host through this same path.)

    With ``world > 1`` every rank draws the same permutation (from the seed) and each global
    micro-step of ``micro_batch * world`` samples is cut into ``world`` disjoint shards; rank r
    takes the r-th. So the union of the shards is exactly the single-process micro-batch.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], device: torch.device, micro_batch: int, seed: int,
                 rank: int = 0, world: int = 1):
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
        span = self.micro_batch * self.world           # one global micro-step, all ranks together
        starts = range(self.rank * self.micro_batch, self.n - span + 1 + self.rank * self.micro_batch, span)
        if self.on_device:
            for start in starts:
                index = order[start:start + self.micro_batch]
                yield tuple(t.index_select(0, index) for t in self.tensors)
        else:
            # copy the next batch while the current one computes
            pending = None
            for start in starts:
                index = order[start:start + self.micro_batch]
                batch = tuple(t.index_select(0, index).pin_memory().to(self.device, non_blocking=True)
                              for t in self.tensors)
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

    def __init__(self, workload: Workload, device: torch.device, micro_batch: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.device = device
        self.n = workload.n_train
        self.order = batches.EpochOrder(self.n, micro_batch, seed, rank, world)
        self.loader = batches.make_loader(workload, "train", device, sampler=self.order)

    def epoch(self, epoch: int):
        self.order.set_epoch(epoch)
        if self.device.type == "cpu":   # the loader's batches are in host memory already: nothing to copy
            yield from self.loader
            return
        for batch in self.loader:
            yield batches.to_device(batch, self.device, non_blocking=self.loader.pin_memory)

    def steps_per_epoch(self, accumulate: int) -> int:
        return len(self.order) // accumulate


def training_batches(workload: Workload, device: torch.device, micro_batch: int, seed: int, rank: int = 0,
                     world: int = 1) -> TensorBatches | _LoaderBatches:
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
        yield tuple(t[start:start + batch].to(device, non_blocking=True) for t in workload.val)


def _as_float(output):
    """A low-precision (autocast) tensor output as float32, so the loss and metrics are computed in full."""
    return output.float() if isinstance(output, torch.Tensor) else output


@torch.no_grad()
def evaluate(model: torch.nn.Module, workload: Workload, device: torch.device, dtype: str,
             batch: int = 4096) -> tuple[float, dict[str, float]]:
    """Validation loss (sample-weighted mean) and the workload's metrics on the whole validation set.

    Metrics score the logits (``out["logits"]``/``out.logits`` for models that return more) against
    the targets (a dict batch's ``labels``).
    """
    if workload.uses_dataset:
        batch = min(batch, 256)   # items may be large (images, sequences); a loader batch is held whole
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


def train(workload: Workload, device: torch.device, config: TrainConfig,
          log: RunLog | None = None,
          progress: Callable[[str, float], None] = lambda phase, fraction: None,
          should_stop: Callable[[], bool] = lambda: False, save_to: str | None = None) -> RunResult:
    """Train once, reporting to ``log`` as it goes. Raises Diverged when the loss explodes.

    With ``config.nproc > 1`` this runs in each of the ranks of a process group (see
    :mod:`largestep.jobs.torchrun`); only rank 0 reports to ``log`` and ``progress``.
    """
    config.validate()
    config = replace(config, schedule=config.schedule or workload.schedule)  # recorded as run
    devices.check_dtype(device, config.dtype)
    world, rank = ddp_util.world_size(), ddp_util.rank()
    if config.nproc != world:
        raise UsageError(f"--nproc {config.nproc} needs a process group of {config.nproc} ranks (launched by the job "
                         f"runner); this one has {world}")
    if config.batch_size > workload.n_train:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the {workload.n_train} training samples")
    phases = batch_schedule.check_batch_schedule(tuple(tuple(p) for p in config.batch_schedule), workload.n_train) \
        if config.batch_schedule else None
    adaptive = config.adaptive_batches is not None
    if adaptive:  # one phase to start with; the run adds one each time its noise scale calls for a larger batch
        phases = ((config.batch_size, 0.0),)
    if log is None or rank != 0:  # one voice: rank 0 logs for the run
        log = NullLog()
    if rank != 0:
        progress = lambda phase, fraction: None  # noqa: E731

    # -- setup: TF32 and cuDNN, data, model, optimizer -----------------------------------------------
    math_settings = devices.use_math(workload, config.tf32)   # recorded with the run, as a profile records its own
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    source = training_batches(workload, device, config.micro_batch, config.seed, rank, world)
    model = workload.model().to(device)
    model.train()
    forward, probe = model, None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(config.seed + 1_000_003 * rank)  # dropout and other noise: independent per rank
    compile_s = None
    if config.compile:
        forward = devices.compile_model(forward)
        compile_s = compile_before_clock(forward, workload, device, config.dtype, (config.micro_batch,))
    optimizer = workload.make_optimizer(model, config.lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # each group's own peak rate
    scaler = torch.amp.GradScaler(device.type) if devices.needs_grad_scaler(device, config.dtype) else None
    if world > 1 and scaler is None:  # a loss-scaled gradient would need unscaling first: fp16 goes without
        probe = _NoiseProbe(forward, device, config.rank_batch, config.batch_size)
    trend = batch_schedule.NoiseTrend(config.seed) if adaptive else None
    if adaptive:   # the live noise scale from each step's micro-batches (loss-scaled ones unscaled)
        probe = _MicroNoiseProbe(model, device, config.accumulate, config.micro_batch, config.batch_size, scaler)
    epochs = config.epochs if config.epochs is not None else workload.epochs
    warmup = config.warmup_samples if config.warmup_samples is not None else workload.default_warmup_samples()
    steps_per_epoch = source.steps_per_epoch(config.accumulate)
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the {workload.n_train} training samples")
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    samples_per_epoch = steps_per_epoch * config.batch_size
    if phases is not None:  # the same samples as at the first batch, in fewer steps as the batch grows
        total_steps = batch_schedule.scheduled_steps(phases, total_steps * config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    total_samples = total_steps * config.batch_size if phases is None else \
        max(1, math.ceil(epochs * steps_per_epoch)) * config.batch_size
    log_every = config.log_every_steps or max(1, steps_per_epoch // 20)
    # evaluation in samples, so a batch that grows does not make it rarer
    eval_every_samples = max(1, round(config.eval_every_epochs * steps_per_epoch)) * config.batch_size
    next_eval = eval_every_samples
    devices.reset_peak_memory(device)
    log.started(config=asdict(config), epochs=epochs, warmup_samples=warmup, steps_per_epoch=steps_per_epoch,
         total_steps=total_steps, micro_batch=config.micro_batch, n_train=workload.n_train,
         n_params=sum(p.numel() for p in model.parameters()), on_device=source.on_device, world_size=world,
         backend=torch.distributed.get_backend() if world > 1 else None, compile_s=compile_s,
         noise_probe_every=probe.every if probe is not None else None, math_settings=math_settings)

    result = RunResult()
    interval_loss = _IntervalLoss()   # read at logging intervals
    first_loss: float | None = None
    eval_time = 0.0
    devices.synchronize(device)  # sync: the setup's copies are done before the clock starts
    start = time.perf_counter()
    last_log_time, last_log_samples = start, 0
    last_progress_time = -math.inf   # the first logging step reports progress, then at most every PROGRESS_EVERY_S
    step = 0
    epoch = 0
    done = False
    batch_now = config.batch_size   # samples per optimizer step; a batch schedule changes it between phases
    autocast = devices.autocast(device, config.dtype)   # one context, entered every micro-batch
    accumulate, where = config.accumulate, workload.where
    factor_set = None               # the schedule's multiple the parameter groups run at now

    while not done:
        micro = 0
        epoch_batches = source.epoch(epoch)
        for micro_batch in epoch_batches:
            micro += 1
            if probe is not None and probe.every > 1:
                probe.arm(step + 1, log_every)
            # forward backward (one micro-batch; the loss is scaled so accumulation averages); with
            # DDP the gradient all-reduce runs inside the last micro-batch's backward only
            syncing = micro % accumulate == 0
            with _no_sync_unless(forward, syncing):
                with autocast:
                    loss = batches.loss_of(workload.loss, batches.model_output(forward, micro_batch), micro_batch,
                                           where)
                scaled = loss / accumulate if accumulate > 1 else loss   # no op a step when not accumulating
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if isinstance(probe, _MicroNoiseProbe):
                probe.after_micro_batch(model)
            interval_loss.add(loss)
            if not syncing:
                continue
            # update
            factor = lr_factor(result.samples, warmup, total_samples, config.schedule, workload.decay_samples)
            if phases is not None:
                factor *= batch_schedule.lr_multiple(phases, result.samples, total_samples, warmup,
                                                     config.batch_schedule_rule)
            if factor != factor_set:   # constant stretches (after warm-up, wsd's stable phase) set nothing a step
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr * factor
                factor_set = factor
            lr = config.lr * factor  # the rate logged: the run's peak rate times the schedule
            if probe is not None:
                probe.after_backward(model)
            if workload.max_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), workload.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.samples += batch_now

            # divergence: a sync every few steps, not every step
            if step % config.check_every == 0 or step <= 3:
                current = float(ddp_util.mean_across_ranks(loss.detach().float()))  # sync (and all ranks agree)
                if first_loss is None and math.isfinite(current):
                    first_loss = current
                if not math.isfinite(current) or (first_loss is not None and first_loss > 0
                                                  and current > config.divergence_factor * first_loss):
                    result.diverged, result.stop_reason = True, "diverged"
                    log.logged([_row(step, result.samples, samples_per_epoch, start, eval_time,
                                               current, lr, None)])
                    raise Diverged(_divergence(current, step, lr, first_loss, config.divergence_factor))

            # timing and logging
            if step % log_every == 0:
                devices.synchronize(device)  # sync: the interval's steps are done before the clock is read
                now = time.perf_counter()
                mean_loss = float(ddp_util.mean_across_ranks(interval_loss.mean()))
                train_elapsed = (now - last_log_time)
                throughput = (result.samples - last_log_samples) / train_elapsed if train_elapsed > 0 else None
                row = _row(step, result.samples, samples_per_epoch, start, eval_time, mean_loss, lr, throughput)
                log.logged([row])
                if probe is not None:
                    noise_rows = probe.log_rows(row)  # a collective: every rank computes, rank 0 logs
                    log.logged_values(noise_rows)
                    if adaptive:  # the next phase starts when the smoothed noise scale's interval calls for it
                        grown = _adaptive_look(trend, noise_rows, row, batch_now, config, workload.n_train, log)
                        if grown is not None and result.samples < total_samples:
                            phases = (*phases, (grown, result.samples / total_samples))
                interval_loss.reset()
                last_log_time, last_log_samples = now, result.samples
                if now - last_progress_time >= PROGRESS_EVERY_S:
                    progress(f"step {step}/{total_steps}, loss {mean_loss:.4f}", step / total_steps)
                    last_progress_time = now

            # evaluation, outside the training clock
            last_step = step >= total_steps or result.samples >= total_samples
            if result.samples >= next_eval or last_step:
                while next_eval <= result.samples:
                    next_eval += eval_every_samples
                devices.synchronize(device)
                eval_start = time.perf_counter()  # stop the clock
                val_loss, metrics = (evaluate(model, workload, device, config.dtype) if rank == 0
                                     else (None, {}))
                val_loss = ddp_util.broadcast_float(val_loss) if world > 1 else val_loss  # rank 0 decides for all
                devices.synchronize(device)
                eval_time += time.perf_counter() - eval_start  # start the clock again
                last_log_time += time.perf_counter() - eval_start  # throughput excludes evaluation
                train_time = time.perf_counter() - start - eval_time
                result.final_val_loss, result.final_metrics = val_loss, metrics
                result.best_val_loss = val_loss if result.best_val_loss is None else min(result.best_val_loss, val_loss)
                log.evaluated(step=step, epoch=result.samples / samples_per_epoch, samples=result.samples,
                     wall_time_s=time.perf_counter() - start, train_time_s=train_time, val_loss=val_loss,
                     metrics=metrics)
                if not math.isfinite(val_loss):
                    result.diverged, result.stop_reason = True, "diverged"
                    raise Diverged(f"validation loss {val_loss} at step {step}: the model's weights or the validation "
                                   f"data hold NaN or infinite values")
                if config.target_val_loss is not None and val_loss <= config.target_val_loss:
                    result.reached_target, result.time_to_target_s = True, train_time
                    result.stop_reason = "target"
                    done = True
                    break

            # termination
            if last_step:
                result.stop_reason = "max_steps" if config.max_steps is not None and step >= config.max_steps \
                    else "epochs"
                done = True
                break
            if should_stop():
                result.stop_reason = "stopped"
                done = True
                break

            # the batch schedule's next phase: a new source of batches at its batch, from a fresh shuffle
            if phases is not None:
                batch_next = phases[batch_schedule.phase_index(phases, result.samples, total_samples)][0]
                if batch_next != batch_now:
                    batch_now = batch_next
                    # the old phase's source, and its copy of the data on the device, go before the next phase
                    # makes its own: the two copies at once would need twice the room the run was planned with
                    epoch_batches.close()
                    del source, micro_batch
                    source = training_batches(workload, device, batch_now // config.accumulate, config.seed, rank,
                                              world)
                    if isinstance(probe, _MicroNoiseProbe):
                        probe.batch_small, probe.batch_big = batch_now // config.accumulate, batch_now
                    row = _row(step, result.samples, samples_per_epoch, start, eval_time, float("nan"), lr, None)
                    log.logged_values([{**{k: row[k] for k in _INDEX}, "name": "batch_size", "value": batch_now}])
                    break
        epoch += 1

    devices.synchronize(device)
    result.steps = step
    result.epochs = result.samples / samples_per_epoch
    result.wall_time_s = time.perf_counter() - start
    result.train_time_s = result.wall_time_s - eval_time
    result.peak_memory_bytes = devices.peak_memory(device)
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
        return (f"{where}, not finite from the first step: look for NaN or infinite values in the training data "
                f"(inputs or targets) or the loss function")
    if not math.isfinite(loss):
        return (f"{where} after starting at {first_loss:.4g}: the learning rate is too high for this batch, or a "
                f"later batch holds NaN or infinite values")
    return f"{where}, more than {factor:g} times its start {first_loss:.4g}: the learning rate is too high for this batch"


def compile_before_clock(forward: torch.nn.Module, workload: Workload, device: torch.device, dtype: str,
                         batch_sizes: tuple[int, ...]) -> float:
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


def _adaptive_look(trend, noise_rows: list[dict], row: dict, batch: int, config, n_train: int, log) -> int | None:
    """Feed one logging interval's |G|² and tr(Σ) to the smoothed noise scale, log it with its interval, and
    return the batch to grow into (None: stay)."""
    values = {r["name"]: r["value"] for r in noise_rows}
    trend.add(values.get("noise_g2"), values.get("noise_trace_sigma"))
    estimate = trend.estimate()
    if estimate is not None:
        index = {k: row[k] for k in ("step", "epoch", "samples", "wall_time_s", "train_time_s")}
        smoothed = zip(("noise_scale_smoothed", "noise_scale_low", "noise_scale_high"), estimate)
        log.logged_values([{**index, "name": name, "value": value} for name, value in smoothed if value is not None])
    return trend.grown(batch, tuple(config.adaptive_batches), config.adaptive_multiple, n_train, estimate)


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

    def __init__(self, ddp_model, device: torch.device, batch_small: int, batch_big: int,
                 every: int = NOISE_PROBE_EVERY):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.batch_small, self.batch_big = batch_small, batch_big
        self.small_sum = torch.zeros((), dtype=torch.float64, device=device)  # Σ over probed steps of local |g|²
        self.big_sum = torch.zeros((), dtype=torch.float64, device=device)    # Σ over probed steps of |all-reduced g|²
        self.steps = 0                                                        # probed steps in the sums
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
            self.big_sum += torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])) ** 2
        self.steps += 1

    def log_rows(self, row: dict) -> list[dict]:
        """Metric rows for this logging interval; resets the sums."""
        from .noise import noise_scale_from_norms

        small = float(ddp_util.mean_across_ranks(self.small_sum)) / max(1, self.steps)  # sync
        big = float(self.big_sum) / max(1, self.steps)
        self.small_sum.zero_()
        self.big_sum.zero_()
        self.steps = 0
        g2, trace_sigma = noise_scale_from_norms(small, big, self.batch_small, self.batch_big)
        index = {k: row[k] for k in ("step", "epoch", "samples", "wall_time_s", "train_time_s")}
        values = {"noise_g_small_sq": small, "noise_g_big_sq": big, "noise_g2": g2, "noise_trace_sigma": trace_sigma,
                  # B_simple only where both estimates are positive: a single interval can be noisy
                  "noise_scale": trace_sigma / g2 if g2 > 0 and trace_sigma > 0 else None}
        return [{**index, "name": name, "value": value} for name, value in values.items()
                if value is not None and math.isfinite(value)]


class _MicroNoiseProbe(_NoiseProbe):
    """McCandlish's |G_small|² and |G_big|² from the micro-batches of gradient accumulation, for an adaptive
    batch: each micro-batch's gradient is the change it made to the accumulated ``.grad`` (times the
    accumulation, since each loss is divided by it), and the accumulated gradient is the whole batch's.
    One flattened copy of the gradients per micro-batch: cheap next to a forward and backward of the
    small models this is for. The interval's estimate and its rows are the data-parallel probe's."""

    def __init__(self, model: torch.nn.Module, device: torch.device, accumulate: int, batch_small: int,
                 batch_big: int, scaler=None):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.accumulate = accumulate
        self.batch_small, self.batch_big = batch_small, batch_big
        self.small_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.big_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.step_small = torch.zeros((), dtype=torch.float64, device=device)   # this step's, loss-scaled
        self.good_steps = torch.zeros((), dtype=torch.float64, device=device)   # steps with finite gradients
        self.steps = 0
        self.every, self.probing = 1, True   # every step: an adaptive batch follows its live noise scale
        self.scaler = scaler   # fp16: every gradient is the loss scale times the true one until unscaled
        self.previous: torch.Tensor | None = None   # the accumulated gradient before this micro-batch

    def _flat(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                          for p in self.params])

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
        self.previous = None   # the optimizer step clears the gradients

    def log_rows(self, row: dict) -> list[dict]:
        self.steps = int(self.good_steps)   # sync, once an interval
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
        self.folded: torch.Tensor | None = None   # the sum of the losses folded so far, in float32
        self.folded_count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.kept.append(loss.detach())
        if len(self.kept) == self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        part = torch.stack(self.kept).float().sum()   # in float32, as autocast losses may be lower
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


_INDEX = ("step", "epoch", "samples", "wall_time_s", "train_time_s")   # where a metric row sits in the run


def _row(step: int, samples: int, samples_per_epoch: int, start: float, eval_time: float, loss: float, lr: float,
         throughput: float | None) -> dict:
    wall = time.perf_counter() - start
    return {"step": step, "epoch": samples / samples_per_epoch, "samples": samples, "wall_time_s": wall,
            "train_time_s": wall - eval_time, "train_loss": loss, "lr": lr, "samples_per_s": throughput}
