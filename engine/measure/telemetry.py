"""What the hardware is doing while a step is timed: NVML for NVIDIA GPUs, psutil otherwise.

NVML comes from nvidia-ml-py (`import pynvml`), imported lazily so that a machine without it,
or without an NVIDIA driver, still gets CPU telemetry and a clear reason why there is no more.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import psutil
import torch

from . import devices
from .devices import DeviceInfo

__all__ = [
    "RUN_INTERVAL_S",
    "SAMPLE_KEYS",
    "NvmlStatus",
    "Sampler",
    "ProcessTree",
    "WindowLoad",
    "WindowPower",
    "background_load",
    "driver_version",
    "hardware_report",
    "nvml_handle_for",
    "nvml_status",
    "snapshot",
]

log = logging.getLogger(__name__)

TREE_REFRESH_S = 2.0  # the job's own processes are listed again at most this often (see ProcessTree.processes)
MIN_LOAD_WINDOW_S = 0.05  # a shorter window is a few of the kernel's 10 ms CPU ticks: its load is not told
RUN_INTERVAL_S = 1.0  # a training run's background load: one sample a second (a day of training: 86,400)

# Every sample has exactly these keys; a value nobody could read is None.
SAMPLE_KEYS = (
    "t",  # unix time, seconds
    "batch_size",  # Sampler.tag when sampled: the batch size being timed
    "source",  # "nvml" | "psutil"
    "gpu_util_pct",  # % of the last sample period a kernel ran (NVML)
    "mem_used_bytes",  # device memory in use, all processes (NVML)
    "power_w",  # board power draw, watts
    "sm_clock_mhz",  # streaming-multiprocessor clock
    "temp_c",  # GPU core temperature
    "cpu_util_pct",  # whole-system CPU busy %, since the previous sample
    "rss_bytes",  # resident memory of this process
    # the background load: what processes outside this job's own process tree are doing
    "other_cpu_pct",  # whole-system CPU busy % minus this job's own share, since the previous sample
    "other_gpu_processes",  # compute processes on this GPU that are not ours (NVML)
    "other_gpu_mem_bytes",  # the device memory they hold (NVML)
)


@dataclass(frozen=True)
class NvmlStatus:
    available: bool
    reason: str | None  # why not available; None when it is
    driver_version: str | None  # "535.104.05"
    nvml_version: str | None
    gpu_count: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# NVML, initialised once per process

_nvml_lock = threading.Lock()
_nvml_cache: tuple[NvmlStatus, ModuleType | None] | None = None


def nvml_status() -> NvmlStatus:
    """Whether NVML can be used here, and if not, why (one line for the user)."""
    return _nvml()[0]


def _nvml() -> tuple[NvmlStatus, ModuleType | None]:
    """(status, the pynvml module once initialised, or None). nvmlInit runs at most once."""
    global _nvml_cache
    with _nvml_lock:
        if _nvml_cache is None:
            _nvml_cache = _init_nvml()
        return _nvml_cache


def _reset_nvml() -> None:
    """Forget the cached nvmlInit result (tests swap the pynvml module)."""
    global _nvml_cache
    with _nvml_lock:
        _nvml_cache = None


def _unavailable(reason: str) -> tuple[NvmlStatus, None]:
    status = NvmlStatus(available=False, reason=reason, driver_version=None, nvml_version=None, gpu_count=0)
    return status, None


def _init_nvml() -> tuple[NvmlStatus, ModuleType | None]:
    try:
        import pynvml
    except ImportError:
        return _unavailable("nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if isinstance(exc, _error_class(pynvml, "NVMLError_LibraryNotFound")):
            return _unavailable("NVIDIA driver library (libnvidia-ml) not found: no NVIDIA driver on this machine")
        if isinstance(exc, _error_class(pynvml, "NVMLError_DriverNotLoaded")):
            return _unavailable("NVIDIA driver is not loaded")
        return _unavailable(f"NVML failed to start: {exc}")
    status = NvmlStatus(
        available=True,
        reason=None,
        driver_version=_text(_try(pynvml.nvmlSystemGetDriverVersion)),
        nvml_version=_text(_try(getattr(pynvml, "nvmlSystemGetNVMLVersion", None))),
        gpu_count=int(_try(pynvml.nvmlDeviceGetCount) or 0),
    )
    return status, pynvml


def _error_class(pynvml: ModuleType, name: str) -> type[BaseException]:
    # A name this version of nvidia-ml-py lacks matches nothing.
    return getattr(pynvml, name, None) or _NeverRaised


class _NeverRaised(Exception):
    pass


def _try(function: Callable | None, *args):
    if function is None:
        return None
    try:
        return function(*args)
    except Exception:
        return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return str(value)


def nvml_handle_for(info: DeviceInfo):
    """The NVML handle of a CUDA device, matched by UUID (None if NVML or the GPU is missing).

    Never by index: CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER renumber torch's devices,
    while NVML always enumerates every GPU on the machine in PCI order.

    A MIG slice is found among its GPU's slice handles. torch spells every UUID as bare hex (which
    devices.nvml_uuid prefixes "GPU-") while NVML names a slice "MIG-...", so UUIDs are compared
    by their hex digits.
    """
    if info.kind != "cuda" or not info.uuid:
        return None
    status, pynvml = _nvml()
    if pynvml is None:
        return None
    wanted = _uuid_digits(info.uuid)
    for index in range(status.gpu_count):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if _uuid_digits(pynvml.nvmlDeviceGetUUID(handle)) == wanted:
                return handle
        except pynvml.NVMLError:  # a GPU NVML cannot open (lost, no permission) is not ours
            continue
        for slice_handle in _mig_handles(pynvml, handle):
            if _uuid_digits(_try(pynvml.nvmlDeviceGetUUID, slice_handle)) == wanted:
                return slice_handle
    return None


def _uuid_digits(raw: object) -> str | None:
    """A UUID's hex digits, whatever its prefix ("GPU-", "MIG-", none) and spelling (str, bytes)."""
    text = devices.nvml_uuid(raw)
    return text[4:].replace("-", "").lower() if text else None


