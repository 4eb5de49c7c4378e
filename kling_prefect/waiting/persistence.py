"""Learned durations outlive the process: every Prefect flow run is one, and would otherwise start cold.

:func:`default_duration_model` loads ``$PREFECT_HOME/kling-prefect/durations.json`` on first use and keeps it
up to date (:class:`DurationFile`): saved after new observations at most every ``save_every`` seconds, merged
with what other processes wrote meanwhile, and at exit. ``KLING_PREFECT_DURATIONS`` names another file, or
turns this off with ``off``. Observations older than ``max_age`` (a week) are neither loaded nor saved; those
loaded count as less precise than this run's own (``DurationModel.history_sigma``). A missing, unreadable or
unwritable file only costs the cold start (with a logged warning).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kling_prefect.atomic import atomic_path
from kling_prefect.waiting.estimates import DurationModel, Sample, merge_samples
from kling_prefect.waiting.kinds import JobKind

__all__ = ["DURATIONS_ENV", "DurationFile", "default_duration_model", "durations_path"]

_log = logging.getLogger("kling_prefect.waiting")

DURATIONS_ENV = "KLING_PREFECT_DURATIONS"
"""Environment variable: the file learned durations persist in, or ``off`` (also ``0``/``false``/``none``)."""
_FILE_VERSION = 1
_OFF = frozenset({"off", "0", "false", "none"})
MAX_AGE = 7 * 24 * 3600.0


def durations_path() -> Path | None:
    """Where :func:`default_duration_model` persists what it learned, or ``None`` when that is turned off.

    ``$KLING_PREFECT_DURATIONS`` if set (``off``, ``0``, ``false`` or ``none`` turn persistence off), else
    ``$PREFECT_HOME/kling-prefect/durations.json`` (``PREFECT_HOME`` defaulting to ``~/.prefect``).
    """
    value = os.environ.get(DURATIONS_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    home = os.environ.get("PREFECT_HOME", "").strip() or "~/.prefect"
    return Path(home).expanduser() / "kling-prefect" / "durations.json"


class DurationFile:
    """Keeps a :class:`DurationModel` and a file in sync: :meth:`load`, :meth:`save` (merged), autosave.

    Args:
        model: the model to load into and save from.
        path: the JSON file.
        max_age: seconds after which a saved observation is too old to load (or to save again).
        save_every: once :meth:`attach`-ed, the least seconds between two automatic saves.
    """

    def __init__(
        self, model: DurationModel, path: str | os.PathLike[str], *, max_age: float = MAX_AGE, save_every: float = 10.0
    ) -> None:
        self.model = model
        self.path = Path(path)
        self.max_age = max_age
        self.save_every = save_every
        self._save_lock = threading.Lock()
        self._saved_changes = 0
        self._last_save = -math.inf
        self._warned = False
        self._attached = False

    def load(self) -> int:
        """Add the observations saved in the file; returns how many were new. Never raises."""
        try:
            stored = read_durations(self.path)
        except FileNotFoundError:
            return 0
        except Exception as exc:
            _log.warning("Ignoring saved job durations in %s: %s", self.path, _describe(exc))
            return 0
        return self.model.merge(stored, oldest=time.time() - self.max_age)

    def save(self) -> bool:
        """Write what was learned, merged with what the file holds (another process may have saved there
        meanwhile): newest ``window`` per kind, nothing older than ``max_age``, written atomically under an
        advisory lock. Returns whether it was written; failures log a warning and never raise."""
        with self._save_lock:
            return self._save_locked()

    def flush(self) -> bool:
        """Save now if observations since the last save are unsaved; whether it wrote."""
        with self._save_lock:
            if self.model.changes == self._saved_changes:
                return False
            return self._save_locked()

    def attach(self) -> int:
        """Load the file, then keep it up to date after new observations and at exit; returns how many loaded."""
        loaded = self.load()
        self._saved_changes = self.model.changes
        if not self._attached:
            self._attached = True
            self.model.add_listener(self._autosave)
            atexit.register(_flush_at_exit, weakref.ref(self))
        return loaded

    def _autosave(self) -> None:
        if time.monotonic() - self._last_save < self.save_every:
            return
        if not self._save_lock.acquire(blocking=False):  # another thread is saving; the next one (or exit) will
            return

        def save() -> None:
            try:
                if time.monotonic() - self._last_save >= self.save_every:
                    self._save_locked()
            finally:
                self._save_lock.release()

        # Off the caller's thread: observations happen in event loops, and a save may wait for another
        # process's file lock and for fsync. flush() (and the exit hook) take the same lock, so they wait.
        threading.Thread(target=save, name="kling-durations-save", daemon=True).start()

    def _save_locked(self) -> bool:
        changes = self.model.changes
        mine = self.model.snapshot()
        self._last_save = time.monotonic()  # also after a failure: retry after save_every, not at every observe
        try:
            write_merged(self.path, mine, window=self.model.window, oldest=time.time() - self.max_age)
        except Exception as exc:
            log = _log.debug if self._warned else _log.warning
            log("Could not save job durations to %s: %s", self.path, _describe(exc))
            self._warned = True
            return False
        self._warned = False
        self._saved_changes = changes
        return True


class _NewerFileError(ValueError):
    """The file was written by a newer format version: neither read nor overwritten."""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def read_durations(path: Path) -> dict[JobKind, list[Sample]]:
    """The observations a durations file holds. Raises ``FileNotFoundError``, ``OSError`` or ``ValueError``."""
    data = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version = data.get("version")
    if version != _FILE_VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > _FILE_VERSION:
            raise _NewerFileError(f"format version {version} is newer than this version's {_FILE_VERSION}")
        raise ValueError(f"format version {version!r}, expected {_FILE_VERSION}")
    entries = data.get("kinds")
    if not isinstance(entries, list):
        raise ValueError("no list of kinds")
    stored: dict[JobKind, list[Sample]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a kind is not an object")
        model, mode, seconds, audio = (entry.get(key) for key in ("model", "mode", "seconds", "audio"))
        if not (
            isinstance(model, str)
            and isinstance(mode, str)
            and isinstance(seconds, int)
            and not isinstance(seconds, bool)
            and isinstance(audio, bool)
            and isinstance(entry.get("samples"), list)
        ):
            raise ValueError(f"malformed kind {entry!r:.200}")
        samples = stored.setdefault(JobKind(model, mode, seconds, audio), [])
        for sample in entry["samples"]:
            if not isinstance(sample, list) or len(sample) != 3:
                raise ValueError(f"malformed sample {sample!r:.200}")
            log, variance, at = (_number(x) for x in sample)
            if variance < 0:
                raise ValueError(f"negative variance {variance!r}")
            samples.append(Sample(log, variance, at))
    return stored


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 2.0) -> Iterator[None]:
    """An advisory lock on ``path`` (a ``.lock`` file beside it) where fcntl exists; best effort otherwise."""
    try:
        import fcntl
    except ImportError:  # Windows: the rename is still atomic; a concurrent merge may lose one side's samples
        yield
        return
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # e.g. a read-only directory: the write will say so
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # a stuck holder: write anyway (atomically) rather than block
                    break
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_merged(path: Path, mine: Mapping[JobKind, Iterable[Sample]], *, window: int, oldest: float) -> None:
    """Write ``mine`` united with what ``path`` holds (newest ``window`` per kind, none before ``oldest``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        try:
            theirs = read_durations(path)
        except FileNotFoundError:
            theirs = {}
        except _NewerFileError:
            raise
        except Exception as exc:
            _log.info("Replacing unreadable job durations file %s: %s", path, _describe(exc))
            theirs = {}
        kinds = []
        for kind in dict.fromkeys([*mine, *theirs]):
            both = (s for s in (*mine.get(kind, ()), *theirs.get(kind, ())) if s.at >= oldest)
            samples = merge_samples(both, (), window)
            if samples:
                kinds.append(
                    {
                        "model": kind.model,
                        "mode": kind.mode,
                        "seconds": kind.seconds,
                        "audio": kind.audio,
                        "samples": [[s.log, s.variance, s.at] for s in samples],
                    }
                )
        text = json.dumps({"version": _FILE_VERSION, "kinds": kinds}, separators=(",", ":"))
        with atomic_path(path) as temporary:
            temporary.write_text(text, encoding="utf-8")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _flush_at_exit(file: weakref.ReferenceType[DurationFile]) -> None:
    alive = file()
    if alive is not None:
        alive.flush()


_default_model = DurationModel()
_default_file: DurationFile | None = None
_default_lock = threading.Lock()
_default_attached = False


def default_duration_model() -> DurationModel:
    """The process-wide model every wait uses unless given another.

    On the first call it loads what earlier processes learned from :func:`durations_path` and keeps that file
    up to date (:meth:`DurationFile.attach`), unless ``KLING_PREFECT_DURATIONS=off``.
    """
    global _default_attached, _default_file
    if not _default_attached:
        with _default_lock:
            if not _default_attached:
                try:
                    path = durations_path()
                except Exception as exc:  # no home directory to expand `~` in
                    _log.warning("Not persisting job durations: %s", _describe(exc))
                    path = None
                if path is not None:
                    _default_file = DurationFile(_default_model, path)
                    _default_file.attach()
                _default_attached = True
    return _default_model


def default_duration_file() -> DurationFile | None:
    """The file :func:`default_duration_model` persists to (``None`` before its first call or when off)."""
    return _default_file
