"""Find a workload by its spec, call it with options, and check what it returns.

A spec is one of:

- a built-in name: ``fraud-gru``, ``fraud-mlp``, ``table``;
- ``package.module:function``;
- ``path/to/file.py:function`` (split at the last colon, so Windows drive letters work);
- the name of an entry point in group ``largestep.workloads``;
- ``cached:<key>``: a :class:`Workload` built in Python and stored in the home's workload cache for the jobs it
  starts (see :meth:`largestep.workloads.cache.WorkloadCache.put`).

Every failure is a one-line :class:`WorkloadError` that says what to fix: the CLI prints it and
the dashboard shows it, and neither should ever show a traceback from user code.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import itertools
import os
import re
import signal
import sys
import threading
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..about import module
from ..errors import WorkloadError
from .cache import WorkloadCache, WorkloadFacts, cache_key, key_files, request_key, stored_key

if typing.TYPE_CHECKING:
    from .base import Workload

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "cached_facts", "load_workload", "list_workloads"]

ENTRY_POINT_GROUP = "largestep.workloads"

# name -> the module and function that build it: imported when a built-in is loaded, not before (they import torch)
BUILTINS: dict[str, str] = {
    "fraud-gru": module("workloads.fraud") + ":fraud_gru",
    "fraud-mlp": module("workloads.fraud") + ":fraud_mlp",
    "table": module("workloads.table") + ":table",
}

_SPEC_FORMS = (
    f"a built-in ({', '.join(BUILTINS)}), package.module:function, path/to/file.py:function, "
    f"or an entry point in group {ENTRY_POINT_GROUP}"
)
_MAX_MESSAGE = 300  # characters of a user exception's message kept in ours
_file_modules = itertools.count()  # a fresh module name per file load: a re-load sees edits


# -- public API ------------------------------------------------------------------------------


def load_workload(
    spec: str, options: Mapping[str, object] | None = None, cache: WorkloadCache | None = None, check: bool = False
) -> Workload:
    """Resolve ``spec``, call its function with ``options`` as keyword arguments, return the Workload.

    String option values (from ``--set name=value``) become int, float or bool when the
    parameter's default (or annotation) has that type. A KeyboardInterrupt the workload's own code
    raises is its error like any other; one from Ctrl-C still interrupts. With ``cache`` (see
    :mod:`largestep.workloads.cache`), a workload built before with the same spec, options and source
    is read back instead of built. ``check``: give it a trial step (:meth:`Workload.check_runs`),
    unless the cache holds it as having passed one.
    """
    with _ctrl_c_noticed() as pressed:
        try:
            return _load_workload(spec, options, cache, check)
        except KeyboardInterrupt:
            if pressed:
                raise
            raise WorkloadError(
                f"workload {spec!r} raised KeyboardInterrupt; fix the workload function or its options"
            ) from None


def cached_facts(spec: str, options: Mapping[str, object] | None, cache: WorkloadCache | None) -> WorkloadFacts | None:
    """What checking a request needs of its workload (name, sizes, baseline), when ``load_workload(spec, options,
    cache, check=True)`` loaded it before from this folder and nothing its cache entry depends on changed since:
    read without importing torch or the workload's code. None when only loading it can tell (never loaded or
    tried, a Dataset workload, which is not cached, an entry point, or a name that is none of these)."""
    if cache is None or not isinstance(spec, str) or not spec.strip():
        return None
    spec = spec.strip()
    if spec not in BUILTINS and ":" not in spec:
        if any(entry.name == spec for entry in _entry_points()):
            return None
        configured = _configured(spec)
        if configured is None:
            return None
        return cached_facts(configured["spec"], {**configured["options"], **dict(options or {})}, cache)
    return cache.recall(request_key(spec, dict(options or {})))


@contextlib.contextmanager
def _ctrl_c_noticed() -> Iterator[list[int]]:
    """A list that gets an item when SIGINT arrives; the handler before it then runs as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield [signal.SIGINT]  # signals reach the main thread only: take any interrupt as real
        return
    pressed: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        pressed.append(signum)
        if callable(previous):
            previous(signum, frame)  # Python's own handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _load_workload(
    spec: str, options: Mapping[str, object] | None, cache: WorkloadCache | None, check: bool
) -> Workload:
    if not isinstance(spec, str) or not spec.strip():
        raise WorkloadError(f"no workload given; name {_SPEC_FORMS}")
    spec = spec.strip()
    if stored_key(spec) is not None:
        return _load_stored(spec, options, cache, check)
    try:
        function, folder = _resolve(spec)
    except WorkloadError:
        configured = _configured(spec)
        if configured is None:
            raise
        # a name the project's largestep.toml gives a spec: its options, overridden by the caller's
        return _load_workload(configured["spec"], {**configured["options"], **dict(options or {})}, cache, check)
    kwargs = _bind_options(function, spec, dict(options or {}))
    # a file's folder stays importable while its function runs: it may import siblings lazily
    with _on_sys_path(folder):
        from .base import Workload

        trial = Workload.check_runs if check else None
        if cache is None:
            workload = _build(function, spec, kwargs)
            if trial is not None:
                trial(workload)
            return workload
        module = sys.modules.get(getattr(function, "__module__", None) or "")
        source = _source_file(function)
        key = cache_key(spec, source, kwargs)
        workload = cache.load(
            key, lambda: _build(function, spec, kwargs), defined_in=module if folder is not None else None, check=trial
        )
        if check and not workload.uses_dataset:  # tried: the next check of this request needs only its facts
            cache.remember(request_key(spec, dict(options or {})), key, workload, key_files(source, kwargs))
        return workload


