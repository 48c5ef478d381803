"""The device self-check behind ``largestep doctor --devices``: does this machine measure what largestep thinks?

On every device it checks the profiler's own timing (blocks of steps between two syncs, as
:func:`largestep.measure.profiler.time_in_blocks` times them) against an independent clock on two known
pieces of work, a matmul and a training step of a small MLP: CUDA events on a GPU,
``torch.utils.benchmark`` on the CPU. On each GPU also: NVML finds the GPU torch names (by UUID) and
its power and energy read sensibly; an induced out-of-memory error is recognised and the GPU still
works after it; bf16 and fp16 run. With two GPUs or more, a 2-rank NCCL all-reduce over loopback.
The CPU cannot be driven out of memory safely (the kernel's OOM killer, not an exception, would
answer), so that check says skipped there.

Every figure in the report was measured here, now; the report says how (``measured``), so a user can
attach it to a bug report as it is. The report also records the versions, NVML's state and the TF32 and cuDNN
settings float32 work runs with here by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import random
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil
import torch

from . import devices, telemetry
from .devices import DeviceInfo
from .profiler import BLOCK_SECONDS, StepRunner, block_steps_for, time_in_blocks
from ..workloads.base import Workload

__all__ = ["DeviceCheck", "OK", "WARN", "PROBLEM", "SKIPPED", "check_devices", "report"]

OK, WARN, PROBLEM, SKIPPED = "ok", "warn", "problem", "skipped"

AGREE_WITHIN = 0.25  # timing: the profiler's median within 25% of the reference's is "ok" ...
DISAGREE_BEYOND = 1.0  # ... beyond 100% (twice or half) a "problem"; between, a "warn" (a shared, noisy machine)
MATMUL_SIZE = 1024  # the known matmul: (n x n) @ (n x n) in fp32, 2 n^3 FLOPs
ROUNDS = 15  # timing: rounds of ~50 ms of steps on each clock, in shuffled order, at most ...
MIN_ROUNDS = 5  # ... at least ...
TIMING_BUDGET_S = 4.0  # ... and no new round after this long (a busy machine slows every step)
ALL_REDUCE_TIMEOUT_S = 60.0
NVML_LOAD_S = 1.0  # NVML: seconds of matmuls while power and energy are read


@dataclass(frozen=True)
class DeviceCheck:
    device: str  # the device's id ("cpu", "cuda:GPU-...")
    name: str  # "timing: matmul", "nvml", "out of memory", "precision", "nccl all-reduce"
    verdict: str  # ok | warn | problem | skipped
    summary: str  # one line for the table
    measured: dict = field(default_factory=dict)  # the raw figures behind the verdict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_devices(on_check: Callable[[DeviceCheck], None] = lambda _c: None) -> list[DeviceCheck]:
    """Every check on every device here: the CPU always, then each CUDA GPU (and MPS's timing)."""
    found = devices.discover()
    checks: list[DeviceCheck] = []

    def record(check: DeviceCheck) -> None:
        checks.append(check)
        on_check(check)

    gpus = [d for d in found if d.kind == "cuda"]
    if not gpus:
        record(
            DeviceCheck(
                "cuda",
                "gpus",
                SKIPPED,
                "no CUDA GPU on this machine: only the CPU's checks run",
                {"torch_cuda": torch.version.cuda},
            )
        )
    for info in found:
        device = torch.device(info.torch_device)
        # the GPU checked is the current one: a CUDA event recorded without a stream records on the current
        # device's, so outside this block the events of cuda:1 and up would time an idle GPU 0
        with _current(info):
            record(_timing(info, "timing: matmul", _matmul_step(device)))
            record(_timing(info, "timing: training step", _training_step(device)))
            if info.kind == "cuda":
                record(_nvml(info))
                record(_out_of_memory(info))
            elif info.kind == "cpu":
                record(
                    DeviceCheck(
                        info.id,
                        "out of memory",
                        SKIPPED,
                        "not induced on the CPU: the kernel would kill the process instead of raising",
                    )
                )
            record(_precision(info))
    if len(gpus) >= 2:
        record(_nccl_all_reduce())
    return checks


def _current(info: DeviceInfo) -> contextlib.AbstractContextManager:
    """A CUDA GPU made the current device for the block (the one before it restored after); nothing elsewhere."""
    return torch.cuda.device(info.index) if info.kind == "cuda" else contextlib.nullcontext()


def report(checks: list[DeviceCheck]) -> dict:
    """The JSON document a user attaches to a bug report: the checks, the machine and the versions."""
    return {
        "largestep_selfcheck": 1,
        "created_at": time.time(),
        "versions": devices.versions(),
        "platform": platform.platform(),
        "nvml": telemetry.nvml_status().to_dict(),
        # TF32 and cuDNN as this process runs float32 matmuls and convolutions by default (a workload's tf32 field
        # or --tf32 changes them for its jobs, which record their own)
        "math_settings": devices.math_settings(),
        "devices": [d.to_dict() for d in devices.discover()],
        "checks": [c.to_dict() for c in checks],
    }


# -- timing ---------------------------------------------------------------------------------------------


def _matmul_step(device: torch.device) -> Callable[[], object]:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    return lambda: a @ b


def _training_step(device: torch.device) -> Callable[[], object]:
    """One full step of a small MLP (forward, backward, Adam) through the profiler's own StepRunner."""
    runner = StepRunner(_known_workload(), device, batch_size=256)
    runner.warm_up(3)
    return runner.step


def _known_workload() -> Workload:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 256, generator=generator)
    y = torch.randint(0, 10, (4096,), generator=generator)
    return Workload(
        name="selfcheck-mlp",
        train=(x, y),
        val=(x[:256], y[:256]),
        model=lambda: torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)),
        loss=torch.nn.functional.cross_entropy,
        baseline_batch_size=256,
        baseline_lr=1e-3,
    )