def _mig_handles(pynvml: ModuleType, handle) -> list:
    """The MIG slices of a GPU (none when MIG is off, unsupported, or this nvidia-ml-py predates it)."""
    count = _try(getattr(pynvml, "nvmlDeviceGetMaxMigDeviceCount", None), handle) or 0
    found = []
    for index in range(count):
        slice_handle = _try(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, index)  # empty slots raise
        if slice_handle is not None:
            found.append(slice_handle)
    return found


# ---------------------------------------------------------------------------------------------
# power over a timed window


class WindowPower:
    """The mean board power over one timed window (the steps of one batch size).

        meter = WindowPower(info, sampler)
        meter.open(); ...timed steps...; meter.close()
        watts = meter.mean_power_w(start, end)

    Where NVML has the GPU's energy counter (Volta and newer), the energy used between ``open`` and
    ``close`` over the window's length: exact for any window. Otherwise the mean of the sampler's
    power readings inside the window; those are what nvmlDeviceGetPowerUsage reports, which on Ampere
    and newer is itself a one-second average, so a window near a second long would blend in the
    warm-up and idle time before it.
    """

    def __init__(self, device: DeviceInfo, sampler: Sampler | None = None):
        self.sampler = sampler
        self._read_mj: Callable[[], int] | None = None
        handle = nvml_handle_for(device)
        _status, pynvml = _nvml()
        energy = getattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", None) if handle is not None else None
        if energy is not None:
            self._read_mj = lambda: energy(handle)  # millijoules since the driver loaded
        self._opened_mj: int | None = None
        self._closed_mj: int | None = None

    @property
    def has_energy_counter(self) -> bool:
        """Whether the last window was measured by the energy counter (else by the power samples)."""
        return self._opened_mj is not None and self._closed_mj is not None

    def _energy_mj(self) -> int | None:
        if self._read_mj is None:
            return None
        try:
            return int(self._read_mj())
        except Exception:  # not supported on this GPU (or a MIG slice): fall back to the samples from now on
            self._read_mj = None
            return None

    def open(self) -> None:
        self._opened_mj, self._closed_mj = self._energy_mj(), None

    def close(self) -> None:
        self._closed_mj = self._energy_mj()

    def mean_power_w(self, start: float, end: float) -> float | None:
        """Watts over the window from ``start`` to ``end`` (unix seconds, as the samples are stamped)."""
        if self._opened_mj is not None and self._closed_mj is not None and end > start:
            return (self._closed_mj - self._opened_mj) / 1000.0 / (end - start)  # mJ -> J, per second
        if self.sampler is None:
            return None
        watts = [s["power_w"] for s in self.sampler.samples if s.get("power_w") is not None and start <= s["t"] <= end]
        return sum(watts) / len(watts) if watts else None


# ---------------------------------------------------------------------------------------------
# the job's own processes, and other processes' load over a timed window