def _load_stored(spec: str, options: Mapping[str, object] | None, cache: WorkloadCache | None, check: bool) -> Workload:
    """A workload built in Python, from the home's workload cache (a ``cached:<key>`` spec)."""
    if options:
        raise WorkloadError(
            f"workload {spec!r} was built in Python and takes no options; build it with the values "
            f"you want and pass it again"
        )
    if cache is None:
        raise WorkloadError(
            f"workload {spec!r} was built in Python and lives in a home's workload cache, which this "
            f"process has none of (a Ray task on another machine); give a spec such as "
            f"path/to/file.py:make"
        )
    from .base import Workload

    key = stored_key(spec)
    workload = cache.stored(key, Workload.check_runs if check else None)
    if check:  # tried: the next check of this request needs only its facts
        cache.remember(request_key(spec, {}), key, workload, [])
    return workload


def _source_file(function: Callable[..., Any]) -> str | None:
    """The file that defines ``function`` (a built-in's generator, the user's file or module)."""
    try:
        return inspect.getsourcefile(inspect.unwrap(function))
    except TypeError:  # a builtin or C function: only its spec and options key it
        return None


def _configured(name: str) -> dict | None:
    """The entry of the working folder's config file (largestep.toml, [tool.largestep]) named ``name``."""
    if ":" in name:
        return None
    from .config import configured_workloads

    try:
        rows = configured_workloads()
    except WorkloadError:
        return None  # a broken config file: the caller's error about the name stands
    return next((row for row in rows if row["name"] == name), None)


def list_workloads() -> list[dict[str, str]]:
    """Built-ins and installed entry points: ``name``, ``source`` ("builtin" | "entry point"), ``description``."""
    rows = [
        {"name": name, "source": "builtin", "description": _first_line(_builtin(name).__doc__)} for name in BUILTINS
    ]
    seen = set(BUILTINS)  # a built-in wins over an entry point of the same name, as in load_workload
    for entry in _entry_points():
        if entry.name in seen:
            continue
        seen.add(entry.name)
        dist = getattr(entry, "dist", None)
        provider = f" (package {dist.name})" if dist is not None and getattr(dist, "name", None) else ""
        rows.append({"name": entry.name, "source": "entry point", "description": f"{entry.value}{provider}"})
    return rows


# -- resolving a spec to a function ----------------------------------------------------------


def _resolve(spec: str) -> tuple[Callable[..., Any], str | None]:
    """The workload function, and the folder to keep on sys.path while it runs (files only)."""
    if spec in BUILTINS:
        return _builtin(spec), None
    if spec.endswith(".py"):
        raise WorkloadError(f"name the function in {spec!r}: write {spec}:function (e.g. {spec}:make)")
    if ":" in spec:
        location, _, attribute = spec.rpartition(":")
        if not location or not attribute:
            raise WorkloadError(
                f"bad workload spec {spec!r}; write package.module:function or path/to/file.py:function"
            )
        if _is_file_location(location):
            module, folder = _import_file(location)
            return _get_function(module, attribute, where=location), folder
        return _get_function(_import_module(location), attribute, where=f"module {location!r}"), None
    entry = next((e for e in _entry_points() if e.name == spec), None)
    if entry is not None:
        return _load_entry_point(entry), None
    raise WorkloadError(_unknown_name_message(spec))


def _builtin(name: str) -> Callable[..., Any]:
    module, _, function = BUILTINS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _is_file_location(location: str) -> bool:
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return location.endswith(".py") or any(sep in location for sep in separators)


def _import_file(location: str) -> tuple[types.ModuleType, str]:
    path = Path(location).expanduser()
    if not path.is_file():
        problem = "is a folder, not a .py file" if path.is_dir() else "does not exist"
        relative = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise WorkloadError(f"workload file {location!r} {problem}{relative}; check the path")
    path = path.resolve()
    name = f"_largestep_workload_{next(_file_modules)}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise WorkloadError(f"cannot import {location!r} as Python; give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    # registered before running, as a normal import would be: dataclasses and pickling look it up
    sys.modules[name] = module
    try:
        with _on_sys_path(str(path.parent)):
            module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise WorkloadError(f"importing {location} failed with {_describe(exc)}; fix the file") from None
    return module, str(path.parent)


