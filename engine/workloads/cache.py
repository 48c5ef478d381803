"""A built workload on disk in the home, so that every later job skips building it.

Building a workload (generating synthetic transactions, reading and encoding a table) can take
seconds, and the profile, the noise estimate and every run of an autopilot or a sweep load the
same one. The first load stores the built :class:`Workload` in ``<home>/cache/workloads/<key>/``;
later loads read it back.

The key covers what decides the data: the spec, the options (as the function receives them), the
contents of the file that defines the workload function (a built-in's generator code, the user's
file or module) and of every file an option names (a table's CSV or Parquet file), and the torch
version. It does not see a file the workload reads without an option naming it, nor a module the
workload's file imports: after changing one of those, ``largestep cache clear``.

Only tensor data is cached: a workload whose ``train``/``val`` are Datasets is rebuilt by every
job, since a Dataset's Python objects (open files, tokenizers, readers) are not plain data. The
functions and classes a workload file defines are stored by value (cloudpickle), so a lambda model
factory is kept too; installed code (torch, the built-ins) is stored by reference. A workload that
cannot be stored that way is simply built every time.

A workload built in Python (``largestep.profile(Workload(...))``) reaches the jobs it starts the same way: it is
stored by value under a key its contents decide (:meth:`WorkloadCache.put`), and the jobs are given the spec
``cached:<key>``, which the loader resolves to that entry (:meth:`WorkloadCache.stored`). Its entry also records the
folders the building process imported from, so that a job can import what the workload names by reference (a model
class from the notebook's own module). ``largestep cache clear`` removes such entries too: the spec then names
nothing, and the workload must be built and passed again.

Beside an entry, a request that loaded it and passed its trial (``check=True``, as every command
that submits a job loads it) leaves a record: the request as given (spec, options before binding,
working folder, torch version), the workload's facts (name, sizes, baseline) and the digests of the
files the entry's key covers. The next command making the same request checks it against those facts
(:meth:`WorkloadCache.recall`) without importing torch or the workload's code, as long as none of
those files changed.

An entry is written under a temporary name and renamed into place, under one lock per key, so
concurrent jobs build it once and no job reads half of one. An entry whose checksum or contents do
not load is removed and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import os
import secrets
import re
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from filelock import FileLock, Timeout

from ..errors import WorkloadError
from ..format import format_bytes, plural
from ..home import Home

if TYPE_CHECKING:
    from .base import Workload

__all__ = [
    "WorkloadCache",
    "WorkloadFacts",
    "CacheUsage",
    "cache_of",
    "cache_key",
    "key_files",
    "request_key",
    "torch_version",
    "FORMAT",
    "STORED_PREFIX",
    "stored_key",
]

FORMAT = 1  # bumped when the layout of an entry changes: older entries are never read
PAYLOAD = "workload.pt"  # the pickled Workload, tensors in torch's zip format
MANIFEST = "entry.json"  # what the entry holds and the payload's checksum; written last
_REQUEST_PREFIX = "request-"  # beside an entry: a request that loads it, with its facts (see WorkloadCache.remember)
_TEMP_PREFIX = ".tmp-"  # an entry being written (or left by a job that was killed while writing)
_LOCK_SUFFIX = ".lock"
STORED_PREFIX = "cached:"  # the spec of a workload stored from Python: "cached:<key>"
_STORED_SPEC = re.compile(rf"^{STORED_PREFIX}([0-9a-f]{{32}})$")


def stored_key(spec: object) -> str | None:
    """The entry a ``cached:<key>`` spec names (a workload stored from Python); None for any other spec."""
    match = _STORED_SPEC.match(spec.strip()) if isinstance(spec, str) else None
    return match.group(1) if match else None


def cache_of(home: Home | None) -> "WorkloadCache | None":
    """The workload cache of a home; None without one (a body running as a Ray task on another machine)."""
    return WorkloadCache(home.root / "cache" / "workloads") if home is not None else None


def cache_key(spec: str, source_file: str | None, kwargs: Mapping[str, object]) -> str:
    """The entry name for ``spec`` called with ``kwargs``, whose function is defined in ``source_file``."""
    digest = hashlib.sha256()
    described = {"format": FORMAT, "spec": spec, "options": dict(kwargs), "torch": torch_version()}
    digest.update(json.dumps(described, sort_keys=True, default=repr).encode())
    for path in key_files(source_file, kwargs):
        digest.update(_file_digest(Path(path)))
    return digest.hexdigest()[:32]


def key_files(source_file: str | None, kwargs: Mapping[str, object]) -> list[str]:
    """The files whose contents an entry's key covers: the function's file, and every file an option names."""
    named = [str(value) for value in kwargs.values() if isinstance(value, (str, os.PathLike))]
    return ([source_file] if source_file else []) + named


def request_key(spec: str, options: Mapping[str, object]) -> str:
    """A request as given (the spec and its options before they are bound to the function, from this working
    folder, with this torch): what :meth:`WorkloadCache.recall` looks a workload's facts up by."""
    described = {"format": FORMAT, "spec": spec, "options": dict(options), "torch": torch_version(), "cwd": os.getcwd()}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def torch_version() -> str:
    """The installed torch's version, from its package metadata: no import of torch needed."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch built from source without metadata
        import torch

        return torch.__version__


def _file_digest(path: Path) -> bytes:
    """The contents' digest of a file, or nothing for a value that names no file (most string options)."""
    try:
        if not path.is_file():
            return b""
        with open(path, "rb") as fh:
            return (
                hashlib.file_digest(fh, "sha256").digest()
                if hasattr(hashlib, "file_digest")
                else hashlib.sha256(fh.read()).digest()
            )
    except (OSError, ValueError):  # unreadable, or a string too long to be a path: the build will say
        return b""


