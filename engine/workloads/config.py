"""Workloads listed in the project's config file, so the dashboard can offer them by name.

The dashboard never takes a code path typed into the browser; a project names its own workloads
in ``largestep.toml`` in the folder the dashboard (or CLI) runs from::

    workloads = [
        "models/fraud.py:make",                                   # a file, relative to this folder
        "mypkg.workloads:make_big",                               # a module on the path
        { name = "wide", spec = "models/fraud.py:make", options = { hidden = 512 } },
    ]

or the same list under ``[tool.largestep]`` in ``pyproject.toml``. The ``[[workloads]]`` table
form works too. ``largestep.toml`` wins when both exist. Nothing is imported here: listing is
cheap, and a broken workload fails when it is loaded, with the loader's message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import WorkloadError

__all__ = ["CONFIG_FILE", "PYPROJECT", "read_config", "configured_workloads"]

CONFIG_FILE = "largestep.toml"
PYPROJECT = "pyproject.toml"
_TABLE_KEYS = {"name", "spec", "options", "description"}


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def read_config(folder: str | os.PathLike | None = None) -> tuple[Path, list[Any]] | None:
    """The config file in ``folder`` (default: the current one) and its ``workloads`` value.

    None when neither ``largestep.toml`` nor a ``pyproject.toml`` with ``[tool.largestep]`` is there.
    """
    folder = Path(folder) if folder is not None else Path.cwd()
    tomllib = _tomllib()
    own = folder / CONFIG_FILE
    if own.is_file():
        document = _read(own, tomllib)
        return own, document.get("workloads", [])
    pyproject = folder / PYPROJECT
    if pyproject.is_file():
        document = _read(pyproject, tomllib)
        section = (document.get("tool") or {}).get("largestep")
        if isinstance(section, dict):
            return pyproject, section.get("workloads", [])
    return None


def _read(path: Path, tomllib) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkloadError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadError(f"{path} is not valid TOML ({exc}); fix the file") from None


def configured_workloads(folder: str | os.PathLike | None = None) -> list[dict]:
    """The workloads the project's config file lists: ``name``, ``spec``, ``options``, ``source``
    ("config"), ``description``; in the file's order. Empty when there is no config file.

    A file path in a spec is made absolute against the config file's folder, so a job started from
    elsewhere still finds it. A malformed entry is a :class:`WorkloadError` that says what to fix.
    """
    found = read_config(folder)
    if found is None:
        return []
    path, entries = found
    where = f"`workloads` in {path}" if path.name == CONFIG_FILE else f"`tool.largestep.workloads` in {path}"
    if not isinstance(entries, list):
        raise WorkloadError(f'{where} must be a list of specs such as "models/net.py:make"')
    rows, seen = [], set()
    for index, entry in enumerate(entries):
        row = _entry(entry, index, where, path.parent)
        if row["name"] in seen:
            raise WorkloadError(f"{where} lists the name {row['name']!r} twice; give one of them another name")
        seen.add(row["name"])
        rows.append(row)
    return rows


def _entry(entry: Any, index: int, where: str, base: Path) -> dict:
    label = f"entry {index + 1} of {where}"
    if isinstance(entry, str):
        spec, name, options, description = entry, None, {}, None
    elif isinstance(entry, dict):
        unknown = sorted(set(entry) - _TABLE_KEYS)
        if unknown:
            raise WorkloadError(
                f"{label} has unknown key {', '.join(map(repr, unknown))}; use {', '.join(sorted(_TABLE_KEYS))}"
            )
        spec, name = entry.get("spec"), entry.get("name")
        options, description = entry.get("options", {}), entry.get("description")
        if not isinstance(options, dict):
            raise WorkloadError(f"{label}: options must be a table, e.g. options = {{ hidden = 512 }}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise WorkloadError(f"{label}: name must be a non-empty string")
        if description is not None and not isinstance(description, str):
            raise WorkloadError(f"{label}: description must be a string")
    else:
        raise WorkloadError(
            f"{label} is a {type(entry).__name__}; write a spec string such as "
            f'"models/net.py:make" or a table {{ name = ..., spec = ... }}'
        )
    if not isinstance(spec, str) or ":" not in spec.strip(":") or not spec.strip():
        raise WorkloadError(f"{label}: spec {spec!r} must be package.module:function or path/to/file.py:function")
    spec = spec.strip()
    resolved = _absolute(spec, base)
    return {
        "name": (name or _default_name(spec)).strip(),
        "spec": resolved,
        "options": dict(options),
        "source": "config",
        "description": description or spec,
    }


def _absolute(spec: str, base: Path) -> str:
    """``path/to/file.py:make`` -> ``/project/path/to/file.py:make``; module specs unchanged."""
    location, _, function = spec.rpartition(":")
    is_file = location.endswith(".py") or "/" in location or os.sep in location
    if not is_file:
        return spec
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = base / path
    return f"{path}:{function}"


def _default_name(spec: str) -> str:
    """``models/fraud.py:make`` -> ``fraud``; ``models/fraud.py:make_big`` -> ``fraud:make_big``;
    ``pkg.mod:make`` -> ``pkg.mod``."""
    location, _, function = spec.rpartition(":")
    stem = Path(location).stem if location.endswith(".py") else location
    stem = re.sub(r"\s+", "-", stem)
    return stem if function == "make" else f"{stem}:{function}"