@dataclass(frozen=True)
class TreeCpu:
    """CPU seconds of a job's processes at one moment: {pid: seconds}, and when they were read."""

    seconds: dict[int, float]
    read_at: float  # unix time of the reading
    new_since: float  # a process not in an earlier reading, listed by this one, started after this time

    def since(self, earlier: "TreeCpu") -> float:
        """CPU seconds the tree used since ``earlier``. A process started since then (or since the
        listing before the one that found it) counts whole; one that ended since then loses its last
        interval (it is not there to ask)."""
        started_after = min(earlier.read_at, self.new_since)
        used = 0.0
        for pid, seconds in self.seconds.items():
            if pid in earlier.seconds:
                used += max(0.0, seconds - earlier.seconds[pid])
            elif _started_after(pid, started_after):
                used += seconds
        return used


class ProcessTree:
    """A job's own processes: ``root`` and its descendants (DataLoader workers, compile workers, the
    ranks of a data-parallel job), listed again at most every TREE_REFRESH_S: listing descendants reads
    every process's /proc entry, and each of those reads gives up the GIL, which a training loop
    holding it for 5 ms at a time turns into half a second a listing."""

    def __init__(self, root: psutil.Process):
        self.root = root
        self._listed: list[psutil.Process] = []
        self._listed_at = float("-inf")  # monotonic time of the last listing
        self._listed_wall = time.time()  # wall time of that listing, and of the one before it: before
        self._new_since = time.time()  # that, a process found by the latest listing cannot have started

    def processes(self) -> list[psutil.Process]:
        if time.monotonic() - self._listed_at >= TREE_REFRESH_S:
            self._new_since, self._listed_wall = self._listed_wall, time.time()
            try:
                self._listed = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:  # the root is gone (the job is ending): nothing of ours left to count
                self._listed = []
            self._listed_at = time.monotonic()
        return self._listed

    def cpu_seconds(self) -> TreeCpu:
        seconds = {}
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.Error:  # ended between the listing and the read
                continue
            seconds[process.pid] = times.user + times.system
        return TreeCpu(seconds, time.time(), self._new_since)


class WindowLoad:
    """The CPU cores other processes kept busy over one timed window (the steps of one visit).

        meter = WindowLoad(root_pid)
        meter.open(); ...timed steps...; meter.close()
        cores = meter.others_busy_cores()

    Exact for any window, as the energy counter is for power: the kernel's whole-machine busy time
    at ``open`` and ``close``, less what the job's own process tree used in between. The sampler's
    ``other_cpu_pct`` is the same figure over its sampling intervals.
    """

    def __init__(self, root_pid: int | None = None):
        self.tree = ProcessTree(psutil.Process(root_pid) if root_pid is not None else psutil.Process(os.getpid()))
        self._opened: tuple[float, float, TreeCpu] | None = None
        self._closed: tuple[float, float, TreeCpu] | None = None

    def _read(self) -> tuple[float, float, TreeCpu]:
        times = psutil.cpu_times()
        return time.monotonic(), _total(times) - _idle(times), self.tree.cpu_seconds()

    def open(self) -> None:
        self._opened, self._closed = self._read(), None

    def close(self) -> None:
        self._closed = self._read() if self._opened is not None else None

    def others_busy_cores(self) -> float | None:
        """Cores' worth of CPU time other processes used per second of the last window; None where the
        window was too short for the kernel's clock ticks (10 ms each) to tell."""
        if self._opened is None or self._closed is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self._opened, self._closed
        wall = t1 - t0
        if wall < MIN_LOAD_WINDOW_S:
            return None
        return max(0.0, (busy1 - busy0) - own1.since(own0)) / wall


# ---------------------------------------------------------------------------------------------
# reading one sample


