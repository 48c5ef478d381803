"""What the framework adapters share: importing an optional library, and naming metrics as largestep does."""

from __future__ import annotations

import importlib
import math
import re
from types import ModuleType
from typing import Any, Mapping

__all__ = ["require", "largestep_names", "json_safe"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the extra to install, in one line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}, which is not installed: pip install 'largestep[{extra}]'"
        ) from None


def largestep_names(
    metrics: Mapping[str, Any], renames: Mapping[str, str | None], prefixes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A framework's metrics under largestep's names: ``renames`` first (None drops a metric), then
    ``prefixes`` (``eval_accuracy`` to ``val_accuracy``), then separators such as ``val/acc`` or
    ``val-acc`` become ``val_acc``."""
    named = {}
    for key, value in metrics.items():
        if key in renames:
            if renames[key] is None:
                continue
            key = renames[key]
        else:
            for old, new in (prefixes or {}).items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
        named[re.sub(r"[^0-9A-Za-z_]+", "_", key).strip("_") or "metric"] = value
    return named


def json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JSON can keep them: numbers, strings, booleans and None as they are,
    lists and dicts inside out, anything else by its text."""

    def safe(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, Mapping):
            return {str(k): safe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [safe(v) for v in value]
        return str(value)

    return {str(k): safe(v) for k, v in params.items()}