def _import_module(name: str) -> types.ModuleType:
    # the current folder goes last on sys.path, as `python -m` would put it first: `largestep` run in
    # a project finds the project's modules, but they cannot shadow installed packages
    importlib.invalidate_caches()  # a module written since the last import (a dashboard session) is found
    try:
        with _on_sys_path(os.getcwd(), front=False):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise WorkloadError(
                f"no module named {name!r}; check the spelling, install it, or run from "
                f"the folder that contains it (or add that folder to PYTHONPATH)"
            ) from None
        raise WorkloadError(
            f"importing module {name!r} failed with {_describe(exc)}; install the missing package"
        ) from None
    except (Exception, SystemExit) as exc:
        raise WorkloadError(f"importing module {name!r} failed with {_describe(exc)}; fix the module") from None


def _get_function(module: types.ModuleType, attribute: str, where: str) -> Callable[..., Any]:
    target: Any = module
    for part in attribute.split("."):  # "module:Class.method" works, as in entry points
        if not hasattr(target, part):
            raise WorkloadError(f"{where} has no function {attribute!r}; {_functions_hint(module)}")
        target = getattr(target, part)
    if not callable(target):
        raise WorkloadError(
            f"{attribute!r} in {where} is a {type(target).__name__}, not a function; "
            f"name a function that returns a Workload"
        )
    return target


def _functions_hint(module: types.ModuleType) -> str:
    names = sorted(
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")
    )
    return f"its functions are: {', '.join(names[:12])}" if names else "it defines no functions"


def _entry_points() -> list[metadata.EntryPoint]:
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # broken metadata of some unrelated package must not hide the built-ins
        return []


def _load_entry_point(entry: metadata.EntryPoint) -> Callable[..., Any]:
    try:
        target = entry.load()
    except (Exception, SystemExit) as exc:
        raise WorkloadError(
            f"entry point {entry.name!r} ({entry.value}) failed to load with {_describe(exc)}; "
            f"reinstall or fix the package that provides it"
        ) from None
    if not callable(target):
        raise WorkloadError(
            f"entry point {entry.name!r} ({entry.value}) is a {type(target).__name__}, "
            f"not a function; point it at a function that returns a Workload"
        )
    return target


def _unknown_name_message(spec: str) -> str:
    known = list(BUILTINS) + [e.name for e in _entry_points()]
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown workload {spec!r}; {hint}use {_SPEC_FORMS}"


# -- calling the function --------------------------------------------------------------------


def _build(function: Callable[..., Any], spec: str, kwargs: dict[str, object]) -> Workload:
    """Call the workload function with options already bound (see _bind_options)."""
    try:
        result = function(**kwargs)
    except WorkloadError:
        raise  # already says what to fix, e.g. Workload.validate on mismatched tensors
    except (Exception, SystemExit) as exc:
        raise WorkloadError(
            f"workload {spec!r} raised {_describe(exc)}; fix the workload function or its options"
        ) from None
    from .base import Workload

    if not isinstance(result, Workload):
        raise WorkloadError(
            f"workload {spec!r} returned {_describe_value(result)}, not a Workload; "
            f"make the function return largestep.Workload(...)"
        )
    return result


def _bind_options(function: Callable[..., Any], spec: str, options: dict[str, object]) -> dict[str, object]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # some C functions have no signature: pass options as given
        return options
    named = {
        name: p
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in options if name not in named]
    if unknown and not takes_any:
        accepted = ", ".join(named) if named else "none"
        raise WorkloadError(
            f"workload {spec!r} has no option {', '.join(map(repr, unknown))}; its options are: {accepted}"
        )
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and name not in options
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if missing:
        raise WorkloadError(
            f"workload {spec!r} needs {', '.join(missing)}; pass them as options "
            f"(e.g. --set {missing[0]}=...) or give them defaults"
        )
    hints = _type_hints(function)
    return {
        name: _convert(name, value, _option_type(named.get(name), hints.get(name)), spec)
        for name, value in options.items()
    }


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable annotations only cost us the annotation-based conversion
        return {}


def _option_type(parameter: inspect.Parameter | None, hint: Any) -> type | None:
    """bool, int or float when the parameter's default (else its annotation) says so; else None."""
    default = None if parameter is None else parameter.default
    if default is not None and default is not inspect.Parameter.empty:  # identity: a default may be an array
        kind = type(default)
        return kind if kind in (bool, int, float) else None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `int | None`, Optional[int]
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = options[0] if len(options) == 1 else None
    return hint if hint in (bool, int, float) else None


_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def _convert(name: str, value: object, kind: type | None, spec: str) -> object:
    if not isinstance(value, str) or kind is None:
        return value
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind is int:
            try:
                return int(text)
            except ValueError:
                number = float(text)  # "2e4" is an integer written as a float
                if not number.is_integer():
                    raise
                return int(number)
        return float(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise WorkloadError(f"option {name}={value!r} of workload {spec!r} must be {expected}") from None


# -- small helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def _on_sys_path(folder: str | None, front: bool = True) -> Iterator[None]:
    """``folder`` on sys.path for the duration, unless it is already there."""
    if folder is None or folder in sys.path:
        yield
        return
    if front:
        sys.path.insert(0, folder)
    else:
        sys.path.append(folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """``TypeError: message`` on one line, as a user would search for it."""
    message = _one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _describe_value(value: object) -> str:
    if value is None:
        return "None"
    return f"{type(value).__name__} ({_one_line(repr(value), 60)})"


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