class _Reader:
    """Reads one sample of one device. Owned by one thread; holds no locks.

    ``root_pid`` is the job's own process: it and its descendants (DataLoader workers, compile
    workers) are the job; every other process on the machine is background load.
    """

    def __init__(self, device: DeviceInfo, root_pid: int | None = None):
        self.device = device
        self.process = psutil.Process(os.getpid())
        self.root = psutil.Process(root_pid) if root_pid is not None else self.process
        self.handle = None
        self.pynvml: ModuleType | None = None
        self.reason: str | None = None
        # Fields NVML said this GPU does not support; asking again every tick would only fail.
        self.unsupported: set[str] = set()
        self._last_cpu_times = psutil.cpu_times()
        self._last_cpu_pct: float | None = None
        self._last_other_cpu_pct: float | None = None
        self.tree = ProcessTree(self.root)
        self._own_cpu = self.tree.cpu_seconds()  # the job's CPU seconds at the last sample
        self._fields: tuple[tuple[str, Callable], ...] = ()
        self._gpu_processes: Callable | None = None
        self._permanent_errors: tuple[type[BaseException], ...] = ()

        if device.kind != "cuda":
            self.reason = f"device is {device.kind}"
            return
        status, pynvml = _nvml()
        if pynvml is None:
            self.reason = status.reason
            return
        handle = nvml_handle_for(device)
        if handle is None:
            self.reason = f"NVML lists no GPU with UUID {device.uuid}"
            return
        self.pynvml, self.handle = pynvml, handle
        self._permanent_errors = tuple(
            _error_class(pynvml, name) for name in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
        )
        self._fields = (
            ("gpu_util_pct", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            ("mem_used_bytes", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used),
            ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),  # mW -> W
            ("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            ("temp_c", lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        )
        self._gpu_processes = getattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", None)

    @property
    def source(self) -> str:
        return "nvml" if self.handle is not None else "psutil"

    def read(self, batch_size: int | None) -> dict:
        sample = dict.fromkeys(SAMPLE_KEYS)
        sample["t"] = time.time()
        sample["batch_size"] = batch_size
        sample["source"] = self.source
        for key, read_field in self._fields:
            if key in self.unsupported:
                continue
            try:
                sample[key] = read_field()
            except Exception as exc:  # one field failing never costs the others, or the thread
                if isinstance(exc, self._permanent_errors):
                    self.unsupported.add(key)
        sample["cpu_util_pct"], sample["other_cpu_pct"] = self._cpu_util_pct()
        if self._gpu_processes is not None and "other_gpu_processes" not in self.unsupported:
            self._read_other_gpu_processes(sample)
        try:
            sample["rss_bytes"] = self.process.memory_info().rss
        except psutil.Error:
            pass
        return sample

    def _cpu_util_pct(self) -> tuple[float | None, float | None]:
        """(whole-system busy %, the part of it not ours), since the previous sample."""
        # Our own delta rather than psutil.cpu_percent(None), whose "since the last call" state
        # is shared by every caller in older psutil: two samplers would measure each other.
        now = psutil.cpu_times()
        total = _total(now) - _total(self._last_cpu_times)
        if total <= 0:
            # Less than one clock tick since the last sample (the kernel counts in ticks, 10 ms
            # apart): nothing new to measure, so repeat the last figures and keep the window open.
            return self._last_cpu_pct, self._last_other_cpu_pct
        idle = _idle(now) - _idle(self._last_cpu_times)
        busy = min(total, max(0.0, total - idle))
        own = self._own_cpu_since_last_sample()
        self._last_cpu_times = now
        self._last_cpu_pct = round(100.0 * busy / total, 1)
        # our share is counted per process in the same seconds of CPU; clock ticks make the two
        # counts differ by a tick or so, hence the floor at zero
        self._last_other_cpu_pct = round(100.0 * max(0.0, busy - own) / total, 1)
        return self._last_cpu_pct, self._last_other_cpu_pct

    def _own_cpu_since_last_sample(self) -> float:
        """CPU seconds this job's process tree used since the last sample."""
        now = self.tree.cpu_seconds()
        used = now.since(self._own_cpu)
        self._own_cpu = now
        return used

    def _read_other_gpu_processes(self, sample: dict) -> None:
        """Other compute processes on this GPU and their memory. NVML reports host pids: inside a
        container with its own pid namespace our pids do not match and every process looks foreign."""
        try:
            listed = self._gpu_processes(self.handle)
        except Exception as exc:
            if isinstance(exc, self._permanent_errors):
                self.unsupported.add("other_gpu_processes")
            return
        ours = {process.pid for process in self.tree.processes()}
        others = [p for p in listed if p.pid not in ours]
        sample["other_gpu_processes"] = len(others)
        # usedGpuMemory is None where the driver cannot tell (some virtualised GPUs)
        memory = [p.usedGpuMemory for p in others if isinstance(getattr(p, "usedGpuMemory", None), int)]
        sample["other_gpu_mem_bytes"] = sum(memory) if memory else (0 if not others else None)


def _started_after(pid: int, since: float) -> bool:
    try:
        return psutil.Process(pid).create_time() >= since
    except psutil.Error:
        return False


def _idle(times) -> float:
    return times.idle + getattr(times, "iowait", 0.0)


def _total(times) -> float:
    # On Linux "guest" time is already counted in "user"; adding it again would inflate busy %.
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def snapshot(device: DeviceInfo) -> dict:
    """One sample now (for the hardware card). CPU % is over a short 50 ms window."""
    reader = _Reader(device)
    time.sleep(0.05)
    return reader.read(batch_size=None)


# ---------------------------------------------------------------------------------------------
# the background sampler


class Sampler:
    """Samples a device every `interval_s` on a daemon thread while steps are timed.

        with Sampler(info, on_samples=spool.write) as sampler:
            for batch_size in sizes:
                sampler.tag = batch_size
                ...time steps...

    `on_samples` runs on the sampler thread with each new batch of samples, every
    `flush_every_s` and once more on stop; an exception there is logged, not raised.
    `root_pid` (default: this process) roots the job's own process tree: the CPU and GPU use of
    every other process is the background load (:func:`background_load` sums it up).
    """

    def __init__(
        self,
        device: DeviceInfo,
        interval_s: float = 0.1,
        on_samples: Callable[[list[dict]], None] | None = None,
        flush_every_s: float = 1.0,
        root_pid: int | None = None,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.device = device
        self.interval_s = float(interval_s)
        self.flush_every_s = float(flush_every_s)
        self.on_samples = on_samples
        self.tag: int | None = None  # copied into each sample as "batch_size"
        self._reader = _Reader(device, root_pid)
        self._samples: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return self._reader.source

    @property
    def reason(self) -> str | None:
        """Why the source is psutil and not NVML; None when it is NVML."""
        return self._reader.reason

    @property
    def samples(self) -> list[dict]:
        """A copy of every sample taken so far."""
        with self._lock:
            return list(self._samples)

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("a Sampler can be started only once")
        self._thread = threading.Thread(target=self._run, name=f"largestep-sampler-{self.device.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample, hand the unflushed ones to on_samples, and end the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        pending: list[dict] = []
        next_flush = time.monotonic() + self.flush_every_s
        # The first sample comes one interval in: a CPU % over a zero-length window means nothing.
        while not self._stop.wait(self.interval_s):
            self._take(pending)
            if time.monotonic() >= next_flush:
                pending = self._flush(pending)
                next_flush = time.monotonic() + self.flush_every_s
        self._take(pending)  # so even a run shorter than one interval has a sample
        self._flush(pending)

    def _take(self, pending: list[dict]) -> None:
        try:
            sample = self._reader.read(self.tag)
        except Exception:  # never let telemetry take down the run it observes
            log.exception("telemetry sample failed")
            return
        with self._lock:
            self._samples.append(sample)
        pending.append(sample)

    def _flush(self, pending: list[dict]) -> list[dict]:
        if pending and self.on_samples is not None:
            try:
                self.on_samples(pending)
            except Exception:
                log.exception("telemetry on_samples callback failed; %d samples not delivered", len(pending))
        return []


def background_load(samples: list[dict]) -> dict:
    """What other processes did while ``samples`` were taken, in the fields a run or a profile point
    stores: the mean and 90th percentile of their whole-machine CPU busy %, and the most other
    processes (and their device memory) seen on the GPU. None where nothing was measured."""
    cpu = [s["other_cpu_pct"] for s in samples if s.get("other_cpu_pct") is not None]
    gpu = [s["other_gpu_processes"] for s in samples if s.get("other_gpu_processes") is not None]
    gpu_memory = [s["other_gpu_mem_bytes"] for s in samples if s.get("other_gpu_mem_bytes") is not None]
    return {
        "background_cpu_pct": round(float(np.mean(cpu)), 1) if cpu else None,
        "background_cpu_p90_pct": round(float(np.percentile(cpu, 90)), 1) if cpu else None,
        "background_gpu_processes": max(gpu) if gpu else None,
        "background_gpu_mem_bytes": max(gpu_memory) if gpu_memory else None,
    }


# ---------------------------------------------------------------------------------------------
# the hardware card


def hardware_report() -> dict:
    """Everything `largestep hardware --json` shows: devices, NVML, library versions."""
    report_devices = []
    for info in devices.discover():
        entry = info.to_dict()
        entry["live"] = snapshot(info) if info.kind == "cuda" else None
        report_devices.append(entry)
    return {
        "devices": report_devices,
        "nvml": nvml_status().to_dict(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def driver_version() -> str | None:
    """The NVIDIA driver version from NVML, else the CUDA version torch was built for, labelled."""
    status = nvml_status()
    if status.available and status.driver_version:
        return status.driver_version
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda} (torch build; driver unknown)"
    return None
