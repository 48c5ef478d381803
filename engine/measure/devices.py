"""CPU / CUDA / MPS devices: discovery, resolving `--device`, sync points, memory stats, dtypes.

Everything device-specific that the profiler and the training loop need goes through this
module, so the same code runs on a laptop CPU, an Apple GPU and a CUDA GPU, and the CUDA paths
can be exercised on a CPU-only machine by faking `torch.cuda`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import platform
import re
from dataclasses import dataclass

import psutil
import torch

from ..errors import DeviceError, UsageError

__all__ = [
    "compile_model",
    "DTYPES",
    "DeviceInfo",
    "autocast",
    "check_dtype",
    "current_memory",
    "device_info",
    "discover",
    "fits_on_device",
    "free_memory",
    "is_out_of_memory",
    "math_settings",
    "needs_grad_scaler",
    "peak_memory",
    "reset_peak_memory",
    "resolve_device",
    "synchronize",
    "use_device",
    "use_math",
    "versions",
]

# The mixed-precision names the tool accepts, mapped to the autocast dtype (None: no autocast).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_ACCEPTED_DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class DeviceInfo:
    """One device as the user would name it, with what the profiler needs to know about it."""

    id: str  # stable across CUDA_VISIBLE_DEVICES reorderings: "cpu", "cuda:<uuid>", "mps"
    kind: str  # "cpu" | "cuda" | "mps"
    index: int | None  # torch's index for cuda; None otherwise
    name: str  # "NVIDIA A100-SXM4-40GB", or the CPU model name
    total_memory_bytes: int | None  # GPU memory; total RAM for the CPU
    compute_capability: str | None  # "8.0" for cuda
    uuid: str | None  # NVML's form, "GPU-xxxxxxxx-xxxx-..." (or "MIG-..."), cuda only
    cores: int | None  # logical cores for the CPU; streaming multiprocessors for cuda
    torch_device: str  # what to pass to torch.device: "cpu", "cuda:0", "mps"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# discovery


def discover() -> list[DeviceInfo]:
    """Every device torch can use here: the CPU always, then each CUDA GPU, then MPS."""
    devices = [_cpu_info()]
    if _cuda_available():
        devices.extend(_cuda_info(index) for index in range(torch.cuda.device_count()))
    if _mps_available():
        devices.append(_mps_info())
    return devices


def device_info(device: torch.device | str) -> DeviceInfo:
    """The DeviceInfo for a torch device (as returned by `resolve_device`)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_info(index)
    if device.type == "mps":
        return _mps_info()
    if device.type == "cpu":
        return _cpu_info()
    raise DeviceError(f"device {device}: unsupported device type; use {_ACCEPTED_DEVICES}")


def _cpu_info() -> DeviceInfo:
    return DeviceInfo(
        id="cpu",
        kind="cpu",
        index=None,
        name=_cpu_name(),
        total_memory_bytes=psutil.virtual_memory().total,
        compute_capability=None,
        uuid=None,
        cores=psutil.cpu_count(logical=True),
        torch_device="cpu",
    )


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    # /proc/cpuinfo names the model on Linux ("AMD EPYC 7763 64-Core Processor");
    # platform.processor() is often empty there but is the best we have elsewhere.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _cuda_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    raw = getattr(props, "uuid", None)
    uuid = nvml_uuid(raw, mig=raw is not None and _is_mig_slice(str(props.name), str(raw)))
    return DeviceInfo(
        id=f"cuda:{uuid}" if uuid else f"cuda:{index}",
        kind="cuda",
        index=index,
        name=str(props.name),
        total_memory_bytes=int(props.total_memory),
        compute_capability=f"{props.major}.{props.minor}",
        uuid=uuid,
        cores=getattr(props, "multi_processor_count", None),
        torch_device=f"cuda:{index}",
    )


def nvml_uuid(raw: object, mig: bool = False) -> str | None:
    """A GPU UUID in NVML's form ("GPU-<hex 8-4-4-4-12>"), from torch's or NVML's spelling.

    torch's `props.uuid` prints as bare hex; NVML (and CUDA_VISIBLE_DEVICES) prefix it with
    "GPU-", or "MIG-" for a MIG slice (``mig``: bare hex that is a slice's). NVML returns bytes or
    str depending on its version.
    """
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("ascii", errors="replace")
    text = str(raw).strip().rstrip("\x00")
    if not text:
        return None
    if not text.upper().startswith(("GPU-", "MIG-")):
        text = ("MIG-" if mig else "GPU-") + text
    return text[:4].upper() + text[4:].lower()


