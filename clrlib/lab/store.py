"""A content-addressed store of finished runs: one CSV and one JSON record per run specification.

A run is stored under its spec's key (:meth:`clrlib.lab.specs.TrainSpec.key`), so finding it is
one file name, never a scan, and the store holds no absolute path: a results folder copied or
moved anywhere serves the same runs. Both files are written to a temporary file in the same
folder and renamed into place, the record last, and the record carries the CSV's row count
and SHA-256: a run killed half-way leaves nothing that reads as finished, two processes
writing the same run leave one whole copy, and a reader never pairs a record with another
run's CSV. A record that does not check out (another spec, a CSV of the wrong length or
content, a history shorter than its schedule) is reported and treated as missing.

Layout::

    <root>/<kind>-<key>.csv    the history (fit) or the curve (lr_find)
    <root>/<kind>-<key>.json   {"spec": ..., "rows": ..., "csv_sha256": ..., "meta": {...}}
    <root>/.<kind>-<key>.json.lock   held while the pair is written (and read), where fcntl exists
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from .specs import FinderSpec, TrainSpec

try:
    import fcntl
except ImportError:  # Windows: no locks (run one writer per store there)
    fcntl = None

__all__ = ["RunStore", "StoredRun", "StoreWarning", "StoreLockTimeout", "StoreNotWritable", "LOCK_TIMEOUT", "atomic_write_text", "atomic_write_bytes", "jsonable"]


class StoreWarning(UserWarning):
    """A stored run that could not be used (and will be made again)."""


class StoreLockTimeout(TimeoutError):
    """A run's lock held longer than the store waits; the message names the lock file and its holder."""


class StoreNotWritable(PermissionError):
    """The store's folder cannot be written (checked before a run is trained); the message names it."""


#: Seconds a store waits for a run's lock before raising :class:`StoreLockTimeout`.
LOCK_TIMEOUT = 60.0


@dataclass
class StoredRun:
    """A run read from (or just written to) the store: its table and its record's ``meta``."""

    spec: TrainSpec | FinderSpec
    frame: pd.DataFrame
    meta: dict


