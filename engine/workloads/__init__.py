"""Workloads: the contract (:class:`Workload`), the loader, and the built-ins.

Imported lazily: ``largestep.workloads.cache`` and the loader's checks of a cached request import no torch, and
importing this package must not either.
"""

import importlib

__all__ = ["Workload", "load_workload", "BUILTINS", "list_workloads"]

_WHERE = {"Workload": ".base", "load_workload": ".loader", "BUILTINS": ".loader", "list_workloads": ".loader"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