def _is_mig_slice(name: str, digits: str) -> bool:
    """Whether the CUDA device torch names ``name``, with UUID ``digits`` (torch's bare hex), is a MIG slice:
    CUDA names a slice "<GPU> MIG <profile>" ("NVIDIA A100-SXM4-40GB MIG 1g.5gb"), and a process sees a slice
    chosen in CUDA_VISIBLE_DEVICES by its "MIG-<uuid>". Its id must read "MIG-...": "GPU-<a slice's digits>"
    names nothing NVML or CUDA_VISIBLE_DEVICES accept."""
    if re.search(r"\bMIG\b", name):
        return True
    wanted = digits.strip().lower()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return any(entry.strip().lower() == f"mig-{wanted}" for entry in visible.split(","))


def _mps_info() -> DeviceInfo:
    recommended = getattr(torch.mps, "recommended_max_memory", None)
    try:
        total = int(recommended()) if recommended else None
    except Exception:  # older macOS / torch builds without the query
        total = None
    return DeviceInfo(
        id="mps",
        kind="mps",
        index=None,
        name=f"Apple GPU (MPS) on {_cpu_name()}",
        total_memory_bytes=total,
        compute_capability=None,
        uuid=None,
        cores=None,
        torch_device="mps",
    )


def _cuda_available() -> bool:
    return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


# ---------------------------------------------------------------------------------------------
# resolving --device


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn the user's `--device` into a torch.device, or say in one line why it cannot be used."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        if _cuda_available():
            return torch.device("cuda:0")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(f"--device mps: {_why_no_mps()}")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not _cuda_available():
            raise DeviceError(f"--device {text}: {_why_no_cuda()}")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(
                f"--device {text}: this machine has {count} visible CUDA device"
                f"{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})"
            )
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"--device {spec}: unknown device; use {_ACCEPTED_DEVICES}")


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        cause = f"torch {torch.__version__} is built without CUDA"
    else:
        cause = f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, but no GPU or driver was found"
    return f"no CUDA device is available on this machine ({cause})"


def _why_no_mps() -> str:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return f"MPS is not available (torch {torch.__version__} is built without MPS)"
    return "MPS is not available on this machine (needs an Apple-silicon Mac with macOS 12.3 or later)"


# ---------------------------------------------------------------------------------------------
# sync points and memory


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work to finish, so a host clock read measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> int | None:
    """Peak bytes the device had to hold since `reset_peak_memory`; None where the device cannot tell.

    On CUDA the larger of the caching allocator's peaks: allocated (tensors) and reserved (the
    segments holding them). Fragmentation can leave reserved far above allocated, and it is
    reserved memory that runs a device out, so budgets and headroom go by it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(max(torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)))
    if device.type == "mps":
        # MPS keeps no peak counter; the driver's current allocation is the closest upper bound.
        return _mps_memory("driver_allocated_memory")
    return None  # cpu: the profiler estimates instead


def current_memory(device: torch.device | str) -> int | None:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return _mps_memory("current_allocated_memory")
    return None


def _mps_memory(function_name: str) -> int | None:
    function = getattr(torch.mps, function_name, None)
    try:
        return int(function()) if function else None
    except Exception:
        return None


def use_device(device: torch.device | str) -> None:
    """Make ``device`` this process's current CUDA device, so that code naming plain "cuda" (a
    workload's ``torch.zeros(..., device="cuda")``, a library's default) lands on it and not on GPU 0,
    which may be another job's. Nothing to do elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def fits_on_device(tensors, device: torch.device | str, share: float = 0.25) -> bool:
    """Whether a data set may live on the device for a whole run: at most ``share`` of its memory,
    leaving the rest to the model, activations and the allocator. The CPU always holds it."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    total = device_info(device).total_memory_bytes or 0
    size = sum(t.numel() * t.element_size() for t in tensors)
    return size < share * total


def free_memory(device: torch.device | str, collect: bool = True) -> None:
    """Release what the last trial held, so the next one starts from the same free memory; ``collect``:
    also collect reference cycles (a model, an optimizer) first."""
    device = torch.device(device)
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# The messages of allocators that raise no typed error (see is_out_of_memory).
_UNTYPED_OOM_MESSAGES = (
    # CUDA allocations outside the caching allocator (cuBLAS/cuDNN workspaces, NCCL buffers, the
    # CUDA runtime itself) fail as a RuntimeError (or its DistBackendError subclass) with these
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUFFT_ALLOC_FAILED",
    "Cuda failure 'out of memory'",  # NCCL: "ncclUnhandledCudaError: ... Cuda failure 'out of memory'"
    "MPS backend out of memory",  # MPS allocator
    "DefaultCPUAllocator: can't allocate memory",  # CPU allocator, POSIX
    "not enough memory",  # CPU allocator, Windows ("DefaultCPUAllocator: not enough memory")
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` says the device ran out of memory (so a smaller batch might fit)."""
    out_of_memory_error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (out_of_memory_error, MemoryError)):
        return True
    # The MPS and CPU allocators, and CUDA libraries allocating on their own, raise a plain
    # RuntimeError with no typed class, so for them, and only for a RuntimeError, the message is
    # all there is to go on.
    if isinstance(exc, RuntimeError):
        message = str(exc)
        return any(fragment in message for fragment in _UNTYPED_OOM_MESSAGES)
    return False