@dataclass(frozen=True)
class WorkloadFacts:
    """What checking a request needs of its workload, beside the cache entry it loads: a later command checks
    the same request against these without importing torch or the workload's code (see ``recall``)."""

    name: str
    n_train: int
    n_val: int
    baseline_batch_size: int
    baseline_lr: float

    @classmethod
    def of(cls, workload: "Workload") -> "WorkloadFacts":
        return cls(
            name=workload.name,
            n_train=workload.n_train,
            n_val=workload.n_val,
            baseline_batch_size=workload.baseline_batch_size,
            baseline_lr=float(workload.baseline_lr),
        )


@dataclass(frozen=True)
class CacheUsage:
    entries: int  # complete entries
    bytes: int  # on disk, counting unfinished temporary entries

    @property
    def summary(self) -> str:
        """``2 workloads, 75.3 MiB``, as `cache`, `hardware` and `doctor` show it."""
        return f"{plural(self.entries, 'workload')}, {format_bytes(self.bytes)}"


@dataclass(frozen=True)
class WorkloadCache:
    root: Path

    # -- loading -------------------------------------------------------------------------------

    def load(
        self,
        key: str,
        build: Callable[[], Workload],
        defined_in: ModuleType | None = None,
        check: Callable[[Workload], None] | None = None,
    ) -> Workload:
        """The cached workload under ``key``, else ``build()``, stored for the next job.

        ``defined_in``: a module that later processes cannot import (a workload file), whose
        functions and classes are therefore stored by value. ``check``: a trial of the workload
        (``Workload.check_runs``) that raises on a broken one; an entry records that it passed, so a
        later load skips it (the key already covers the code and the torch version it ran with).
        """
        cached = self._read(key)
        if cached is not None:
            return self._checked(key, *cached, check)
        created = _missing_folders(self.root)
        lock_path = self.root / f"{key}{_LOCK_SUFFIX}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_path))
            lock.acquire()
        except OSError:  # a read-only home: build, keep nothing
            return _built(build, check)
        try:
            cached = self._read(key, remove_bad=True)  # another job may have built it while this one waited
            if cached is not None:
                return self._checked(key, *cached, check)
            workload = _built(build, check)
        except BaseException:
            # bad input writes nothing: a home this load created is taken away again
            lock.release()
            if created:
                lock_path.unlink(missing_ok=True)
                for folder in created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
        try:
            if not workload.uses_dataset:
                self._write(key, workload, defined_in, checked=check is not None)
            return workload
        finally:
            lock.release()

    def _checked(
        self, key: str, workload: Workload, manifest: dict, check: Callable[[Workload], None] | None
    ) -> Workload:
        """``workload``, given its trial unless its entry passed one; a pass is recorded in the entry."""
        if check is None or manifest.get("checked"):
            return workload
        check(workload)
        temporary = self.root / key / f"{_TEMP_PREFIX}{MANIFEST}-{os.getpid()}"
        with contextlib.suppress(OSError):  # the next load would only try it again
            temporary.write_text(json.dumps({**manifest, "checked": True}), encoding="utf-8")
            os.replace(temporary, self.root / key / MANIFEST)
        return workload

    def _read(self, key: str, remove_bad: bool = False) -> tuple[Workload, dict] | None:
        """The entry's workload and manifest; None when it is missing or does not check out (then
        removed if ``remove_bad``)."""
        entry = self.root / key
        if not entry.is_dir():
            return None
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
            # checked through a read-only mapping, then loaded mapped: the tensors' pages come from the file as
            # they are first touched, where reading it into memory and copying it into tensors cost a job's
            # start three times as long (fraud-gru: 0.11 s against 0.035 s)
            with open(entry / PAYLOAD, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as payload:
                if (
                    manifest.get("format") != FORMAT
                    or manifest.get("bytes") != len(payload)
                    or manifest.get("crc32") != zlib.crc32(payload)
                ):
                    raise ValueError("checksum")
            workload = _unpickle(entry / PAYLOAD)
            from .base import Workload

            if not isinstance(workload, Workload):
                raise TypeError(type(workload).__name__)
            return workload, manifest
        except Exception:  # noqa: BLE001 - whatever is wrong with an entry (truncated, edited), it is rebuilt
            if remove_bad:
                shutil.rmtree(entry, ignore_errors=True)
            return None

    def _write(self, key: str, workload: Workload, defined_in: ModuleType | None, checked: bool) -> None:
        """Store ``workload`` as entry ``key``: written in a temporary folder, then renamed into place.
        A workload that cannot be pickled, or a full disk, leaves no entry and no error."""
        try:
            payload = _pickle(workload, defined_in)
        except Exception:  # noqa: BLE001 - pickling user objects fails in many ways; the cache is only a shortcut
            return
        self._write_payload(key, workload.name, payload, checked)

    def _write_payload(self, key: str, name: str, payload: bytes, checked: bool, **extra: object) -> bool:
        """Entry ``key`` holding ``payload``, written whole or not at all; whether it was written."""
        temporary = self.root / f"{_TEMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            temporary.mkdir()
            (temporary / PAYLOAD).write_bytes(payload)
            manifest = {
                "format": FORMAT,
                "name": name,
                "bytes": len(payload),
                "crc32": zlib.crc32(payload),
                "checked": checked,
                "created": time.time(),
                **extra,
            }
            (temporary / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            os.rename(temporary, self.root / key)
            return True
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            return False

    # -- workloads built in Python ---------------------------------------------------------------

    def put(self, workload: "Workload") -> tuple[str, Callable[[], None]]:
        """Store ``workload``, built in this process, for the jobs it starts. Returns its key (the spec
        ``cached:<key>`` names it) and a function that takes away what this call wrote (the entry, and the folders it
        created), for a request refused after all; it does nothing when the entry was there before. The key is the
        contents' digest: the same workload stored twice is one entry. What cannot be stored is a one-line
        WorkloadError, and writes nothing."""
        where = f"workload {workload.name!r}"
        if workload.uses_dataset:
            raise WorkloadError(
                f"{where} reads Datasets, which cannot be stored for the jobs it starts; put the "
                f"function that builds it in a file and pass 'path/to/file.py:make' instead"
            )
        try:
            payload = _pickle(workload, None)
        except Exception as exc:  # noqa: BLE001 - whatever the user's objects raise, said in one line
            message = " ".join(str(exc).split())[:200]
            raise WorkloadError(
                f"{where} cannot be stored for the jobs it starts ({type(exc).__name__}: {message}); "
                f"put the function that builds it in a file and pass 'path/to/file.py:make' "
                f"instead"
            ) from None
        key = hashlib.sha256(payload).hexdigest()[:32]
        if self._holds(key, payload):
            return key, _nothing
        created = _missing_folders(self.root)
        lock_path = self.root / f"{key}{_LOCK_SUFFIX}"
        reason = "the disk is full or the folder is not writable"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock_path)):
                if self._holds(key, payload):
                    return key, _nothing
                shutil.rmtree(self.root / key, ignore_errors=True)  # an entry that does not check out
                written = self._write_payload(key, workload.name, payload, checked=False, paths=_import_folders())
        except OSError as exc:
            written, reason = False, exc.strerror or str(exc)

        def undo() -> None:
            with self._locked(key) as held:
                if held:
                    shutil.rmtree(self.root / key, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()

        if not written:
            undo()
            raise WorkloadError(
                f"{where} cannot be stored in the workload cache {self.root} ({reason}); free some "
                f"space (`largestep cache clear`) or choose another home"
            )
        return key, undo

    def _holds(self, key: str, payload: bytes) -> bool:
        """Does entry ``key`` hold exactly ``payload``? (Read from its manifest: the payload is not loaded.)"""
        try:
            manifest = json.loads((self.root / key / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            manifest.get("format") == FORMAT
            and manifest.get("bytes") == len(payload)
            and manifest.get("crc32") == zlib.crc32(payload)
            and (self.root / key / PAYLOAD).is_file()
        )

    def stored(self, key: str, check: Callable[[Workload], None] | None = None) -> Workload:
        """The workload stored from Python as ``key`` (see :meth:`put`), given its trial unless it passed one. The
        folders its building process imported from go on ``sys.path`` (last, so they shadow nothing installed)."""
        try:
            manifest = json.loads((self.root / key / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        for folder in manifest.get("paths") or ():
            if isinstance(folder, str) and folder not in sys.path and os.path.isdir(folder):
                sys.path.append(folder)
        cached = self._read(key)
        if cached is None and (self.root / key / PAYLOAD).is_file():
            try:  # there, but it does not load here: say why (a module this process cannot import)
                _unpickle(self.root / key / PAYLOAD)
            except Exception as exc:  # noqa: BLE001 - whatever unpickling the user's objects raises, in one line
                message = " ".join(str(exc).split())[:200]
                raise WorkloadError(
                    f"workload {STORED_PREFIX}{key} cannot be loaded here ({type(exc).__name__}: "
                    f"{message}); define what it needs in an installed module or a file, or give "
                    f"a spec such as path/to/file.py:make"
                ) from None
        if cached is None:
            raise WorkloadError(
                f"workload {STORED_PREFIX}{key} is no longer in the workload cache {self.root} "
                f"(cleared?); build the Workload again in Python and pass it, or give a spec such "
                f"as path/to/file.py:make"
            )
        return self._checked(key, *cached, check)

    # -- requests: a workload's facts without loading it ----------------------------------------

    def remember(self, request: str, key: str, workload: "Workload", files: list[str]) -> None:
        """Note beside entry ``key`` that ``request`` (see :func:`request_key`) loads it and passed its trial, with
        the workload's facts and the digests of the ``files`` its key covers. Nothing when there is no such entry."""
        entry = self.root / key
        record = {
            "facts": asdict(WorkloadFacts.of(workload)),
            "files": {path: _file_digest(Path(path)).hex() for path in files},
        }
        temporary = entry / f"{_TEMP_PREFIX}{_REQUEST_PREFIX}{request}-{os.getpid()}"
        with contextlib.suppress(OSError):  # a read-only home, an entry just cleared: the next check loads it
            temporary.write_text(json.dumps(record), encoding="utf-8")
            os.replace(temporary, entry / f"{_REQUEST_PREFIX}{request}.json")

    def recall(self, request: str) -> WorkloadFacts | None:
        """The facts of the workload ``request`` loads, if an entry holds it as having passed its trial and none
        of the files its key covers changed since; None when only loading it can tell."""
        for path in self.root.glob(f"*/{_REQUEST_PREFIX}{request}.json"):
            entry = path.parent
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
                if (
                    entry.name.startswith(_TEMP_PREFIX)
                    or manifest.get("format") != FORMAT
                    or not manifest.get("checked")
                    or not (entry / PAYLOAD).is_file()
                ):
                    continue
                if any(_file_digest(Path(name)).hex() != digest for name, digest in record["files"].items()):
                    continue
                return WorkloadFacts(**record["facts"])
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue  # a record or manifest half-written or edited: load the workload instead
        return None

    # -- a request refused after loading ---------------------------------------------------------

    @contextlib.contextmanager
    def undone_on(self, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
        """What the block adds to the cache (entries, request records, lock files, and the folders up to a
        home it created) is taken away again if the block raises one of ``errors``: a request refused after
        its workload was loaded (a batch larger than its data) leaves nothing behind, as bad input must."""
        created = _missing_folders(self.root)
        before = set(self._paths())
        try:
            yield
        except errors:
            for path in sorted(set(self._paths()) - before, reverse=True):  # a record before its entry
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for folder in created:
                with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                    folder.rmdir()
            raise

    def _paths(self) -> list[Path]:
        """The cache's entries, temporary entries and lock files, and the request records beside entries."""
        if not self.root.is_dir():
            return []
        return [*self.root.iterdir(), *self.root.glob(f"*/{_REQUEST_PREFIX}*")]

    # -- looking and clearing ------------------------------------------------------------------

    def usage(self) -> CacheUsage:
        """Entries and bytes on disk (nothing when the cache was never written)."""
        entries = sum(1 for path in self._children() if path.is_dir() and not path.name.startswith(_TEMP_PREFIX))
        return CacheUsage(entries=entries, bytes=sum(_size(path) for path in self._children()))

    def clear(self) -> tuple[CacheUsage, int]:
        """Remove every entry no job is writing; returns what was freed and how many were left (busy)."""
        freed_entries = freed_bytes = busy = 0
        for path in self._children():
            if path.name.endswith(_LOCK_SUFFIX):
                continue
            key = path.name[len(_TEMP_PREFIX) :].split("-")[0] if path.name.startswith(_TEMP_PREFIX) else path.name
            with self._locked(key) as held:
                if not held:
                    busy += 1
                    continue
                size = _size(path)
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    freed_bytes += size
                    freed_entries += not path.name.startswith(_TEMP_PREFIX)
        return CacheUsage(entries=freed_entries, bytes=freed_bytes), busy

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[bool]:
        """The key's lock if it is free now (a job building that entry holds it)."""
        lock = FileLock(str(self.root / f"{key}{_LOCK_SUFFIX}"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _children(self) -> list[Path]:
        return sorted(self.root.iterdir()) if self.root.is_dir() else []


def _built(build: Callable[[], Workload], check: Callable[[Workload], None] | None) -> Workload:
    workload = build()
    if check is not None:
        check(workload)
    return workload


def _nothing() -> None:
    """Nothing to take away."""


def _import_folders() -> list[str]:
    """The folders this process imports from, as absolute paths (the working folder for "")."""
    folders = []
    for entry in sys.path:
        folder = os.path.abspath(entry or os.getcwd())
        if folder not in folders and os.path.isdir(folder):
            folders.append(folder)
    return folders


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the payload -------------------------------------------------------------------------------


def _pickle(workload: Workload, defined_in: ModuleType | None) -> bytes:
    import cloudpickle
    import torch

    buffer = io.BytesIO()
    if defined_in is not None:
        cloudpickle.register_pickle_by_value(defined_in)
    try:
        torch.save(workload, buffer, pickle_module=cloudpickle)
    finally:
        if defined_in is not None:
            cloudpickle.unregister_pickle_by_value(defined_in)
    return buffer.getvalue()


def _unpickle(path: Path) -> object:
    import torch

    # weights_only=False: the entry holds the workload's functions too; it was written by this
    # user's own jobs into their own home, which is as trusted as the workload code itself. mmap: the
    # tensors are the file's pages, copied only where written to (the entry itself never changes)
    return torch.load(path, mmap=True, weights_only=False)
