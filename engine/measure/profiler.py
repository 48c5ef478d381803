"""Measure how training-step time, throughput and memory grow with batch size.

One visit to a batch size (:func:`measure_point`): the model and optimizer (fresh for each size
measured contiguously; in interleaved rounds one :class:`Trainee`, built once and stepped by every
visit, whose FLOPs are counted once a size), untimed warm-up steps, at most ``warmup_steps``, ending
at the first not faster than the one before it (the steady state; with fp16, not before the loss
scaler stops skipping updates; one step when a round returns to a size; on the CPU, where each step
is timed alone, the two steps that showed the steady state are the first timed ones), then full
training steps (data slicing, forward, backward, optimizer step) timed in blocks between two device
synchronisations
(on a GPU about 50 ms of steps a block, so the host queues ahead as in training; on the CPU one
step a block, except a Dataset's: see below), repeated until the visit's share of ``min_steps``
blocks and ``min_seconds`` seconds has been timed. Raw times (per step, one per block) are kept;
the median, quartiles and a noisy flag are derived from them. The first warm-up step of a size runs
under saved-tensor hooks (the CPU memory estimate) and ``FlopCounterMode`` (FLOPs): untimed, as the
instruments slow it. Once two sizes' counts show the FLOPs proportional to the batch, exactly, the
larger sizes take theirs scaled, uncounted (see :class:`FlopCounts`).

On a shared machine, load comes and goes; measured in one contiguous block each, some batch sizes
would get it and others not, and step time could even fall as the batch grows. So the sweep
measures in interleaved rounds (``rounds``; as Google Benchmark's random interleaving does): a
quick first pass in increasing order finds the range (the out-of-memory ceiling, the budget, the
plateau, the dataset size); then each round visits every batch size found, in a shuffled order,
for its share of the steps, until each has at least ``min_steps`` steps and ``min_seconds``
seconds, so drift and background load fall on all sizes alike. Then the physics check
(:func:`largestep.curve.physics_problems`): throughput rising faster than the batch between two sizes (a
step time falling by more than the machine's quiet spread), or a point far above its neighbours' trend,
cannot be the hardware; such points are measured again (``remeasure``), and a profile that stays
inconsistent is flagged with the reason.

A point's step time is the config's ``estimator`` of its raw times (:mod:`largestep.curve`: by default a low
quantile, as interference only ever adds time), with the median and quartiles beside it.

Dataset workloads are timed twice per batch size: the step as training runs it, the batch read
through the workload's DataLoader (workers, collate_fn, pinning) and copied to the device inside
the clock; and the compute alone, stepping on a few batches already on the device, the two kinds
of step alternating in rounds (in shuffled order) so that the machine's drift falls on both. Both
are timed in blocks of consecutive steps on every device (about 50 ms a block; whole epochs when an
epoch is shorter): a loader's costs fall on some steps only (each epoch's start, a slow read now and
then), and a block carries them in the proportion a training loop pays them, where the median of
single steps would leave them out. The garbage collector's pauses, rarer still (a full collection
once in a hundred or more steps), are spread over all the blocks at their measured rate. The
first is the point's step time (it is what training gets); when it exceeds the compute alone by more than
``input_bound_ratio`` the point is "input-bound": the loader limits throughput there, and a larger
batch will not help until the input pipeline is faster.

The sweep stops cleanly at the first out-of-memory error, a memory budget, a throughput
plateau, the dataset size or the maximum batch size; it never crashes on one bad point.

Data-parallel (``nproc > 1``, each rank in a process group started by :mod:`largestep.jobs.torchrun`):
every batch size is a global batch, each rank steps on its shard through DistributedDataParallel,
so the timed step includes the gradient all-reduce and the recommendation accounts for it. A
barrier starts each timed step on all ranks together; rank 0's clock is the one recorded (power is every
rank's GPU summed, so energy per sample is the group's over the global batch); every
stop-or-go decision is rank 0's, broadcast, so all ranks run the same collectives. FLOPs are
the global batch's (one rank's count times the ranks).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import curve
from ..errors import Cancelled
from . import devices
from . import distributed as ddp_util
from .profiler_config import MAX_ROUNDS, WARMUP_AGREEMENT, ProfileConfig, plan_batch_sizes
from .train import TensorBatches
from ..workloads import batches
from ..workloads.base import Workload

__all__ = [
    "ProfileConfig",
    "ProfilePoint",
    "ProfileResult",
    "MemoryFit",
    "plan_batch_sizes",
    "run_profile",
    "with_points",
    "saturation_batch",
    "fit_memory",
    "physics_problems",
    "StepRunner",
    "time_in_blocks",
    "block_steps_for",
]

OK, OOM, OVER_BUDGET, ERROR = "ok", "oom", "over_budget", "error"


BLOCK_SECONDS = 0.05  # GPU: steps are timed in blocks of about this long between two syncs ...
MAX_BLOCK_STEPS = 64  # ... of at most this many steps
SIZING_STEPS = 3  # GPU: untimed steps, each between two syncs, whose fastest sizes the blocks (unless
# the warm-up ended on two steps that agreed: those size them)
MAX_SCALER_BACKOFFS = 32  # fp16: extra warm-up steps while the loss scaler still skips updates, at most
QUIET_PATIENCE = 2  # interleaved, a size is visited up to this many times its rounds while other processes
# contend for the cores it needs, so that its timed steps come from uncontended visits
CONTENTION_SLACK_CORES = curve.CONTENTION_SLACK_CORES  # beyond the spare cores, before a visit counts as contended
MAX_REASONS = 2  # an inconsistent profile's flag names this many of its physics problems, then counts the rest
REVISIT_WARMUP_STEPS = 1  # untimed steps when a visit returns to a batch size the shared model already ran (an
# accelerator: its kernels' queue and caches; on the CPU none: the median of a size's
# steps leaves out one slower first step)


@dataclass(frozen=True)
class ProfilePoint:
    batch_size: int
    status: str  # ok | oom | over_budget | error
    step_times_s: tuple[float, ...] = ()  # raw, one per timed block of steps (Dataset workloads: loader included)
    median_s: float | None = None
    estimate_s: float | None = None  # the step time: the config's estimator of the raw times (see largestep.curve)
    p25_s: float | None = None
    p75_s: float | None = None
    noisy: bool = False  # IQR/median above the config's threshold
    samples_per_s: float | None = None  # batch_size / estimate_s
    peak_memory_bytes: int | None = None
    memory_is_estimate: bool = False  # CPU: parameters + grads + optimizer state + saved activations
    predicted_memory_bytes: int | None = None  # from the fit, for points refused before running
    flops_per_step: float | None = None
    flops_per_s: float | None = None
    mean_power_w: float | None = None
    energy_per_sample_j: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    compute_median_s: float | None = None  # Dataset workloads: the step on batches already on the device
    input_bound: bool = False  # the loader, not the compute, limits throughput at this batch
    compile_s: float | None = None  # --compile: the first step, which compiles for this batch shape
    visits: int = 1  # interleaved visits whose timed steps make up step_times_s
    remeasured: int = 0  # times the physics check sent this point back to be measured again
    inconsistent: bool = False  # still not physics after every re-measure (see physics_problems)
    timed_s: float | None = None  # seconds inside the timed steps (with blocks of several steps, more than
    # the sum of step_times_s, which holds one time a step per block)
    others_busy_cores: float | None = None  # CPU cores other processes kept busy while the steps kept were timed
    loaded_visits: int = 0  # visits set aside: other processes contended for the cores this size needs
    under_load: bool = False  # too few uncontended visits: the steps kept include contended ones
    warmup_steps: int | None = None  # untimed steps the size's first visit took before its clock started (the
    # first, instrumented step included): fewer than --warmup-steps once steady

    @property
    def n(self) -> int:
        return len(self.step_times_s)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["step_times_s"] = list(self.step_times_s)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ProfilePoint":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["step_times_s"] = tuple(known.get("step_times_s") or ())
        return cls(**known)


@dataclass(frozen=True)
class MemoryFit:
    """Peak memory m(B) ~ intercept + slope * B, least squares over the measured points."""

    intercept_bytes: float
    slope_bytes: float

    def predict(self, batch_size: int) -> float:
        return self.intercept_bytes + self.slope_bytes * batch_size

    def max_batch(self, budget_bytes: int) -> int | None:
        if self.slope_bytes <= 0:
            return None
        return max(0, int((budget_bytes - self.intercept_bytes) // self.slope_bytes))


@dataclass(frozen=True)
class ProfileResult:
    workload: str
    device: dict
    config: ProfileConfig
    points: tuple[ProfilePoint, ...]
    stop_reason: str  # max | list | dataset | oom | over_budget | plateau | error
    saturation_batch: int | None
    memory_fit: MemoryFit | None
    started_at: float
    ended_at: float
    n_train: int = 0
    extra: dict = field(default_factory=dict)
    inconsistency: str | None = None  # why the step times cannot be physics after re-measuring; None: they can


# -- planning ----------------------------------------------------------------------------------


# -- one batch size ----------------------------------------------------------------------------


@dataclass
class Trainee:
    """A model being trained, with its optimizer: built once and shared by every visit of an interleaved
    sweep (a step takes as long whatever the weights' values; building it again for every visit would
    cost more than the visit measures, and a GPU cannot hold one copy a batch size)."""

    model: torch.nn.Module
    forward: torch.nn.Module  # the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None

    @classmethod
    def build(
        cls,
        workload: Workload,
        device: torch.device,
        dtype: str = "fp32",
        seed: int = 0,
        data_parallel: bool = False,
        compile: bool = False,
    ) -> "Trainee":
        torch.manual_seed(seed)
        model = workload.model().to(device)
        model.train()
        forward = model
        if data_parallel and ddp_util.world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            forward = devices.compile_model(forward)
        optimizer = workload.make_optimizer(model, workload.baseline_lr)
        scaler = torch.amp.GradScaler(device.type) if devices.needs_grad_scaler(device, dtype) else None
        return cls(model, forward, optimizer, scaler)


@dataclass
class FlopCounts:
    """The FLOPs of a step at each batch size a sweep counted them, on the size's first step
    (FlopCounterMode), and what they say about the larger sizes.

    Counting runs every op of the step through Python: at a large batch it costs as much as another
    step. Two sizes whose counts are the same FLOPs per sample, exactly, prove the count proportional
    to the batch (a term that stays fixed, or grows faster than the batch, would make them differ), and
    a larger size then takes its FLOPs scaled from them instead of counted."""

    counted: dict[int, float] = field(default_factory=dict)  # {batch size: FLOPs of one step}

    def scaled(self, batch_size: int) -> float | None:
        """The FLOPs of a step at ``batch_size``, when two sizes or more were counted and every one gave the
        same FLOPs per sample; None otherwise (count them)."""
        if len(self.counted) < 2:
            return None
        (first_batch, first), *others = self.counted.items()
        if any(int(flops) * first_batch != int(first) * batch for batch, flops in others):  # exact, in integers
            return None
        return first * batch_size / first_batch


@dataclass(frozen=True)
class FirstVisit:
    """What the first visit to a batch size found, which a later visit stepping the same model reuses."""

    flops: float | None  # of one step (counted or scaled, see FlopCounts)
    activation_bytes: int  # saved for backward by one step
    block_steps: int  # steps a timed block holds
    warmup_steps: int  # untimed steps before its clock started (see ProfilePoint.warmup_steps)


class StepRunner:
    """Full training steps of one workload at one batch size on one device.

    Tensor workloads: the data lives on the device (moved once, outside the clock) and is
    shuffled once; each step slices the next contiguous batch, so slicing is inside the timed
    step as it is in a real training loop. Data too large for the device stays on the host, and each
    step takes its batch as training does (gathered, pinned, copied one batch ahead). Dataset workloads: each step takes the next batch
    from the workload's DataLoader and copies it to the device, as training does;
    :meth:`timed_loader_and_compute_steps` also times steps on batches already on the device.
    """

    def __init__(
        self,
        workload: Workload,
        device: torch.device,
        batch_size: int,
        dtype: str = "fp32",
        seed: int = 0,
        data: tuple[torch.Tensor, ...] | None = None,
        data_parallel: bool = False,
        compile: bool = False,
        trainee: Trainee | None = None,
    ):
        self.workload = workload
        self.device = device
        self.batch_size = batch_size  # the global batch; with data_parallel each rank steps on its shard
        self.world = ddp_util.world_size() if data_parallel else 1
        self.rank = ddp_util.rank() if data_parallel else 0
        self.dtype = dtype
        # a fresh model and optimizer, unless one is shared with other visits (see Trainee)
        self.owns_model = trainee is None  # a shared model outlives this runner (and its visit)
        trainee = trainee or Trainee.build(workload, device, dtype, seed, data_parallel, compile)
        self.model, self.forward, self.optimizer, self.scaler = (
            trainee.model,
            trainee.forward,
            trainee.optimizer,
            trainee.scaler,
        )
        self.n = workload.n_train
        self.cursor = 0
        self.last_batch: batches.Batch | None = None
        if workload.uses_dataset:
            self.data = None
            self.order = batches.EpochOrder(self.n, batch_size // self.world, seed, self.rank, self.world)
            self.loader = batches.make_loader(workload, "train", device, sampler=self.order)
            self.loaded = iter(self.loader)
        else:
            self.data = data if data is not None else shuffled_on_device(workload, device, seed)
            self.streamed = None  # data left on the host: training's own batches, each gathered and pinned
            if not devices.fits_on_device(self.data, device):
                self.streamed = TensorBatches(self.data, device, batch_size // self.world, seed, self.rank, self.world)
                self.epoch = 0
                self.stream = self.streamed.epoch(self.epoch)

    def _next_batch(self) -> batches.Batch:
        if self.data is None:
            return self._next_loaded()
        if self.streamed is not None:
            return self._next_streamed()
        if self.cursor + self.batch_size > self.n:
            self.cursor = 0
        lo, hi = self.cursor, self.cursor + self.batch_size
        self.cursor = hi
        shard = self.batch_size // self.world  # this rank's disjoint share of the global batch
        lo, hi = lo + self.rank * shard, lo + (self.rank + 1) * shard
        return tuple(t[lo:hi] for t in self.data)  # on the device already

    def _next_streamed(self) -> batches.Batch:
        """Data left on the host, as training steps on it: the next batch of a fresh shuffle each epoch, gathered,
        pinned and copied one batch ahead (see largestep.measure.train.TensorBatches)."""
        try:
            return next(self.stream)
        except StopIteration:
            self.epoch += 1
            self.stream = self.streamed.epoch(self.epoch)
            return next(self.stream)

    def _next_loaded(self) -> batches.Batch:
        """The loader's next batch on the device; a new epoch (a fresh order) when one runs out."""
        try:
            batch = next(self.loaded)
        except StopIteration:
            self.order.set_epoch(self.order.epoch + 1)
            self.loaded = iter(self.loader)
            batch = next(self.loaded)
        return batches.to_device(batch, self.device, non_blocking=self.loader.pin_memory)

    def step(self, batch: batches.Batch | None = None) -> torch.Tensor:
        """One full training step, on ``batch`` or else the next one; returns the loss, detached, without
        reading it (no sync)."""
        batch = self.last_batch = batch if batch is not None else self._next_batch()
        # forward
        with devices.autocast(self.device, self.dtype):
            loss = self.workload.loss_of(batches.model_output(self.forward, batch), batch)
        # backward (with DDP: the gradient all-reduce overlaps it and ends in it), update
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.workload.max_grad_norm
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip is not None:  # as training clips: the true gradients, not the loss-scaled ones
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip is not None:  # a training step's cost includes its clipping
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        return loss.detach()

    def timed_steps(
        self, min_steps: int, min_seconds: float, max_steps: int, block_steps: int = 1, timed: list[float] | None = None
    ) -> list[float]:
        """Raw step times, one per block of ``block_steps`` steps (see :func:`time_in_blocks`);
        ``min_steps`` and ``max_steps`` count blocks; ``timed``: blocks timed already (steady warm-up steps)."""
        return time_in_blocks(
            self.step,
            self.device,
            min_steps,
            min_seconds,
            max_steps,
            block_steps,
            data_parallel=self.world > 1,
            timed=timed,
        )

    @property
    def warmup_is_timed(self) -> bool:
        """Whether a warm-up step is timed exactly as a timed block is: on the CPU, one process stepping on
        tensor data, every step is its own block between the same two (no-op) synchronisations, so the
        warm-up's steps the steady-state rule shows settled are timed steps already (see :meth:`warm_up`).
        Not on an accelerator (its blocks queue many steps), with a loader (blocks of consecutive steps),
        data-parallel (a barrier starts each block) or with fp16 loss scaling (a skipped update is cheaper)."""
        return self.device.type == "cpu" and self.data is not None and self.world == 1 and self.scaler is None

    def warm_up(
        self, steps: int, first_step_s: float | None = None, block_steps: int | None = None
    ) -> tuple[int, int, list[float]]:
        """Untimed steps until the steady state, at most ``steps``; returns (the steps of a timed block (see
        timed_steps), the warm-up steps taken, the times of those already steady when :attr:`warmup_is_timed`,
        which count as the size's first timed steps). ``first_step_s``: the seconds of the size's first step,
        just taken (None when it was counting FLOPs); ``block_steps``: a block's steps when a visit to the
        size found them already.

        Each step runs between two synchronisations, so its time is the device's, and the warm-up ends at the
        first step that is not faster than the one before it by more than WARMUP_AGREEMENT: a step still
        settling (the new shape's allocations, lazy initialisation, autotuning, each paid once) is slower than
        the next, and the warm-up goes on, up to ``steps``; a step slower than the one before is noise (another
        process, a page fault), which no further warm-up removes. Those two steps also size the blocks.

        With fp16 loss scaling, warm-up goes on until a step passes without the scaler skipping the
        update: the first steps often overflow at the initial scale, and a skipped optimizer step is a
        cheaper step that must not land among the timed ones.

        A warm-up that ends settled has shown the step before its last one steady already (it was not
        slower than the next by more than WARMUP_AGREEMENT); where a warm-up step is timed as a timed step
        is (:attr:`warmup_is_timed`), those two are the size's first timed steps rather than time spent
        outside them. The size's first step never is: it ran under instruments.
        """
        times = [] if first_step_s is None else [first_step_s]
        taken, skipped = 0, self.scaler is not None
        while (taken < steps and not self._settled(times)) or (skipped and taken < steps + MAX_SCALER_BACKOFFS):
            scale = self.scaler.get_scale() if self.scaler is not None else None  # sync: untimed
            times.append(self._one_synchronised_step())
            taken += 1
            skipped = self.scaler is not None and self.scaler.get_scale() < scale  # an overflow halves it
        steady = times[-min(2, taken) :] if taken and self.warmup_is_timed and self._settled(times) else []
        if block_steps is not None:
            return block_steps, taken, steady
        if self.device.type == "cpu" and self.data is not None:
            return 1, taken, steady  # no queue to hide the host behind and no loader: every step is its own block
        # a GPU's queue, or a Dataset's loader, whose costs (an epoch's start, collecting its batches'
        # garbage, a slow read now and then) fall on some steps only: a block of consecutive steps carries them
        # in the proportion a training loop pays them, where the median of single steps would leave them out.
        # Sized from the two warm-up steps that agreed, else from a few more steps; the fastest: least noise
        sizing = times[-2:] if self._settled(times) else [self._one_synchronised_step() for _ in range(SIZING_STEPS)]
        block = block_steps_for(min(sizing), epoch_steps=len(self.order) if self.data is None else None)
        return (int(ddp_util.agree(block)) if self.world > 1 else block), taken, steady  # rank 0's blocks

    def _settled(self, step_times: list[float]) -> bool:
        """Whether the last of ``step_times`` was not faster than the one before it by more than WARMUP_AGREEMENT
        (data-parallel: rank 0's steps decide, so every rank takes as many)."""
        if len(step_times) < 2:
            return False
        settled = step_times[-1] >= (1 - WARMUP_AGREEMENT) * step_times[-2]
        return bool(ddp_util.agree(settled)) if self.world > 1 else settled

    def timed_loader_and_compute_steps(
        self,
        min_blocks: int,
        min_seconds: float,
        max_blocks: int,
        block_steps: int = 1,
        seed: int = 0,
        held: int = 4,
    ) -> tuple[list[float], list[float]]:
        """Raw step times, one per block of ``block_steps`` consecutive steps (see :func:`time_in_blocks`),
        with the loader (each step reads, collates and copies the next batch through the one iterator, which
        starts a new epoch where the user's loop would) and without it (the same steps on ``held`` batches
        already on the device). The two kinds of block alternate in rounds, in a shuffled order, so that drift
        on a shared machine falls on both alike, until ``min_blocks`` blocks of each and ``min_seconds``
        seconds in all (at most ``max_blocks``). Each kind's garbage-collection pauses are spread over its
        blocks (see :func:`_collections_spread`). Single process only."""
        held_batches = itertools.cycle([self._next_loaded() for _ in range(held)])
        kinds = (self.step, lambda: self.step(next(held_batches)))
        elapsed: tuple[list[float], list[float]] = ([], [])  # each kind's blocks: seconds ...
        paused: tuple[list[float], list[float]] = ([], [])  # ... and the garbage collector's share of them
        order = np.random.default_rng(seed)
        total = 0.0
        with _CollectorPauses() as collector:
            while len(elapsed[0]) < min_blocks or (total < min_seconds and len(elapsed[0]) < max_blocks):
                for kind in order.permutation(len(kinds)):
                    before = collector.seconds
                    block_s = _timed_block(kinds[kind], self.device, block_steps)
                    elapsed[kind].append(block_s)
                    paused[kind].append(collector.seconds - before)
                    total += block_s
        with_loader, compute = (_collections_spread(e, p, block_steps) for e, p in zip(elapsed, paused))
        return with_loader, compute

    def _one_synchronised_step(self) -> float:
        devices.synchronize(self.device)  # sync: the queue is empty
        start = time.perf_counter()
        self.step()
        devices.synchronize(self.device)  # sync: this step alone is done
        return time.perf_counter() - start

    def first_step(self, count_flops: bool = True) -> tuple[float | None, int, float | None]:
        """A batch size's first step, outside the clock (it pays the new shape's allocations and lazy
        initialisation), watched by instruments: returns the FLOPs of the step (forward and backward, of the
        global batch; None unless ``count_flops``), the bytes of tensors saved for backward (the CPU memory
        estimate) and the step's seconds between two synchronisations, which the warm-up compares with the
        next step's. The saved-tensor hooks cost a call a saved tensor; FlopCounterMode runs every op through
        Python, which can double a step: a step counting FLOPs has no seconds (None), as it measures nothing.
        """
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            try:
                storage = t.untyped_storage()
                saved[storage.data_ptr()] = storage.nbytes()
            except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
                pass
            return t

        flops = seconds = None
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if count_flops:
                counter = FlopCounterMode(display=False)
                with counter:
                    self.step()
                flops = float(counter.get_total_flops()) * self.world  # the global batch's
            else:
                seconds = self._one_synchronised_step()
        return flops, sum(saved.values()), seconds

    def state_bytes(self) -> int:
        """Parameters, gradients and optimizer state now held, in bytes."""
        total = 0
        for p in self.model.parameters():
            total += p.numel() * p.element_size()
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total

    def batch_bytes(self) -> int:
        if self.data is None:
            last = self.last_batch
            values = [] if last is None else (last.values() if isinstance(last, dict) else last)
            return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))
        return sum(t[: self.batch_size // self.world].numel() * t.element_size() for t in self.data)

    def close(self) -> None:
        # the loader's iterator goes first: dropping it ends the worker processes
        self.__dict__.pop("loaded", None)
        self.__dict__.pop("loader", None)
        self.__dict__.pop("stream", None)
        self.__dict__.pop("streamed", None)
        del self.model, self.forward, self.optimizer, self.data, self.last_batch
        # A fresh model goes with its runner: collect it. A shared one stays, and a visit leaves no cycles
        # to collect (its activations went with their last reference), so only the allocator's cache is
        # returned: a full collection a visit cost more than the visit measured on a small model.
        devices.free_memory(self.device, collect=self.owns_model)


def time_in_blocks(
    step: Callable[[], object],
    device: torch.device,
    min_blocks: int,
    min_seconds: float,
    max_blocks: int,
    block_steps: int = 1,
    data_parallel: bool = False,
    timed: list[float] | None = None,
) -> list[float]:
    """Time ``step`` as the profiler does: blocks of ``block_steps`` calls between two synchronisations
    of the device, one time per call per block, until ``min_blocks`` blocks and ``min_seconds``
    seconds (at most ``max_blocks``), ``timed`` (blocks already timed) included. Inside a block the host
    queues the next step while the device runs this one, as in training; a sync around every step would
    instead add the host's per-step overhead to every small, fast step. Data-parallel: rank 0 decides
    whether to go on, and a barrier starts each block on every rank together."""
    times: list[float] = list(timed or [])
    total = sum(times) * block_steps
    while True:
        more = len(times) < min_blocks or (total < min_seconds and len(times) < max_blocks)
        if not (ddp_util.agree(more) if data_parallel else more):  # every rank takes the same steps
            break
        elapsed = _timed_block(step, device, block_steps, data_parallel)
        times.append(elapsed / block_steps)
        total += elapsed
    return times


def _timed_block(
    step: Callable[[], object], device: torch.device, block_steps: int, data_parallel: bool = False
) -> float:
    """Seconds of ``block_steps`` calls of ``step`` between two synchronisations of the device."""
    devices.synchronize(device)  # sync: the previous block's kernels are done
    if data_parallel:
        ddp_util.barrier()  # sync: every rank starts the block together
    start = time.perf_counter()
    for _ in range(block_steps):
        step()
    devices.synchronize(device)  # sync: this block's kernels are done
    return time.perf_counter() - start


class _CollectorPauses:
    """Seconds this process's garbage collector has spent collecting since entering (``gc.callbacks``)."""

    def __init__(self):
        self.seconds = 0.0
        self._started = 0.0

    def _on_collection(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> "_CollectorPauses":
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *_exc) -> None:
        gc.callbacks.remove(self._on_collection)


def _collections_spread(elapsed: list[float], paused: list[float], block_steps: int) -> list[float]:
    """Per-step times of blocks, with the garbage collector's pauses spread evenly over every block.

    A full collection (every object the process holds, torch's own included: a tenth of a second or more)
    comes once in a hundred or more steps of a loader collating fresh Python objects: it is the loop's own cost,
    paid at a rate, but it lands in one block in many, whose median would leave it out. So each block counts
    its steps without its own pauses plus the mean pause of all blocks; their total is unchanged."""
    mean_pause = sum(paused) / len(paused)
    return [(block_s - pause + mean_pause) / block_steps for block_s, pause in zip(elapsed, paused)]


def block_steps_for(one_step_s: float, epoch_steps: int | None = None) -> int:
    """Steps a timed block holds (on a GPU; for a Dataset's loader on any device): about BLOCK_SECONDS of
    them, at most MAX_BLOCK_STEPS. An epoch of ``epoch_steps`` steps shorter than that: whole epochs, so
    that every block starts the loader's iteration as often as a training loop does, once an epoch."""
    steps = MAX_BLOCK_STEPS if one_step_s <= 0 else min(MAX_BLOCK_STEPS, math.ceil(BLOCK_SECONDS / one_step_s))
    if epoch_steps and epoch_steps < steps:
        steps -= steps % epoch_steps
    return steps


def shuffled_on_device(workload: Workload, device: torch.device, seed: int) -> tuple[torch.Tensor, ...] | None:
    """A tensor workload's training data; None for a Dataset.

    On the device, shuffled once, when it fits there by training's own rule (devices.fits_on_device), so a
    profile holds the same data resident as the run it predicts. Otherwise the workload's own tensors, as
    they are: a step gathers its batch from a fresh shuffle, pins it and copies it, as training does (see
    :class:`StepRunner`), never pinning the whole set (torch's pinned allocator rounds a block up to a power
    of two) nor copying it shuffled.
    """
    if workload.uses_dataset:
        return None
    if not devices.fits_on_device(workload.train, device):
        return tuple(workload.train)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(workload.n_train, generator=generator)
    return tuple(t[order].to(device) for t in workload.train)


def measure_point(
    workload: Workload,
    device: torch.device,
    batch_size: int,
    config: ProfileConfig,
    data: tuple[torch.Tensor, ...] | None = None,
    telemetry_tag: Callable[[int | None], None] = lambda _b: None,
    power_between: Callable[[float, float], float | None] = lambda _a, _b: None,
    trainee: Trainee | None = None,
    first_visits: dict[int, FirstVisit] | None = None,
    others_busy_cores: Callable[[], float | None] = lambda: None,
    flop_counts: FlopCounts | None = None,
) -> ProfilePoint:
    """Measure one batch size; out-of-memory and other errors become a point's status.

    ``trainee``: the model and optimizer to step (shared by the visits of an interleaved sweep);
    None builds a fresh one. ``first_visits``: with a shared trainee, what the first visit to each size it
    already ran found: such a size is not counted again, warms up for at most :func:`revisit_warmup_steps`
    and keeps its blocks; a size visited for the first time is added. ``flop_counts``: the sweep's FLOP
    counts so far, which may spare this size its count (see FlopCounts); a size counted is added.
    ``others_busy_cores``: the cores other processes kept busy over the window ``telemetry_tag`` last
    opened and closed (see largestep.measure.telemetry.WindowLoad)."""
    started = time.time()
    runner = None
    try:
        devices.reset_peak_memory(device)
        runner = StepRunner(
            workload,
            device,
            batch_size,
            config.dtype,
            config.seed,
            data,
            data_parallel=config.nproc > 1,
            compile=config.compile,
            trainee=trainee,
        )
        compile_s = clock_start = None
        if config.compile:  # compiles for this batch shape: timed apart, before any other step
            devices.synchronize(device)
            compile_start = time.perf_counter()
            runner.step()
            devices.synchronize(device)
            compile_s = time.perf_counter() - compile_start
        if first_visits is not None and batch_size in first_visits:  # back to a size the shared model already ran
            first = first_visits[batch_size]
            flops, activation_bytes, warmup_steps = first.flops, first.activation_bytes, first.warmup_steps
            block_steps, _, steady = runner.warm_up(
                min(config.warmup_steps, revisit_warmup_steps(device)), block_steps=first.block_steps
            )
        else:
            # the size's first step, the first of its warm-up (untimed: no clock runs yet while the
            # instruments slow it): its saved activations, and its FLOPs unless the counts so far scale
            flops = flop_counts.scaled(batch_size) if flop_counts is not None else None
            counted, activation_bytes, first_step_s = runner.first_step(count_flops=flops is None)
            if counted is not None:
                flops = counted
                if flop_counts is not None:
                    flop_counts.counted[batch_size] = counted
            # allocator growth, caches, lazy init, until the steady state; its steady steps may be timed ones
            # already, and then the clock (the load window over the timed steps) starts with them
            if runner.warmup_is_timed:
                clock_start = _start_clock(device, batch_size, telemetry_tag)
            block_steps, taken, steady = runner.warm_up(max(0, config.warmup_steps - 1), first_step_s)
            warmup_steps = 1 + taken - len(steady)
            if first_visits is not None:
                first_visits[batch_size] = FirstVisit(flops, activation_bytes, block_steps, warmup_steps)
        if clock_start is None:
            clock_start = _start_clock(device, batch_size, telemetry_tag)
        compute: list[float] = []  # Dataset workloads: the same blocks of steps without the loader
        if workload.uses_dataset and config.nproc == 1:
            times, compute = runner.timed_loader_and_compute_steps(
                config.min_steps, config.min_seconds, config.max_steps, block_steps, config.seed
            )
        else:
            times = runner.timed_steps(
                config.min_steps, config.min_seconds, config.max_steps, block_steps, timed=steady
            )
        timed_s = float(sum(times) + sum(compute)) * block_steps  # a block's time is its time a step x its steps
        clock_end = time.time()
        telemetry_tag(None)
        # stop the clock: everything below is measured outside the timed steps
        peak = devices.peak_memory(device)
        estimate = peak is None
        if estimate:
            peak = runner.state_bytes() + activation_bytes + runner.batch_bytes()
        # every rank's GPU draws power for the global batch: the whole group's, over the global batch
        power = ddp_util.total_across_ranks(power_between(clock_start, clock_end))
        return _with_statistics(
            ProfilePoint(
                batch_size=batch_size,
                status=OK,
                peak_memory_bytes=int(peak),
                memory_is_estimate=estimate,
                flops_per_step=flops or None,
                mean_power_w=power,
                started_at=started,
                ended_at=time.time(),
                compute_median_s=float(np.median(compute)) if compute else None,
                compile_s=compile_s,
                timed_s=timed_s,
                others_busy_cores=others_busy_cores(),
                warmup_steps=warmup_steps,
            ),
            times,
            config,
        )
    except Cancelled:
        raise  # the job was asked to stop: not a point of the profile
    except Exception as exc:  # narrow below: OOM is a ceiling, anything else an error point
        telemetry_tag(None)
        status = OOM if devices.is_out_of_memory(exc) else ERROR
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if config.nproc > 1 and ddp_util.is_distributed():
            # the other ranks may be inside a collective this rank will not join (the gradient all-reduce): no
            # point can be agreed, so the rank leaves and its launcher stops the others at once. Out of memory, the
            # job ends at the sweep's ceiling; anything else, FAILED with this rank's error
            if status == OOM:
                raise ddp_util.RankOutOfMemory(batch_size, f"rank {ddp_util.rank()}: {message}") from None
            raise
        return ProfilePoint(
            batch_size=batch_size, status=status, error=message, started_at=started, ended_at=time.time()
        )
    finally:
        if runner is not None:
            runner.close()
        else:
            devices.free_memory(device)


def _start_clock(device: torch.device, batch_size: int, telemetry_tag: Callable[[int | None], None]) -> float:
    """The device idle, the telemetry tagged with ``batch_size`` (its power and load windows open): the
    timed steps begin; returns the wall-clock time they do."""
    devices.synchronize(device)
    telemetry_tag(batch_size)
    return time.time()


def _with_statistics(
    point: ProfilePoint, times: list[float] | tuple[float, ...], config: ProfileConfig
) -> ProfilePoint:
    """``point`` with its raw step times and everything derived from them: the step time (the config's
    estimator) and what follows from it, the median and quartiles beside it."""
    times = [float(t) for t in times]
    p25, median, p75 = curve.quartiles(times)
    step = curve.estimate(times, config.estimator)
    flops, power, compute = point.flops_per_step, point.mean_power_w, point.compute_median_s
    return replace(
        point,
        step_times_s=tuple(times),
        median_s=median,
        p25_s=p25,
        p75_s=p75,
        estimate_s=step,
        noisy=median > 0 and (p75 - p25) / median > config.noisy_iqr_ratio,
        samples_per_s=point.batch_size / step if step > 0 else None,
        flops_per_s=(flops / step) if flops and step > 0 else None,
        energy_per_sample_j=(power * step / point.batch_size) if power is not None else None,
        # both the loader-included and the compute-only step are medians (a visit reports its compute median)
        input_bound=compute is not None and median > config.input_bound_ratio * compute,
    )


def _merge_visits(
    visits: list[ProfilePoint], config: ProfileConfig, loaded_visits: int = 0, under_load: bool = False
) -> ProfilePoint:
    """One point from the visits to a batch size: their timed steps together, the largest peak.
    ``loaded_visits``: the size's visits set aside (not in ``visits``); ``under_load``: some of
    ``visits`` were contended (too few were not)."""
    timed = [_timed_seconds(v) for v in visits]
    powered = [(v.mean_power_w, t) for v, t in zip(visits, timed) if v.mean_power_w is not None]
    loads = [(v.others_busy_cores, t) for v, t in zip(visits, timed) if v.others_busy_cores is not None]
    computes = [v.compute_median_s for v in visits if v.compute_median_s is not None]
    merged = replace(
        visits[0],
        visits=len(visits),
        peak_memory_bytes=max(v.peak_memory_bytes or 0 for v in visits),
        # the power and the load over the timed steps: each visit's mean, weighted by its timed seconds
        mean_power_w=_time_weighted(powered),
        others_busy_cores=_time_weighted(loads),
        loaded_visits=loaded_visits,
        under_load=under_load,
        # a visit reports its compute-only median; the median of those is the point's
        compute_median_s=float(np.median(computes)) if computes else None,
        started_at=min(v.started_at for v in visits),
        ended_at=max(v.ended_at for v in visits),
        timed_s=sum(timed),
    )
    return _with_statistics(merged, [t for v in visits for t in v.step_times_s], config)


def _time_weighted(values: list[tuple[float, float]]) -> float | None:
    """The mean of (value, seconds) pairs, each weighted by its seconds; None without seconds."""
    seconds = sum(t for _, t in values)
    return sum(v * t for v, t in values) / seconds if values and seconds > 0 else None


def _timed_seconds(point: ProfilePoint) -> float:
    return point.timed_s if point.timed_s is not None else float(sum(point.step_times_s))


def _needs_more(visits: list[ProfilePoint], config: ProfileConfig) -> bool:
    """Not yet ``min_steps`` steps and ``min_seconds`` seconds (within ``max_steps``)."""
    steps = sum(v.n for v in visits)  # timed blocks: on a GPU (or a Dataset's loader) several steps each, else one
    return steps < config.min_steps or (
        sum(_timed_seconds(v) for v in visits) < config.min_seconds and steps < config.max_steps
    )


# -- judgement over points ---------------------------------------------------------------------


def saturation_batch(
    points: list[ProfilePoint] | tuple[ProfilePoint, ...],
    share: float = 0.9,
    noisy_threshold: float = curve.NOISY_IQR_RATIO,
) -> int | None:
    """The smallest batch reaching ``share`` of the best measured throughput, never a noisy point
    (see :func:`largestep.curve.saturation_batch`)."""
    return curve.saturation_batch(points, share, noisy_threshold)


def fit_memory(points: list[ProfilePoint] | tuple[ProfilePoint, ...]) -> MemoryFit | None:
    ok = [p for p in points if p.status == OK and p.peak_memory_bytes is not None]
    if len({p.batch_size for p in ok}) < 2:
        return None
    slope, intercept = np.polyfit([p.batch_size for p in ok], [p.peak_memory_bytes for p in ok], 1)
    return MemoryFit(float(intercept), float(slope))


def physics_problems(
    points: list[ProfilePoint] | tuple[ProfilePoint, ...], noisy_threshold: float = curve.NOISY_IQR_RATIO
) -> list[tuple[int, str]]:
    """(batch size, why) of each point whose step time cannot be the hardware's: see
    :func:`largestep.curve.physics_problems`."""
    return curve.physics_problems(points, noisy_threshold)


def _plateaued(points: list[ProfilePoint], gain: float, doublings: int) -> bool:
    ok = [p for p in points if p.status == OK and p.samples_per_s]
    if len(ok) < doublings + 1:
        return False
    recent = ok[-(doublings + 1) :]
    return all(b.samples_per_s < a.samples_per_s * (1 + gain) for a, b in zip(recent, recent[1:]))


# -- the sweep ---------------------------------------------------------------------------------


@dataclass
class _Visits:
    """How many visits to batch sizes the sweep has made, of how many it expects (its progress)."""

    done: int = 0
    expected: int = 0


def sweep(
    workload: Workload,
    device: torch.device,
    config: ProfileConfig,
    telemetry_tag: Callable[[int | None], None] = lambda _b: None,
    power_between: Callable[[float, float], float | None] = lambda _a, _b: None,
    others_busy_cores: Callable[[], float | None] = lambda: None,
) -> Iterator[tuple[ProfilePoint, int, int]]:
    """Yield (point, visits done, visits expected) as each batch size is measured, and again as its
    rounds, a re-measure or the physics check complete it (a later point of a batch size replaces the
    earlier); ``StopIteration.value`` is (the stop reason, the inconsistency or None). Callers that
    want the whole result use :func:`run_profile`."""
    config.validate()
    devices.check_dtype(device, config.dtype)
    planned = plan_batch_sizes(config, workload)
    data = shuffled_on_device(workload, device, config.seed)
    interleaved = _interleaves(config, workload)
    visits = _Visits(expected=len(planned) * (config.rounds if interleaved else 1))  # until the range is known

    # interleaved, every visit steps one model and counts each size's FLOPs once: what a visit costs
    # beyond its timed steps is a step or two of warm-up, not a model built, warmed and counted again
    trainee = _shared_trainee(workload, device, config) if interleaved else None
    first_visits: dict[int, FirstVisit] | None = {} if trainee is not None else None
    flop_counts = FlopCounts()

    spare = spare_cores(device, config)

    def measure(batch_size: int, visit: ProfileConfig) -> ProfilePoint:
        point = measure_point(
            workload,
            device,
            batch_size,
            visit,
            data,
            telemetry_tag,
            power_between,
            trainee=trainee,
            first_visits=first_visits,
            others_busy_cores=others_busy_cores,
            flop_counts=flop_counts,
        )
        budget = config.memory_budget_bytes
        if point.status == OK and budget is not None and point.peak_memory_bytes > budget:
            point = replace(point, status=OVER_BUDGET, error="measured peak memory exceeds the budget")
        # other processes took cores this size's steps needed; rank 0's load decides for every rank
        contended = point.others_busy_cores is not None and point.others_busy_cores > spare + CONTENTION_SLACK_CORES
        visits.done += 1
        return _agree_on_status(replace(point, under_load=ddp_util.agree(contended)))

    try:
        # first pass, in increasing order: find the range. Interleaved, it is each size's first visit (the
        # rounds that follow shuffle the rest); contiguous (rounds == 1), it is the measurement.
        first = config.visit() if interleaved else config
        points: list[ProfilePoint] = []
        reason = yield from _first_pass(workload, config, planned, points, lambda b: measure(b, first), visits)
        if interleaved:
            ok = {p.batch_size: [p] for p in points if p.status == OK}
            visits.expected = visits.done + (config.rounds - 1) * len(ok)
            measured = yield from _rounds(list(ok), config, lambda b: measure(b, config.visit()), visits, visited=ok)
            points = [measured.get(p.batch_size, p) for p in points]
            # the physics check: what cannot be the hardware is measured again, in rounds of its own
            for attempt in range(1, config.remeasure + 1):
                suspects = ddp_util.agree(
                    [b for b, _ in physics_problems(points, config.noisy_iqr_ratio)]
                )  # rank 0's times decide
                if not suspects:
                    break
                visits.expected += config.rounds * len(suspects)
                again = yield from _rounds(suspects, config, lambda b: measure(b, config.visit()), visits, attempt)
                points = [again.get(p.batch_size, p) for p in points]
        inconsistency = _inconsistency(points, interleaved, config.remeasure, config.noisy_iqr_ratio)
        flagged = set(ddp_util.agree([b for b, _ in physics_problems(points, config.noisy_iqr_ratio)]))
        for point in points:
            if point.batch_size in flagged:
                yield replace(point, inconsistent=True), visits.done, visits.expected
        return reason, inconsistency
    finally:
        data = trainee = None  # drop the device copy of the data and the model (measure holds them too)
        # An accelerator's cache is returned once the model's cycles are collected. On the CPU a collection
        # frees nothing the next measurement needs and costs a job 0.15 to 0.3 s at its end (a full pass over
        # torch's and torch._dynamo's objects) before the profile can be read.
        devices.free_memory(device, collect=torch.device(device).type != "cpu")


def spare_cores(device: torch.device, config: ProfileConfig) -> float:
    """The CPU cores the profile's steps leave free: the machine's, less torch's intra-op threads on
    each rank (on the CPU), or one host thread a rank (on a GPU). Other processes busy beyond these
    take cores the steps need, and the steps stall."""
    ours = (config.threads or torch.get_num_threads()) if torch.device(device).type == "cpu" else 1
    return max(0.0, float(os.cpu_count() or 1) - ours * config.nproc)


def revisit_warmup_steps(device: torch.device) -> int:
    return 0 if torch.device(device).type == "cpu" else REVISIT_WARMUP_STEPS


def _shared_trainee(workload: Workload, device: torch.device, config: ProfileConfig) -> Trainee | None:
    """The model every visit of an interleaved sweep steps; None when it cannot be built here (each
    visit then builds its own, and records what went wrong as its point)."""
    try:
        return Trainee.build(workload, device, config.dtype, config.seed, data_parallel=config.nproc > 1)
    except Cancelled:
        raise
    except Exception:
        devices.free_memory(device)
        return None


def _interleaves(config: ProfileConfig, workload: Workload) -> bool:
    """Whether the sweep measures in rounds. Two kinds of profile are measured contiguously, one visit a size:
    --compile (a compiled model that meets a second batch shape is recompiled with a dynamic batch
    dimension, a different program from the one training at one batch runs) and Dataset
    workloads (a short visit would time batches the loader's workers prefetched while the previous steps
    ran, hiding the loader's own time; the loader and compute steps still alternate within the visit)."""
    return config.rounds > 1 and not config.compile and not workload.uses_dataset


def _first_pass(
    workload: Workload,
    config: ProfileConfig,
    planned: list[int],
    points: list[ProfilePoint],
    measure: Callable[[int], ProfilePoint],
    visits: _Visits,
) -> Iterator[tuple[ProfilePoint, int, int]]:
    """Each planned size in increasing order until a stopping rule; appends to ``points``; returns the reason."""
    for batch_size in planned:
        if batch_size > workload.n_train:
            return "dataset"
        fit = fit_memory(points)
        budget = config.memory_budget_bytes
        if ddp_util.agree(budget is not None and fit is not None and fit.predict(batch_size) > budget):
            point = ProfilePoint(
                batch_size,
                OVER_BUDGET,
                predicted_memory_bytes=int(fit.predict(batch_size)),
                error="predicted memory exceeds the budget; not run",
            )
            points.append(point)
            yield point, visits.done, visits.expected
            return "over_budget"
        point = measure(batch_size)
        points.append(point)
        yield point, visits.done, visits.expected
        if point.status in (OOM, OVER_BUDGET, ERROR):
            return point.status
        powers_of_two = config.batch_sizes is None
        if ddp_util.agree(
            powers_of_two and not config.full and _plateaued(points, config.plateau_gain, config.plateau_doublings)
        ):
            return "plateau"
    return "list" if config.batch_sizes is not None else "max"


def _rounds(
    batch_sizes: list[int],
    config: ProfileConfig,
    measure: Callable[[int], ProfilePoint],
    visits: _Visits,
    remeasured: int = 0,
    visited: dict[int, list[ProfilePoint]] | None = None,
) -> Iterator[tuple[ProfilePoint, int, int]]:
    """Visit every one of ``batch_sizes`` once a round, in a shuffled order (the same on every rank: a
    seeded generator), until each has its steps and seconds from visits no other process contended
    (``under_load``); yield each point as it completes and return {batch size: point}. A size whose
    contended visits reach QUIET_PATIENCE times its rounds is measured by all its visits, flagged
    ``under_load``. A visit that fails (out of memory, an error) ends that size with its status.
    ``visited``: visits already made to these sizes (the first pass's), which count as theirs."""
    order = np.random.default_rng([config.seed, remeasured])
    timed: dict[int, list[ProfilePoint]] = {b: list((visited or {}).get(b, [])) for b in batch_sizes}
    done: dict[int, ProfilePoint] = {}
    for batch_size in batch_sizes:  # measured already by the visits made (a visit of a few steps may be enough)
        point = _point_when_measured(timed[batch_size], config) if timed[batch_size] else None
        if point is not None:
            done[batch_size] = replace(point, remeasured=remeasured)
            yield done[batch_size], visits.done, max(visits.done, visits.expected)
    for _round in range(QUIET_PATIENCE * MAX_ROUNDS):
        pending = [b for b in batch_sizes if b not in done]
        if not pending:
            break
        for batch_size in order.permutation(pending).tolist():
            visit = measure(batch_size)
            if visit.status != OK:
                done[batch_size] = visit
            else:
                timed[batch_size].append(visit)
                point = _point_when_measured(timed[batch_size], config)
                if point is not None:
                    done[batch_size] = replace(point, remeasured=remeasured)
            if batch_size in done:
                yield done[batch_size], visits.done, max(visits.done, visits.expected)
    return done


def _point_when_measured(visits: list[ProfilePoint], config: ProfileConfig) -> ProfilePoint | None:
    """A size's point once its visits measure it, else None (visit it again): from its uncontended
    visits when they hold its steps and seconds; from all of them, flagged under load, once it was
    visited QUIET_PATIENCE times its rounds. Rank 0's clock decides (every rank takes the same steps)."""
    quiet = [v for v in visits if not v.under_load]
    loaded = len(visits) - len(quiet)
    if quiet and not ddp_util.agree(_needs_more(quiet, config)):  # quiet: the same on every rank
        return _merge_visits(quiet, config, loaded_visits=loaded)
    if len(visits) >= QUIET_PATIENCE * config.rounds and not ddp_util.agree(_needs_more(visits, config)):
        return _merge_visits(visits, config, loaded_visits=0, under_load=True)
    return None


def _inconsistency(
    points: list[ProfilePoint], interleaved: bool, remeasure: int, noisy_threshold: float = curve.NOISY_IQR_RATIO
) -> str | None:
    """Why the profile's step times cannot all be physics, in one line; None when they can."""
    problems = physics_problems(points, noisy_threshold)
    if not problems:
        return None
    reasons = list(dict.fromkeys(why for _, why in problems))
    shown = reasons[:MAX_REASONS] + ([f"{len(reasons) - MAX_REASONS} more"] if len(reasons) > MAX_REASONS else [])
    tries = (
        f"after {remeasure} re-measure{'s' if remeasure != 1 else ''}"
        if interleaved
        else "measured contiguously, without re-measuring"
    )
    return "; ".join(shown) + f" ({tries}: background load or drift, not the hardware)"


def _agree_on_status(point: ProfilePoint) -> ProfilePoint:
    """Data-parallel: a point failed on one rank failed for all (the next decision must be the same everywhere)."""
    if not ddp_util.is_distributed():
        return point
    import torch.distributed as dist

    outcomes: list = [None] * ddp_util.world_size()
    dist.all_gather_object(outcomes, (point.status, point.error))
    if point.status == OK:
        for r, (status, error) in enumerate(outcomes):
            if status != OK:
                return replace(point, status=status, error=f"rank {r}: {error}")
    return point


def with_points(result: ProfileResult, carried: list[ProfilePoint]) -> ProfileResult:
    """``result`` with ``carried`` points (another profile's, at sizes this one did not measure) among its own,
    and judged again over them all: the saturation batch, the memory fit, the physics check."""
    config = result.config
    points = sorted([*result.points, *carried], key=lambda p: p.batch_size)
    return replace(
        result,
        points=tuple(points),
        saturation_batch=saturation_batch(points, noisy_threshold=config.noisy_iqr_ratio),
        memory_fit=fit_memory(points),
        inconsistency=_inconsistency(
            points, config.rounds > 1 and not config.compile, config.remeasure, config.noisy_iqr_ratio
        ),
    )


def run_profile(
    workload: Workload,
    device: torch.device,
    config: ProfileConfig,
    on_point: Callable[[ProfilePoint, int, int], None] = lambda *_: None,  # (point, visits done, expected)
    telemetry_tag: Callable[[int | None], None] = lambda _b: None,
    power_between: Callable[[float, float], float | None] = lambda _a, _b: None,
    others_busy_cores: Callable[[], float | None] = lambda: None,
) -> ProfileResult:
    """Run the whole sweep and judge it: saturation batch and memory fit."""
    started = time.time()
    by_batch: dict[int, ProfilePoint] = {}  # a later point of a batch size (its rounds, a re-measure) replaces it
    gen = sweep(workload, device, config, telemetry_tag, power_between, others_busy_cores)
    while True:
        try:
            point, done, expected = next(gen)
        except StopIteration as stop:
            reason, inconsistency = stop.value
            break
        by_batch[point.batch_size] = point
        on_point(point, done, expected)
    points = [by_batch[b] for b in sorted(by_batch)]
    return ProfileResult(
        workload=workload.name,
        device=devices.device_info(device).to_dict(),
        config=config,
        points=tuple(points),
        stop_reason=reason,
        saturation_batch=saturation_batch(points, noisy_threshold=config.noisy_iqr_ratio),
        memory_fit=fit_memory(points),
        started_at=started,
        ended_at=time.time(),
        n_train=workload.n_train,
        inconsistency=inconsistency,
    )