# ---------------------------------------------------------------------------------------------
# precision


def check_dtype(device: torch.device | str, dtype: str) -> None:
    """Raise UsageError for an unknown name, DeviceError if this device cannot run it."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: unknown precision; use one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if dtype == "fp32":
        return
    if device.type == "cuda":
        if dtype == "bf16" and not _cuda_bf16_supported(device):
            name = device_info(device).name
            raise DeviceError(
                f"--dtype bf16: {name} has no native bfloat16 (needs compute capability 8.0+); use fp16 or fp32"
            )
        return
    if device.type == "mps" and dtype == "fp16":
        return
    if not _autocast_works(device.type, dtype):
        raise DeviceError(
            f"--dtype {dtype}: autocast to {dtype} does not work on {device.type} "
            f"with torch {torch.__version__}; use fp32"
        )


def _cuda_bf16_supported(device: torch.device) -> bool:
    # torch.cuda.is_bf16_supported() asks about the *current* device, and by default counts
    # pre-Ampere emulation as support; emulated bf16 is slow enough to make every timing
    # misleading. So ask the same question natively, of this device: compute capability 8.0+
    # (ROCm builds support bf16 on every architecture they run on).
    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).major >= 8


@functools.lru_cache(maxsize=None)
def _autocast_works(device_type: str, dtype: str) -> bool:
    """Run one tiny matmul under autocast: the only reliable test on CPU and MPS."""
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device_type):
        return False
    try:
        x = torch.ones(2, 4, device=device_type)
        w = torch.ones(3, 4, device=device_type)
        with torch.autocast(device_type, dtype=DTYPES[dtype]):
            y = torch.nn.functional.linear(x, w)
        return y.dtype == DTYPES[dtype] and bool(torch.isfinite(y.float()).all())
    except Exception:
        return False


def autocast(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager:
    """The context that runs the forward pass at `dtype` (nothing for fp32)."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: unknown precision; use one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if torch_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch_dtype)


def math_settings() -> dict:
    """The float32 math and cuDNN settings matmuls and convolutions run with in this process, as a profile and a
    run record them: TF32 in cuBLAS matmuls and in cuDNN convolutions, cuDNN's autotuning (``benchmark``), and
    torch's float32 matmul precision ("highest": no TF32; "high": TF32 allowed; "medium": bf16 allowed). On an
    Ampere or newer GPU, TF32 makes float32 matmuls several times faster: a profile measured without it predicts a
    run trained with it poorly, and the other way round."""
    return {
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": str(torch.get_float32_matmul_precision()),
    }


def use_math(workload, tf32: bool | None = None) -> dict:
    """Set TF32 and cuDNN's autotuning as asked, for a profile, a run or an estimate alike, and return the settings
    now in force (:func:`math_settings`). TF32: ``tf32`` (``--tf32``/``--no-tf32``) when given, else the
    workload's ``tf32`` field; True allows it in matmuls and convolutions (matmul precision "high"), False forbids
    it in both ("highest"); None leaves torch's defaults, or what the workload's own code set. cuDNN's autotuning:
    the workload's ``cudnn_benchmark`` field, or as it is."""
    tf32 = getattr(workload, "tf32", None) if tf32 is None else tf32
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    benchmark = getattr(workload, "cudnn_benchmark", None)
    if benchmark is not None:
        torch.backends.cudnn.benchmark = bool(benchmark)
    return math_settings()


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``. Compiling is lazy: the first forward and backward compile (and each
    new batch shape recompiles), so callers run one untimed step before any clock starts."""
    return torch.compile(model)


def needs_grad_scaler(device: torch.device | str, dtype: str) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.device(device).type == "cuda" and dtype == "fp16"


def versions() -> dict:
    """What a measurement or run was made with: largestep, torch, CUDA, Python, host."""
    from ..about import __version__

    return {
        "largestep": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
