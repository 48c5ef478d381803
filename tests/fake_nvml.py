"""Fakes of the GPU layer (`pynvml` and `torch.cuda`) for exercising GPU paths without a GPU.

    fake = install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid="GPU-...")]))
    state = install_fake_cuda(monkeypatch, [cuda_properties("...")])
    with cuda_on_cpu(state, FakeAllocator(fixed_bytes=..., bytes_per_sample=..., oom_above=...)):
        ...profile or train on torch.device("cuda:0"): the work runs on the CPU...

Names, error classes and call signatures mirror the real module; only what largestep uses is
there. `fake.calls` counts calls per function name, so tests can assert what was (not) retried.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
import uuid as _uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FIELD_FUNCTIONS",
    "FakeAllocator",
    "FakeGpu",
    "cuda_on_cpu",
    "cuda_properties",
    "install_fake_cuda",
    "install_fake_nvml",
    "make_fake_pynvml",
]

# The field getters, by the name a FakeGpu's `unsupported` uses.
UUID_A = "4a1b2c3d-0000-1111-2222-aaaaaaaaaaaa"  # two GPUs the tests tell apart by UUID
UUID_B = "5e6f7a8b-3333-4444-5555-bbbbbbbbbbbb"

FIELD_FUNCTIONS = (
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetComputeRunningProcesses",
)

# Return codes as in nvml.h, so str() and .value look like the real errors.
_ERRORS = {
    "NVMLError_Uninitialized": (1, "Uninitialized"),
    "NVMLError_InvalidArgument": (2, "Invalid Argument"),
    "NVMLError_NotSupported": (3, "Not Supported"),
    "NVMLError_NoPermission": (4, "Insufficient Permissions"),
    "NVMLError_NotFound": (6, "Not Found"),
    "NVMLError_DriverNotLoaded": (9, "Driver Not Loaded"),
    "NVMLError_LibraryNotFound": (12, "NVML Shared Library Not Found"),
    "NVMLError_FunctionNotFound": (13, "Function Not Found"),
    "NVMLError_GpuIsLost": (15, "GPU is lost"),
    "NVMLError_Unknown": (999, "Unknown Error"),
}


@dataclass
class FakeGpu:
    uuid: str  # as NVML reports it: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    name: str = "NVIDIA A100-SXM4-40GB"
    gpu_util_pct: int = 87
    mem_used_bytes: int = 12 * 2**30
    mem_total_bytes: int = 40 * 2**30
    power_mw: int = 250_000  # nvmlDeviceGetPowerUsage: on Ampere and newer a one-second average
    # The energy counter's rate (nvmlDeviceGetTotalEnergyConsumption, Volta and newer): the power
    # actually drawn now; None: the GPU has no counter (NotSupported).
    energy_w: float | None = None
    sm_clock_mhz: int = 1410
    temp_c: int = 61
    # Names from FIELD_FUNCTIONS that raise NVMLError_NotSupported on this GPU.
    unsupported: frozenset[str] = frozenset()
    # Names from FIELD_FUNCTIONS that raise this error name (from _ERRORS) instead of answering.
    failing: tuple[tuple[str, str], ...] = ()
    # MIG slices of this GPU (each a FakeGpu with a "MIG-..." uuid), in NVML's slice order.
    migs: tuple["FakeGpu", ...] = ()
    # (pid, device memory bytes) of the compute processes on this GPU, as nvmlDeviceGetComputeRunningProcesses
    # lists them (None bytes: NVML could not tell, as under some virtualised drivers)
    processes: tuple[tuple[int, int | None], ...] = ()


class _Handle:
    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu

    def __repr__(self) -> str:
        return f"<fake nvmlDevice_t {self.gpu.uuid}>"


def make_fake_pynvml(
    gpus: Iterable[FakeGpu] = (),
    *,
    init_error: str | None = None,
    driver_version: str = "535.104.05",
    nvml_version: str = "12.535.104.05",
    bytes_strings: bool = False,
) -> types.ModuleType:
    """A module that stands in for `pynvml`.

    init_error: None, or an error class name from _ERRORS ("NVMLError_LibraryNotFound",
    "NVMLError_DriverNotLoaded", ...) that nvmlInit raises.
    bytes_strings: return UUIDs and versions as bytes, as nvidia-ml-py < 11.515 did.
    """
    gpus = list(gpus)
    fake = types.ModuleType("pynvml")
    fake.__file__ = "<fake pynvml>"
    fake.calls = Counter()
    fake.initialized = False

    class NVMLError(Exception):
        value = 999
        message = "Unknown Error"

        def __init__(self, *args):
            super().__init__(*args)

        def __str__(self) -> str:
            return self.message

    fake.NVMLError = NVMLError
    for class_name, (code, message) in _ERRORS.items():
        setattr(fake, class_name, type(class_name, (NVMLError,), {"value": code, "message": message}))

    fake.NVML_CLOCK_SM = 1
    fake.NVML_TEMPERATURE_GPU = 0

    def _out(text: str):
        return text.encode() if bytes_strings else text

    def api(function):
        """Count the call, and fail as the real library does before nvmlInit."""

        def wrapper(*args):
            fake.calls[function.__name__] += 1
            if function.__name__ != "nvmlInit" and not fake.initialized:
                raise fake.NVMLError_Uninitialized()
            return function(*args)

        wrapper.__name__ = function.__name__
        setattr(fake, function.__name__, wrapper)
        return wrapper

    def field(handle: _Handle, function_name: str):
        if function_name in handle.gpu.unsupported:
            raise fake.NVMLError_NotSupported()
        for failing_name, error_name in handle.gpu.failing:
            if failing_name == function_name:
                raise getattr(fake, error_name)()
        return handle.gpu

    @api
    def nvmlInit():
        if init_error is not None:
            raise getattr(fake, init_error)()
        fake.initialized = True

    @api
    def nvmlShutdown():
        fake.initialized = False

    @api
    def nvmlSystemGetDriverVersion():
        return _out(driver_version)

    @api
    def nvmlSystemGetNVMLVersion():
        return _out(nvml_version)

    @api
    def nvmlDeviceGetCount():
        return len(gpus)

    @api
    def nvmlDeviceGetHandleByIndex(index):
        if not 0 <= index < len(gpus):
            raise fake.NVMLError_InvalidArgument()
        return _Handle(gpus[index])

    @api
    def nvmlDeviceGetUUID(handle):
        return _out(handle.gpu.uuid)

    @api
    def nvmlDeviceGetName(handle):
        return _out(handle.gpu.name)

    @api
    def nvmlDeviceGetUtilizationRates(handle):
        gpu = field(handle, "nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(gpu=gpu.gpu_util_pct, memory=gpu.gpu_util_pct // 2)

    @api
    def nvmlDeviceGetMemoryInfo(handle):
        gpu = field(handle, "nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(
            total=gpu.mem_total_bytes, used=gpu.mem_used_bytes, free=gpu.mem_total_bytes - gpu.mem_used_bytes
        )

    @api
    def nvmlDeviceGetPowerUsage(handle):
        return field(handle, "nvmlDeviceGetPowerUsage").power_mw

    @api
    def nvmlDeviceGetTotalEnergyConsumption(handle):
        gpu = field(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if gpu.energy_w is None:
            raise fake.NVMLError_NotSupported()
        return int(gpu.energy_w * time.time() * 1000)  # mJ, a counter rising at energy_w watts

    @api
    def nvmlDeviceGetMaxMigDeviceCount(handle):
        if not handle.gpu.migs:
            raise fake.NVMLError_NotSupported()
        return 7  # an A100's slots, most of them empty

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
        if index >= len(handle.gpu.migs):
            raise fake.NVMLError_NotFound()
        return _Handle(handle.gpu.migs[index])

    @api
    def nvmlDeviceGetClockInfo(handle, clock_type):
        if clock_type != fake.NVML_CLOCK_SM:
            raise fake.NVMLError_InvalidArgument()
        return field(handle, "nvmlDeviceGetClockInfo").sm_clock_mhz

    @api
    def nvmlDeviceGetTemperature(handle, sensor):
        if sensor != fake.NVML_TEMPERATURE_GPU:
            raise fake.NVMLError_InvalidArgument()
        return field(handle, "nvmlDeviceGetTemperature").temp_c

    @api
    def nvmlDeviceGetComputeRunningProcesses(handle):
        gpu = field(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    return fake


# ---------------------------------------------------------------------------------------------
# installing fakes for one test (with pytest's monkeypatch, so everything is undone after it)


def install_fake_nvml(monkeypatch, fake: types.ModuleType | None) -> types.ModuleType | None:
    """Make `import pynvml` return `fake` (None: as if nvidia-ml-py were not installed), and
    make largestep.measure.telemetry forget any nvmlInit it cached; both are restored after the test."""
    from largestep.measure import telemetry

    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "_nvml_cache", None)
    return fake


def cuda_properties(
    uuid: str,
    name: str = "NVIDIA A100-SXM4-40GB",
    total_memory: int = 40 * 2**30,
    major: int = 8,
    minor: int = 0,
    multi_processor_count: int = 108,
) -> types.SimpleNamespace:
    """What torch.cuda.get_device_properties returns, as far as largestep reads it. `uuid` is
    spelled as torch prints it: bare hex, no "GPU-" prefix."""
    return types.SimpleNamespace(
        name=name,
        total_memory=total_memory,
        major=major,
        minor=minor,
        multi_processor_count=multi_processor_count,
        uuid=_uuid.UUID(uuid),
    )


def install_fake_cuda(monkeypatch, properties: list[types.SimpleNamespace]) -> dict:
    """Make torch.cuda report these GPUs (in torch's index order). Returns the fake's state:
    "synchronized" (device list), "peak" / "allocated" / "reserved_peak" (bytes per index, settable),
    "current" (the index torch.cuda.set_device or a ``torch.cuda.device(i)`` block chose), "busy_until"
    (when the last queued work of any GPU ends) and "busy_until_of" (the same, per GPU: each has its queue)."""
    import torch

    state = {
        "synchronized": [],
        "peak": {},
        "allocated": {},
        "reserved_peak": {},
        "empty_cache": 0,
        "current": 0,
        "busy_until": 0.0,
        "busy_until_of": {},
        "forwards": 0,
    }

    def index_of(device=None) -> int:
        if device is None:
            index = state["current"]
        elif isinstance(device, int):
            index = device
        else:
            index = torch.device(device).index
            index = state["current"] if index is None else index
        if not 0 <= index < len(properties):
            raise AssertionError(f"invalid device ordinal {index}")
        return index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(properties))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(properties))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties[index_of(device)])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: properties[index_of(device)].name)

    def synchronize(device=None):
        """Wait, as the host would, until the device's queued work (see FakeAllocator.seconds_per_forward) is
        done: that device's only (``None``: the current device's), as torch.cuda.synchronize does."""
        index = index_of(device)
        state["synchronized"].append(index)
        time.sleep(max(0.0, state["busy_until_of"].get(index, 0.0) - time.perf_counter()))

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)

    class Event:
        """A CUDA event: recorded (with no stream given) on the current device's stream, as torch's is, it
        completes when that device has done the work queued before it; another GPU's work does not count."""

        def __init__(self, enable_timing: bool = False):
            self.at: float | None = None
            self.device: int | None = None

        def record(self, stream=None) -> None:
            self.device = state["current"]
            self.at = max(time.perf_counter(), state["busy_until_of"].get(self.device, 0.0))

        def synchronize(self) -> None:
            time.sleep(max(0.0, self.at - time.perf_counter()))

        def elapsed_time(self, end: "Event") -> float:
            if end.device != self.device:
                raise RuntimeError("elapsed_time: the two events were recorded on different devices")
            return (end.at - self.at) * 1000.0  # milliseconds, as torch's

    class device:
        """``with torch.cuda.device(i):`` makes GPU i current inside the block, and restores the one before."""

        def __init__(self, device):
            self.index = index_of(device)
            self.before: int | None = None

        def __enter__(self):
            self.before, state["current"] = state["current"], self.index

        def __exit__(self, *_exc):
            state["current"] = self.before
            return False

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: state.__setitem__("current", index_of(device)))

    def reset_peaks(device=None):
        state["peak"][index_of(device)] = 0
        state["reserved_peak"][index_of(device)] = 0

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peaks)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"].get(index_of(device), 0))
    monkeypatch.setattr(
        torch.cuda, "max_memory_reserved", lambda device=None: state["reserved_peak"].get(index_of(device), 0)
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"].get(index_of(device), 0))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: state.__setitem__("empty_cache", state["empty_cache"] + 1))
    return state


# ---------------------------------------------------------------------------------------------
# running "CUDA" work on the CPU, with an allocator whose peaks and ceiling a test chooses


@dataclass(frozen=True)
class FakeAllocator:
    """The device memory a forward pass at batch B takes: fixed_bytes + bytes_per_sample * B, and
    torch.OutOfMemoryError (as the CUDA caching allocator raises it) when B exceeds oom_above, or
    ``oom_error`` (a raw library failure such as cuBLAS's) if one is given. The allocator reserves
    ``reserved_overhead_bytes`` more than it allocates (fragmentation). Each forward pass queues
    ``seconds_per_forward`` of device work, which runs while the host goes on, as a GPU's does: only
    a synchronisation waits for it."""

    fixed_bytes: int = 2**30
    bytes_per_sample: int = 2**20
    oom_above: int | None = None
    oom_error: BaseException | None = None
    reserved_overhead_bytes: int = 0
    seconds_per_forward: float = 0.0

    def bytes_for(self, batch_size: int) -> int:
        return self.fixed_bytes + self.bytes_per_sample * batch_size


@contextlib.contextmanager
def cuda_on_cpu(state: dict, allocator: FakeAllocator = FakeAllocator()):
    """Inside, tensors and modules sent to a "cuda" device stay on the CPU (the code under test
    still holds torch.device("cuda:N"), so every device.type == "cuda" branch runs), pinned memory
    is plain memory, and each module's forward "allocates" on the fake device of ``state`` (from
    install_fake_cuda): it raises the peak to allocator.bytes_for(batch) or runs out of memory.

    A tensor sent to the GPU with ``.to`` is copied, as a real GPU's would be (one already there is
    returned as it is), and counted while it lives: ``state["resident_bytes"]`` now, and its peak
    ``state["resident_peak_bytes"]``, so a test can tell how many copies of a data set were on the GPU at once.
    (A module's parameters move by swapping their ``.data``: they are not counted.)
    Only the calling thread is affected (torch function modes are thread-local)."""
    import weakref

    import torch
    from torch.overrides import TorchFunctionMode

    state.setdefault("resident_bytes", 0)
    state.setdefault("resident_peak_bytes", 0)
    resident: dict[int, weakref.ref] = {}  # id -> the tensor, for tensors placed on the fake GPU and alive

    def is_cuda(value) -> bool:
        return (isinstance(value, str) and value.startswith("cuda")) or (
            isinstance(value, torch.device) and value.type == "cuda"
        )

    def to_cpu(value):
        if is_cuda(value):
            value = torch.device(value)
            state["placed"] = value.index if value.index is not None else state["current"]
            return torch.device("cpu")
        return value

    def on_gpu(tensor) -> bool:
        held = resident.get(id(tensor))
        return held is not None and held() is tensor

    def count(tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        resident[id(tensor)] = weakref.ref(tensor)
        state["resident_bytes"] += size
        state["resident_peak_bytes"] = max(state["resident_peak_bytes"], state["resident_bytes"])

        def release(key=id(tensor)):
            resident.pop(key, None)
            state["resident_bytes"] -= size

        weakref.finalize(tensor, release)

    class CudaOnCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.device:
                return func(*args, **(kwargs or {}))  # naming a cuda device is fine; placing data there is not
            name = getattr(func, "__name__", "")
            if name == "pin_memory":
                state.setdefault("pinned", []).append(tuple(args[0].shape))  # what was pinned, by shape
                return args[0]  # pinning host memory needs a real driver; the copy is the same
            kwargs = kwargs or {}
            moving = (
                name == "to"
                and args
                and isinstance(args[0], torch.Tensor)
                and (any(is_cuda(a) for a in args[1:]) or is_cuda(kwargs.get("device")))
            )
            args = tuple(to_cpu(a) for a in args)
            kwargs = {k: to_cpu(v) for k, v in kwargs.items()}
            if not moving:
                return func(*args, **kwargs)
            if on_gpu(args[0]) and kwargs.get("dtype") is None and not any(isinstance(a, torch.dtype) for a in args):
                return args[0]  # already on the GPU: no copy, as torch's
            placed = func(*args, **{**kwargs, "copy": True})
            count(placed)
            return placed

    def allocate(_module, inputs):
        batch = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), None)
        if batch is None:
            return
        if allocator.oom_above is not None and batch > allocator.oom_above:
            if allocator.oom_error is not None:
                raise allocator.oom_error
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {batch} (fake)")
        index = state.get("placed", state["current"])
        used = allocator.bytes_for(batch)
        state["allocated"][index] = used
        state["peak"][index] = max(state["peak"].get(index, 0), used)
        state["forwards"] += 1
        queue = state["busy_until_of"]
        queue[index] = max(queue.get(index, 0.0), time.perf_counter()) + allocator.seconds_per_forward
        state["busy_until"] = max(state["busy_until"], queue[index])
        reserved = used + allocator.reserved_overhead_bytes
        state["reserved_peak"][index] = max(state["reserved_peak"].get(index, 0), reserved)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(allocate)
    try:
        with CudaOnCpu():
            yield state
    finally:
        hook.remove()
