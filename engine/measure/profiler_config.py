"""What a profile is asked to measure: its config, checked before any job is written, and the batch sizes it
plans to try. Apart from :mod:`largestep.measure.profiler` so that submitting a profile imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..curve import DEFAULT_ESTIMATOR, ESTIMATORS
from ..errors import UsageError
from .devices_config import DTYPE_NAMES, MAX_NPROC
from ..units import INT64_MAX, check_int, check_number, check_switch

if TYPE_CHECKING:
    from ..workloads.base import Workload

__all__ = [
    "DTYPES",
    "MAX_ROUNDS",
    "MAX_SECONDS",
    "MAX_STEPS",
    "MAX_THREADS",
    "WARMUP_AGREEMENT",
    "ProfileConfig",
    "plan_batch_sizes",
    "check_threads",
    "parse_threads",
    "profile_config_of",
]

DTYPES = DTYPE_NAMES
MAX_STEPS = 1_000_000  # timed or warm-up steps per batch size, at most
MAX_SECONDS = 86_400.0  # timed seconds per batch size, at most (a day)
MAX_ROUNDS = 100  # interleaved visits per batch size, at most
WARMUP_AGREEMENT = 0.10  # warm-up ends at a step not faster than the one before it by more than this share
MAX_THREADS = 1024  # --threads, at most


@dataclass(frozen=True)
class ProfileConfig:
    batch_sizes: tuple[int, ...] | None = None  # explicit list; None: powers of two min..max
    min_batch: int | None = None  # smallest power of two; None: a quarter of the baseline batch
    max_batch: int = 65536  # largest batch tried (also capped by the dataset size)
    dtype: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast)
    memory_budget_bytes: int | None = None  # stop before a batch predicted, or measured, above this
    full: bool = False  # True: no stop on a throughput plateau
    warmup_steps: int = 3  # untimed steps per batch size at most (allocator, caches, autotune): the
    # warm-up ends at the steady state (see WARMUP_AGREEMENT)
    min_steps: int = 10  # timed steps per batch size, at least
    min_seconds: float = 1.0  # timed seconds per batch size, at least
    max_steps: int = 2000  # timed steps per batch size, at most (tiny models)
    noisy_iqr_ratio: float = 0.2  # IQR/median above this flags a noisy measurement
    plateau_gain: float = 0.05  # "plateau": less than this throughput gain ...
    plateau_doublings: int = 2  # ... on this many successive doublings
    include_baseline: bool = True  # add the workload's baseline batch to a power-of-two sweep
    seed: int = 0  # model initialisation and data order
    nproc: int = 1  # data-parallel ranks; batch sizes are global (split over the ranks)
    compile: bool = False  # torch.compile the model; its compile step is timed apart, untimed in steps
    tf32: bool | None = None  # TF32 in float32 matmuls and convolutions; None: the workload's field (see
    # largestep.measure.devices.use_math)
    input_bound_ratio: float = 1.2  # Dataset workloads: loader-included over compute-only step time above
    # this flags the point "input-bound"
    rounds: int = 3  # the timed steps of each size are spread over this many visits, in
    # shuffled order with the others; 1: one contiguous block per size
    remeasure: int = 2  # a point that cannot be physics is measured again at most this often
    estimator: str = DEFAULT_ESTIMATOR  # which statistic of a size's raw step times is its step time (largestep.curve)
    threads: int | None = None  # torch's intra-op threads on the CPU; None: torch's default (one a core).
    # Set in the job; the runs trained from the profile use the same

    def validate(self) -> None:
        """Every field against its meaning and the column it lands in, before any job is written."""
        check_int(self.nproc, "--nproc", high=MAX_NPROC)
        if self.batch_sizes is not None:
            if not self.batch_sizes:
                raise UsageError("the batch-size list is empty")
            for b in self.batch_sizes:
                check_int(b, "batch size")
            odd = [b for b in self.batch_sizes if b % self.nproc]
            if odd:
                raise UsageError(
                    f"batch size {odd[0]} is not divisible by --nproc {self.nproc}: each rank takes an "
                    f"equal share of the global batch"
                )
        for name in ("min_batch", "max_batch"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, name.replace("_", " "))
        if self.min_batch and self.max_batch < self.min_batch:
            raise UsageError(f"max batch {self.max_batch} is below min batch {self.min_batch}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.memory_budget_bytes is not None:
            check_int(self.memory_budget_bytes, "the memory budget (bytes)", high=INT64_MAX)
        check_int(self.warmup_steps, "warm-up steps", low=0, high=MAX_STEPS)
        check_int(self.min_steps, "min steps", high=MAX_STEPS)
        check_int(self.max_steps, "max steps", high=MAX_STEPS)
        check_number(self.min_seconds, "min seconds", low=0, high=MAX_SECONDS, low_inclusive=True)
        check_number(self.noisy_iqr_ratio, "the noisy IQR ratio", low=0)
        check_number(self.plateau_gain, "the plateau gain", low=0, low_inclusive=True)
        check_int(self.plateau_doublings, "plateau doublings")
        check_int(self.seed, "--seed", low=0)
        if not (isinstance(self.input_bound_ratio, (int, float)) and self.input_bound_ratio >= 1):
            raise UsageError(f"the input-bound ratio must be at least 1, not {self.input_bound_ratio!r}")
        check_int(self.rounds, "--rounds", high=MAX_ROUNDS)
        check_switch(self.tf32, "--tf32")
        check_int(self.remeasure, "--remeasure", low=0, high=MAX_ROUNDS)
        if self.estimator not in ESTIMATORS:
            raise UsageError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")
        check_threads(self.threads)

    @classmethod
    def from_options(
        cls, batch_sizes=None, min_batch=None, max_batch=None, memory_budget=None, nproc=1, threads=None, **fields
    ) -> "ProfileConfig":
        """The config `largestep profile`'s options ask for (text, as typed) or ``largestep.profile``'s (numbers, a
        list of batch sizes), validated: a one-line UsageError naming the option otherwise. ``fields``: the
        config's other fields (dtype, full, min_steps, min_seconds, warmup_steps, rounds, seed, compile,
        estimator)."""
        from ..units import parse_batch_sizes, parse_positive_int, parse_size

        if batch_sizes is not None and (min_batch is not None or max_batch is not None):
            raise UsageError("give either --batch-sizes or --min-batch/--max-batch, not both")
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__) - {"batch_sizes", "memory_budget_bytes"})
        if unknown:
            raise UsageError(f"unknown profile option {unknown[0]!r}")
        config = cls(
            batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes is not None else None,
            min_batch=parse_positive_int(min_batch, "--min-batch") if min_batch is not None else None,
            max_batch=parse_positive_int(max_batch, "--max-batch") if max_batch is not None else 65536,
            memory_budget_bytes=parse_size(memory_budget) if memory_budget is not None else None,
            nproc=parse_positive_int(nproc, "--nproc"),
            threads=parse_threads(threads),
            **fields,
        )
        config.validate()
        return config

    def visit(self) -> "ProfileConfig":
        """The config of one visit to a batch size: its share of the steps and seconds."""
        return replace(
            self,
            min_steps=math.ceil(self.min_steps / self.rounds),
            min_seconds=self.min_seconds / self.rounds,
            max_steps=math.ceil(self.max_steps / self.rounds),
        )


def plan_batch_sizes(config: ProfileConfig, workload: "Workload") -> list[int]:
    """The batch sizes to try, in increasing order, before any stopping rule."""
    if config.batch_sizes is not None:
        return sorted(set(config.batch_sizes))
    baseline = workload.baseline_batch_size
    low = config.min_batch or max(1, 2 ** int(math.floor(math.log2(max(1, baseline // 4)))))
    sizes = []
    b = low
    while b <= config.max_batch:
        sizes.append(b)
        b *= 2
    if config.include_baseline and low <= baseline <= config.max_batch:
        sizes.append(baseline)
    return sorted({b for b in sizes if b % config.nproc == 0})  # every rank takes an equal share


def parse_threads(text: str | int | None) -> int | None:
    """--threads as typed (or given from Python): None (torch's default) or a whole number from 1 to MAX_THREADS."""
    from ..units import parse_positive_int

    if text is None:
        return None
    threads = parse_positive_int(text, "--threads")
    check_threads(threads)
    return threads


def check_threads(threads: int | None) -> None:
    """--threads: None (torch's default) or a whole number of threads from 1 to MAX_THREADS."""
    if threads is not None:
        check_int(threads, "--threads", high=MAX_THREADS)


def profile_config_of(fields: dict, **changes) -> ProfileConfig:
    """The ProfileConfig a stored config (a job's params, a profile's ``config`` column) describes, with
    ``changes``; fields it does not know (from another version) are left out."""
    known = {k: v for k, v in {**fields, **changes}.items() if k in ProfileConfig.__dataclass_fields__}
    if known.get("batch_sizes") is not None:
        known["batch_sizes"] = tuple(known["batch_sizes"])
    return ProfileConfig(**known)