def jsonable(value):
    """``value`` with tuples as lists, non-finite floats as strings and unknown objects as ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


class RunStore:
    """Finished runs kept under ``root``, keyed by their spec's hash.

    Args:
        root: the folder (created on the first write).
        lock_timeout: seconds to wait for a run's lock (default :data:`LOCK_TIMEOUT`) before raising
            :class:`StoreLockTimeout` naming the lock file and the pid of the process holding it.

    Example:
        >>> import tempfile, pandas as pd
        >>> from clrlib.lab.specs import ScheduleSpec, TrainSpec, DataSpec
        >>> spec = TrainSpec(ScheduleSpec.make("constant", lr=0.1), 1, batch_size=256, precision="fp32",
        ...                  data=DataSpec("synthetic", synthetic_train=512, fingerprint="abc"))
        >>> store = RunStore(tempfile.mkdtemp())
        >>> store.get(spec) is None
        True
        >>> rows = pd.DataFrame({"step": [0, 1], "loss": [2.3, 2.2]})
        >>> _ = store.put(spec, rows, {"wall_seconds": 1.5})
        >>> store.get(spec).frame["loss"].tolist()
        [2.3, 2.2]
    """

    def __init__(self, root: str | os.PathLike, lock_timeout: float | None = None) -> None:
        self.root = Path(root)
        self.lock_timeout = LOCK_TIMEOUT if lock_timeout is None else float(lock_timeout)
        self._swept = False
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"the run store {self.root} is a file, not a folder")

    def paths(self, spec: TrainSpec | FinderSpec) -> tuple[Path, Path]:
        """The CSV and JSON paths of ``spec``'s run."""
        stem = f"{spec.kind}-{spec.key()}"
        return self.root / f"{stem}.csv", self.root / f"{stem}.json"

    def get(self, spec: TrainSpec | FinderSpec) -> StoredRun | None:
        """The stored run of ``spec``, or None if there is none (or it does not check out)."""
        csv, record_path = self.paths(spec)
        if not record_path.is_file():
            return None
        try:
            with _locked(record_path, exclusive=False, timeout=self.lock_timeout):  # not between a writer's CSV and its record
                record = json.loads(record_path.read_text())
                data = csv.read_bytes()
        except StoreLockTimeout:
            raise
        except (OSError, ValueError) as e:
            return self._reject(record_path, f"unreadable ({type(e).__name__}: {e})")
        if not isinstance(record, dict):
            return self._reject(record_path, f"unreadable (a JSON {type(record).__name__}, not a record)")
        problem = _check_record(spec, record, data)
        if problem:
            return self._reject(record_path, problem)
        frame = pd.read_csv(io.BytesIO(data))
        return StoredRun(spec, frame, record.get("meta", {}))

    def put(self, spec: TrainSpec | FinderSpec, frame: pd.DataFrame, meta: dict[str, Any]) -> StoredRun:
        """Store ``frame`` (and ``meta``) as ``spec``'s run, atomically; returns it as read back."""
        csv, record_path = self.paths(spec)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._swept:  # a killed writer's temporary files (older than an hour)
            remove_stale_temporaries(self.root)
            self._swept = True
        data = frame.to_csv(index=False).encode()
        problem = _check_length(spec, len(frame), meta)
        if problem:
            raise ValueError(f"not storing the run of {spec.key()}: {problem}")
        record = {"spec": spec.to_dict(), "key": spec.key(), "rows": len(frame),
                  "csv_sha256": hashlib.sha256(data).hexdigest(), "meta": jsonable(meta)}
        with _locked(record_path, exclusive=True, timeout=self.lock_timeout):  # two writers of one run: one's CSV with its own record
            atomic_write_bytes(csv, data)
            atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        return StoredRun(spec, pd.read_csv(io.BytesIO(data)), record["meta"])

    def check_writable(self) -> None:
        """Raise :class:`StoreNotWritable` naming the folder if runs cannot be stored in it (call it
        before training, so that a read-only store does not lose a run after its whole length)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-check-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreNotWritable(f"the run store {self.root} is not writable ({e.strerror or e}): a run "
                                   "trained now could not be kept; give a writable results folder "
                                   "(--out DIR or out_dir) or fix its permissions") from None

    def run(self, spec: TrainSpec | FinderSpec,
            compute: Callable[[TrainSpec | FinderSpec], tuple[pd.DataFrame, dict]],
            redo: bool = False) -> StoredRun:
        """The stored run of ``spec``, or ``compute(spec)`` -> ``(frame, meta)`` stored and returned."""
        found = None if redo else self.get(spec)
        if found is not None:
            return found
        frame, meta = compute(spec)
        return self.put(spec, frame, meta)

    def __len__(self) -> int:
        return len(list(self.root.glob("*.json"))) if self.root.is_dir() else 0

    @staticmethod
    def _reject(path: Path, problem: str) -> None:
        warnings.warn(f"stored run {path} not used: {problem}; it will be made again", StoreWarning,
                      stacklevel=3)
        return None


@contextlib.contextmanager
def _locked(record_path: Path, exclusive: bool, timeout: float = LOCK_TIMEOUT):
    """Hold the lock of a run (``.<record name>.lock``): exclusive to write it, shared to read it.

    A reader takes it only where a writer made the lock file (a read-only store is read unlocked).
    A writer writes its pid into the lock file. Waiting more than ``timeout`` seconds raises
    :class:`StoreLockTimeout` naming the lock file and that pid.
    """
    lock = record_path.with_name(f".{record_path.name}.lock")
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY)
        except OSError:
            if exclusive:
                raise
    try:
        if fd is not None:
            _acquire(fd, lock, exclusive, timeout)
            if exclusive:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _acquire(fd: int, lock: Path, exclusive: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                try:
                    holder = lock.read_text().strip() or "unknown"
                except OSError:
                    holder = "unknown"
                raise StoreLockTimeout(
                    f"the run's lock {lock} is held by process {holder} for more than {timeout:g} s; if that "
                    "process is stopped or gone, end it (or delete the lock file once it is gone) and retry")
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def _check_length(spec, rows: int, meta: dict) -> str | None:
    """Why a table of ``rows`` rows cannot be ``spec``'s finished run, or None."""
    if isinstance(spec, TrainSpec):
        if rows != spec.total_steps and not meta.get("diverged"):
            return f"{rows} rows, but {spec.epochs} epochs of {spec.steps_per_epoch} steps are {spec.total_steps}"
    elif not 0 < rows <= spec.num_it:
        return f"{rows} points for a range test of {spec.num_it} iterations"
    return None


def _check_record(spec, record: dict, data: bytes) -> str | None:
    """Why a stored record and CSV are not ``spec``'s whole run, or None."""
    rows, meta = record.get("rows", -1), record.get("meta", {})
    if isinstance(rows, bool) or not isinstance(rows, int):
        return f"its 'rows' is {rows!r}, not a number of rows"
    if not isinstance(meta, dict):
        return f"its 'meta' is a JSON {type(meta).__name__}, not an object"
    if record.get("spec") != jsonable(spec.to_dict()):
        return "its record holds other settings"
    if record.get("csv_sha256") != hashlib.sha256(data).hexdigest():
        return "its CSV is not the one its record was written with (half-written or replaced)"
    return _check_length(spec, rows, meta)
