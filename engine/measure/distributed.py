"""Inside a data-parallel rank: who am I, and the few collectives the profiler and training share.

Outside a process group every function is the single-process identity (rank 0 of 1), so the
same measuring code runs in one process or in N ranks (launched by :mod:`largestep.jobs.torchrun`).
The global batch is micro-batch x accumulation x world size everywhere: configs, logs,
profile points and recommendations speak of the global batch; a rank sees its shard only.
"""

from __future__ import annotations

import math
from typing import Any

import psutil
import torch
import torch.distributed as dist

from .devices_config import MAX_NPROC  # one bound, checked before torch is imported

__all__ = [
    "MAX_NPROC",
    "RankOutOfMemory",
    "loopback_interface",
    "loopback_sockets",
    "is_distributed",
    "rank",
    "world_size",
    "mean_across_ranks",
    "sum_across_ranks",
    "total_across_ranks",
    "broadcast_float",
    "agree",
    "barrier",
]


class RankOutOfMemory(Exception):
    """This rank ran out of memory at ``batch_size`` (a global batch). The other ranks may already wait in a
    collective this one will never join (the gradient all-reduce), so no agreement is possible: the rank
    leaves, its launcher stops the others, and the job records the out-of-memory ceiling."""

    def __init__(self, batch_size: int, message: str):
        super().__init__(message)
        self.batch_size = batch_size


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface ("lo" on Linux, "lo0" on macOS), if it has one."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def loopback_sockets(env: dict) -> dict:
    """``env`` with gloo's and NCCL's sockets bound to the loopback interface, so ranks on one machine open
    nothing another machine can reach; an interface the user chose (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME) stays."""
    loopback = loopback_interface()
    if loopback:
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            env.setdefault(name, loopback)
    return env


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (unchanged in a single process)."""
    if not is_distributed():
        return value
    local = value.detach().to(_collective_device(), torch.float64).clone()
    dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return local.to(value.device)


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    return sum_across_ranks(value) / world_size()


def total_across_ranks(value: float | None) -> float | None:
    """The sum over ranks of a per-rank figure (each GPU's power); None if any rank has none."""
    if not is_distributed():
        return value
    local = torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64)
    total = float(sum_across_ranks(local).item())
    return None if math.isnan(total) else total


def broadcast_float(value: float | None) -> float:
    """Rank 0's number on every rank (NaN stands for None)."""
    if not is_distributed():
        return float("nan") if value is None else float(value)
    t = torch.tensor(
        [float("nan") if value is None else float(value)], dtype=torch.float64, device=_collective_device()
    )
    dist.broadcast(t, src=0)
    return float(t.item())


def agree(value: Any) -> Any:
    """Rank 0's decision on every rank, so every rank takes the same branch (and the same collectives)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
