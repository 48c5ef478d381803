"""A device, a precision and a process count checked from their names, without importing torch where the
names alone decide.

Submitting a job validates its device, dtype and ``--nproc`` first; for the common case (the CPU, fp32,
one process, or ``auto`` on a machine with no GPU at all) nothing here imports torch, so a command that
only submits a job answers in a fraction of a second. Anything a name cannot decide (a CUDA device,
mixed precision, several ranks) is asked of :mod:`largestep.measure.devices`, which imports torch.
"""

from __future__ import annotations

import glob
import re
import sys
from typing import Any

from ..errors import UsageError

__all__ = [
    "DTYPE_NAMES",
    "MAX_NPROC",
    "check_dtype",
    "check_nproc",
    "device_kind",
    "lock_name",
    "lock_names",
    "resolve_name",
]

DTYPE_NAMES = ("fp32", "bf16", "fp16")  # the mixed-precision names the tool accepts (fp32: no autocast)
MAX_NPROC = 4096  # data-parallel ranks a config may ask for (a sanity bound, far above one machine's devices)
# Device files a GPU that torch could use needs on Linux: NVIDIA's driver, AMD's ROCm, WSL 2's GPU bridge.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_name(spec: Any = "auto") -> str:
    """``--device`` as the name of the device it resolves to ("cpu", "cuda:0", "mps"), or a one-line error."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "cpu" or (text in ("", "auto") and _no_gpu_here()):
        return "cpu"
    from . import devices

    return str(devices.resolve_device(spec))


def check_dtype(device: str, dtype: str) -> None:
    """A UsageError for an unknown precision, a DeviceError for one the device cannot run; fp32 runs anywhere."""
    if dtype == "fp32":
        return
    from . import devices

    devices.check_dtype(device, dtype)


def device_kind(device: Any) -> str:
    """ "cpu", "cuda" or "mps": the kind of device a ``--device`` names."""
    text = str(device or "auto")
    if text == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return text.split(":")[0]


def lock_name(device: str) -> str:
    """The name of a device's job lock: a CUDA GPU by its UUID, since "cuda:1" names a different GPU
    in a process with a different CUDA_VISIBLE_DEVICES; anything else ("cpu", "mps") as given."""
    if _CUDA.fullmatch(str(device).strip().lower()) is None or not _cuda_available():
        return str(device)
    import torch

    from . import devices

    return devices.device_info(torch.device(str(device).strip().lower())).id


def lock_names(device: str, nproc: int) -> list[str]:
    """The device locks an N-rank job holds: every GPU it uses (named by UUID), or the CPU."""
    if device_kind(device) == "cuda" and nproc > 1:
        return [lock_name(f"cuda:{i}") for i in range(nproc)]
    return [lock_name(str(device))]


def check_nproc(nproc: Any, device: str) -> int:
    """A valid process count for ``device`` (auto, cpu, cuda), or a one-line UsageError."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"--nproc must be a positive integer, not {nproc!r}")
    if nproc == 1:
        return nproc
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("--nproc needs torch.distributed, which this build of torch lacks")
    kind = device_kind(device)
    if kind == "cuda":
        if ":" in str(device):
            raise UsageError(f"--nproc {nproc} uses cuda:0 to cuda:{nproc - 1}; give --device cuda, not {device}")
        count = torch.cuda.device_count()
        if nproc > count:
            raise UsageError(f"--nproc {nproc} needs {nproc} CUDA devices; this machine has {count}")
    elif kind != "cpu":
        raise UsageError(f"--nproc runs on cpu (gloo) or cuda (NCCL), not {device}")
    return nproc


def _no_gpu_here() -> bool:
    """Whether this process can tell, without torch, that torch would find no GPU: Linux without a GPU's
    device file. Elsewhere (macOS has MPS), or once torch is imported anyway (and may be asked cheaply, or
    told otherwise by a test's fake device), torch decides."""
    return (
        "torch" not in sys.modules
        and sys.platform.startswith("linux")
        and not any(glob.glob(pattern) for pattern in _GPU_DEVICE_FILES)
    )


def _cuda_available() -> bool:
    if _no_gpu_here():
        return False
    import torch

    return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