def _timing(info: DeviceInfo, name: str, step: Callable[[], object]) -> DeviceCheck:
    """The profiler's median time of ``step`` against the reference clock's, on the same work, the two
    clocks alternating in rounds (in shuffled order) so that a shared machine's drift falls on both."""
    device = torch.device(info.torch_device)
    try:
        for _ in range(3):  # untimed: caches, cuBLAS handles, lazy init
            step()
        devices.synchronize(device)
        # a round's share for each clock: about BLOCK_SECONDS of steps. On a GPU, one block as the
        # profiler times it; on the CPU the profiler times every step alone, as many as fit in that time,
        # and the reference then times as many at once
        steps = _steps_in_a_block(step, device)
        reference_steps, reference = _reference_clock(step, device)
        profiler_times, reference_times = [], []
        order = random.Random(0)
        started = time.perf_counter()
        for round_ in range(ROUNDS):
            if round_ >= MIN_ROUNDS and time.perf_counter() - started > TIMING_BUDGET_S:
                break
            for clock in order.sample(("profiler", "reference"), 2):
                if clock == "reference":
                    reference_times.append(reference_steps(steps))
                elif device.type == "cpu":
                    times = time_in_blocks(step, device, 1, BLOCK_SECONDS, 100_000, 1)
                    profiler_times.append(statistics.fmean(times))
                    steps = len(times)
                else:
                    profiler_times += time_in_blocks(step, device, 1, 0.0, 1, steps)
    except Exception as exc:  # a check that cannot run is a finding, not a crash of the doctor
        return DeviceCheck(info.id, name, PROBLEM, f"could not run: {_one_line(exc)}")
    profiler_s, reference_s = statistics.median(profiler_times), statistics.median(reference_times)
    ratio = profiler_s / reference_s if reference_s > 0 else float("inf")
    off = abs(ratio - 1.0)
    verdict = OK if off <= AGREE_WITHIN else WARN if off <= DISAGREE_BEYOND else PROBLEM
    load = psutil.getloadavg()[0]
    busy = load > (psutil.cpu_count() or 1)
    summary = f"profiler {profiler_s * 1e3:.3g} ms vs {reference} {reference_s * 1e3:.3g} ms a step ({ratio:.2f}x)"
    if verdict != OK and busy:  # other work on the machine, not the clocks, may be what differs
        verdict = WARN
        summary += f"; the machine is busy (load {load:.1f}): run again when it is idle"
    return DeviceCheck(
        info.id,
        name,
        verdict,
        summary,
        {
            "profiler_median_s": profiler_s,
            "reference": reference,
            "reference_median_s": reference_s,
            "ratio": ratio,
            "rounds": len(reference_times),
            "load_average_1min": load,
            "profiler_times_s": profiler_times,
            "reference_times_s": reference_times,
        },
    )


def _steps_in_a_block(step: Callable[[], object], device: torch.device) -> int:
    devices.synchronize(device)
    start = time.perf_counter()
    step()
    devices.synchronize(device)
    return block_steps_for(time.perf_counter() - start)


def _reference_clock(step: Callable[[], object], device: torch.device) -> tuple[Callable[[int], float], str]:
    """(a function timing ``n`` steps at once, in seconds a step; the clock's name): CUDA events
    recorded on the GPU's stream, or torch.utils.benchmark's timer on the CPU."""
    if device.type == "cuda":

        def cuda_events(n: int) -> float:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(n):
                step()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0 / n  # ms -> s

        return cuda_events, "CUDA events"
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())  # as steps run
    return (lambda n: float(timer.timeit(n).median)), "torch.utils.benchmark"


# -- NVML, out of memory, precision ----------------------------------------------------------------------


