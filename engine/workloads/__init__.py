"""Workloads: the contract (:class:`Workload`), the loader, and the built-ins."""

from engine.workloads.base import Workload
from engine.workloads.loader import BUILTINS, list_workloads, load_workload

__all__ = ["Workload", "load_workload", "BUILTINS", "list_workloads"]