def _nvml(info: DeviceInfo) -> DeviceCheck:
    status = telemetry.nvml_status()
    if not status.available:
        return DeviceCheck(info.id, "nvml", WARN, f"NVML unavailable: {status.reason}; no power or energy figures")
    handle = telemetry.nvml_handle_for(info)
    if handle is None:
        return DeviceCheck(
            info.id,
            "nvml",
            PROBLEM,
            f"NVML lists no GPU with torch's UUID {info.uuid}: telemetry would read another GPU or none",
        )
    sampler = telemetry.Sampler(info, interval_s=0.05)
    meter = telemetry.WindowPower(info, sampler)
    device = torch.device(info.torch_device)
    step = _matmul_step(device)
    with sampler:
        start = time.time()
        meter.open()
        while time.time() - start < NVML_LOAD_S:  # matmuls: the GPU draws more than idle
            step()
        devices.synchronize(device)
        meter.close()
        end = time.time()
    watts = meter.mean_power_w(start, end)
    measured = {"uuid": info.uuid, "mean_power_w": watts, "energy_counter": meter.has_energy_counter}
    if watts is None:
        return DeviceCheck(info.id, "nvml", WARN, "UUID matches; this GPU reports no power", measured)
    sensible = 1.0 < watts < 2000.0
    source = "energy counter" if measured["energy_counter"] else "power samples"
    return DeviceCheck(
        info.id,
        "nvml",
        OK if sensible else PROBLEM,
        f"UUID matches; {watts:.0f} W under a matmul load ({source})",
        measured,
    )


def _out_of_memory(info: DeviceInfo) -> DeviceCheck:
    """Ask for twice the GPU's memory: the error must count as out of memory, and the GPU work after it."""
    device = torch.device(info.torch_device)
    try:
        torch.empty(2 * (info.total_memory_bytes or 2**40), dtype=torch.uint8, device=device)
    except Exception as exc:
        caught = devices.is_out_of_memory(exc)
        error = _one_line(exc)
    else:
        return DeviceCheck(info.id, "out of memory", PROBLEM, "allocating twice the GPU's memory succeeded")
    devices.free_memory(device)
    try:
        usable = bool(torch.isfinite(_small_matmul(device)).all())
    except Exception as exc:
        return DeviceCheck(info.id, "out of memory", PROBLEM, f"the GPU fails after an OOM: {_one_line(exc)}")
    if not caught:
        return DeviceCheck(info.id, "out of memory", PROBLEM, f"not recognised as out of memory: {error}")
    return DeviceCheck(
        info.id,
        "out of memory",
        OK if usable else PROBLEM,
        "induced OOM caught; the GPU works after it",
        {"error": error},
    )


def _small_matmul(device: torch.device) -> torch.Tensor:
    return torch.randn(64, 64, device=device) @ torch.randn(64, 64, device=device)


def _precision(info: DeviceInfo) -> DeviceCheck:
    device = torch.device(info.torch_device)
    supported, refused = [], {}
    for dtype in ("bf16", "fp16"):
        try:
            devices.check_dtype(device, dtype)
            with devices.autocast(device, dtype):
                out = _small_matmul(device)
            if out.dtype != devices.DTYPES[dtype]:
                raise RuntimeError(f"autocast gave {out.dtype}")
            supported.append(dtype)
        except Exception as exc:
            refused[dtype] = _one_line(exc)
    summary = f"supports {', '.join(['fp32', *supported])}" + (f"; not {', '.join(refused)}" if refused else "")
    return DeviceCheck(info.id, "precision", OK, summary, {"supported": ["fp32", *supported], "refused": refused})


# -- several GPUs ------------------------------------------------------------------------------------------


def _nccl_all_reduce(backend: str = "nccl") -> DeviceCheck:
    """Two ranks (processes) on GPUs 0 and 1 all-reduce a tensor over loopback; each must see 1 + 2."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    ranks = [
        context.Process(target=_all_reduce_rank, args=(rank, 2, port, backend, results), daemon=True)
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    outcomes = {}
    try:
        for _ in ranks:
            rank, value = results.get(timeout=ALL_REDUCE_TIMEOUT_S)
            outcomes[rank] = value
    except Exception:
        pass
    finally:
        for process in ranks:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    name = f"{backend} all-reduce"
    if len(outcomes) < 2:
        return DeviceCheck(
            "cuda", name, PROBLEM, f"2 ranks did not finish within {ALL_REDUCE_TIMEOUT_S:.0f} s", {"outcomes": outcomes}
        )
    good = all(value == 3.0 for value in outcomes.values())
    return DeviceCheck(
        "cuda",
        name,
        OK if good else PROBLEM,
        "2 ranks agree (1 + 2 = 3)" if good else f"ranks saw {outcomes}",
        {"outcomes": outcomes},
    )


def _all_reduce_rank(rank: int, world: int, port: int, backend: str, results) -> None:
    import torch.distributed as dist

    from .distributed import loopback_sockets

    try:
        loopback_sockets(os.environ)  # as a job's ranks meet: over loopback, opening nothing another machine reaches
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before the process group: NCCL binds to the current device
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        results.put((rank, float(value.item())))
        dist.destroy_process_group()
    except Exception as exc:
        results.put((rank, _one_line(exc)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
