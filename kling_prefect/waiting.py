"""Adaptive waiting: how long jobs of each kind take, learned from the jobs this process has seen.

A Kling job takes minutes, and how many depends on the model, the mode, the length of the clip and the
vendor's load, none of which the vendor documents. So nothing here trusts a built-in table: a
:class:`DurationModel` learns, per :class:`JobKind` (model, mode, video seconds, audio), the times from
creation to completion that waits in this process measured, and :meth:`PollPolicy.learned_interval
<kling_prefect.client.PollPolicy.learned_interval>` turns what it learned into a query schedule:

- nothing learned yet: geometric growth from the smallest interval (a few queries early, then fewer);
- learned: no query while the job almost surely cannot be done yet (a bounded sleep), then queries every
  ``min_interval`` while completion is likely, then slowly growing intervals if the job is overdue.

Measurements are interval-censored: a wait knows the job was pending at its last query and done at the
next one, so an observation is the midpoint of that interval, its width adding to the spread.

Waits sleeping on a kind are woken when a new observation of that kind arrives (:meth:`DurationModel.watch`),
so in a batch the first completions immediately tighten everyone else's schedule.

What was learned outlives the process (every Prefect flow run is one, and would otherwise start cold):
:func:`default_duration_model` loads ``$PREFECT_HOME/kling-prefect/durations.json`` on first use and saves
back to it (merged with what other processes wrote) after new observations, at most every ``save_every``
seconds, and at exit. ``KLING_PREFECT_DURATIONS`` names another file, or turns this off with ``off``.
Observations older than ``max_age`` (a week) are not loaded, and those loaded count as less precise than this
run's own (``history_sigma``): the vendor's speed drifts between runs, so an estimate from history is wider,
and narrows as this run's own observations join and replace them. A missing, unreadable or unwritable file
only costs the cold start (with a logged warning).

Examples:
    ```python
    from kling_prefect.waiting import DurationModel, JobKind

    model = DurationModel()
    kind = JobKind("kwaivgi/kling-o3/text-to-video", "std", 5)
    model.observe(kind, pending_at=88.0, done_by=92.0)
    model.estimate(kind)  # DurationEstimate(median=90.0, sigma=..., observations=1)
    ```
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import heapq
import json
import logging
import math
import os
import random
import statistics
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

if TYPE_CHECKING:
    from kling_prefect.client import PollPolicy

_NORMAL = statistics.NormalDist()
_log = logging.getLogger(__name__)

DURATIONS_ENV = "KLING_PREFECT_DURATIONS"
"""Environment variable: the file learned durations persist in, or ``off`` (also ``0``/``false``/``none``)."""
_FILE_VERSION = 1
_OFF = frozenset({"off", "0", "false", "none"})


# --------------------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class JobKind:
    """What a job's duration is learned by: model id, mode, seconds of video, whether audio is generated."""

    model: str
    mode: str
    seconds: int
    audio: bool = False

    @classmethod
    def of(cls, request: Any) -> JobKind:
        """The kind of a :class:`~kling_prefect.models.KlingRequest`."""
        return cls(
            model=str(request.model_id),
            mode=str(getattr(request, "mode", None) or "default"),
            seconds=int(request.video_seconds),
            audio=bool(getattr(request, "has_audio", False)),
        )

    @classmethod
    def from_args(cls, model: str, args: Mapping[str, Any], video_seconds: int | None = None) -> JobKind:
        """The kind of a job from its model id and wire ``args`` (defaults filled in by the request model)."""
        try:
            from kling_prefect.models import request_model_for

            return cls.of(request_model_for(model).model_validate(dict(args)))
        except Exception:  # an unknown model or args we cannot validate: read what is there
            seconds = video_seconds if video_seconds is not None else args.get("duration", 0)
            try:
                seconds = int(seconds)
            except (TypeError, ValueError):
                seconds = 0
            audio = args.get("sound") == "on" or bool(args.get("generate_audio"))
            return cls(model=model, mode=str(args.get("mode") or "default"), seconds=seconds, audio=audio)


# --------------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class DurationEstimate:
    """A log-normal belief about a job's duration (seconds from creation to completion).

    ``sigma`` is the predictive spread in log space: the spread of the jobs seen (a prior spread while they
    are few), plus the uncertainty of a median estimated from few jobs seen through detection intervals.
    """

    median: float
    sigma: float
    observations: int

    def cdf(self, seconds: float) -> float:
        """Probability that the job is done ``seconds`` after its creation."""
        if seconds <= 0:
            return 0.0
        return _NORMAL.cdf((math.log(seconds) - math.log(self.median)) / self.sigma)

    def quantile(self, probability: float) -> float:
        """Seconds from creation by which the job is done with ``probability``."""
        probability = min(max(probability, 1e-9), 1 - 1e-9)
        return self.median * math.exp(self.sigma * _NORMAL.inv_cdf(probability))


class _Sample(NamedTuple):
    """One observation: log of the detection interval's midpoint, its extra log-space variance (the interval's
    width), when it was observed (unix time), and whether it was loaded from a previous run's file."""

    log: float
    variance: float
    at: float
    history: bool = False

    @property
    def key(self) -> tuple[float, float, float]:
        return (self.log, self.variance, self.at)


class DurationModel:
    """Job durations learned per :class:`JobKind`; thread-safe, shared by every wait in the process.

    Args:
        window: observations kept per kind (the most recent: the vendor's speed drifts with its load).
        prior_sigma: log-space spread assumed before the data say otherwise (0.25 is a +/-28% 1-sigma band).
        prior_weight: how many observations' worth that assumption is worth.
        min_sigma / max_sigma: bounds of the predictive spread.
        max_relative_width: an observation whose detection interval is wider than this fraction of its
            midpoint says too little (a job seen done at its first query after hours) and is ignored.
        max_age: seconds after which a saved observation is too old to load (or to save again).
        history_sigma: log-space drift of the vendor's speed between runs: each observation loaded from a
            file counts with ``history_sigma**2`` more variance than one this process made (like a wider
            detection interval), so an estimate from history is wider than one from the same jobs seen here.
        save_every: once :meth:`attach`-ed to a file, the least seconds between two automatic saves.
    """

    def __init__(
        self,
        *,
        window: int = 64,
        prior_sigma: float = 0.25,
        prior_weight: float = 2.0,
        min_sigma: float = 0.02,
        max_sigma: float = 1.0,
        max_relative_width: float = 1.0,
        max_age: float = 7 * 24 * 3600.0,
        history_sigma: float = 0.1,
        save_every: float = 10.0,
    ) -> None:
        self.window = window
        self.prior_sigma = prior_sigma
        self.prior_weight = prior_weight
        self.min_sigma = min_sigma
        self.max_sigma = max_sigma
        self.max_relative_width = max_relative_width
        self.max_age = max_age
        self.history_sigma = history_sigma
        self.save_every = save_every
        self._lock = threading.Lock()
        self._samples: dict[JobKind, deque[_Sample]] = {}
        self._cache: dict[JobKind, DurationEstimate | None] = {}
        self._watchers: dict[JobKind, set[Doorbell]] = {}
        # Persistence: `_changes` counts kept observations (under `_lock`); the rest is under `_save_lock`.
        self._changes = 0
        self._save_lock = threading.Lock()
        self._path: Path | None = None
        self._saved_changes = 0
        self._last_save = -math.inf
        self._save_warned = False
        self._exit_hook = False

    def observe(self, kind: JobKind, *, pending_at: float, done_by: float) -> bool:
        """Record a job of ``kind`` seen pending ``pending_at`` s and done ``done_by`` s after its creation.

        Returns whether the observation was kept (a detection interval too wide to say much is not).
        """
        pending_at = max(0.0, pending_at)
        if done_by <= 0 or done_by < pending_at:
            return False
        middle = (pending_at + done_by) / 2
        relative_width = (done_by - pending_at) / middle
        if relative_width > self.max_relative_width:
            return False
        # A completion uniform over the interval: variance width^2/12, in log space (width/middle)^2/12.
        extra_variance = relative_width**2 / 12
        with self._lock:
            samples = self._samples.setdefault(kind, deque(maxlen=self.window))
            samples.append(_Sample(math.log(middle), extra_variance, time.time()))
            self._cache.pop(kind, None)
            self._changes += 1
            watchers = list(self._watchers.get(kind, ()))
        for watch in watchers:
            watch.notify()
        self._autosave()
        return True

    def estimate(self, kind: JobKind) -> DurationEstimate | None:
        """What is known of ``kind``'s duration, or ``None`` before any job of that kind was seen done."""
        with self._lock:
            if kind in self._cache:
                return self._cache[kind]
            samples = list(self._samples.get(kind, ()))
            estimate = self._compute(samples) if samples else None
            self._cache[kind] = estimate
            return estimate

    def _compute(self, samples: list[_Sample]) -> DurationEstimate:
        logs = [s.log for s in samples]
        n = len(logs)
        center = statistics.median(logs) if n >= 3 else statistics.fmean(logs)
        if n >= 5:
            spread = 1.4826 * statistics.median(abs(x - center) for x in logs)  # MAD: robust to outliers
        elif n >= 2:
            spread = statistics.stdev(logs)
        else:
            spread = 0.0
        dof = n - 1
        variance = (self.prior_weight * self.prior_sigma**2 + dof * spread**2) / (self.prior_weight + dof)
        # A new job varies like the jobs seen, plus the error of a center estimated from n of them (whose
        # detection intervals blur it further; their spread is already in the spread of the midpoints).
        # Observations of earlier runs are blurred further by the vendor's drift since (``history_sigma``).
        history = self.history_sigma**2
        variance = variance * (1 + 1 / n) + statistics.fmean(s.variance + history * s.history for s in samples) / n
        predictive = math.sqrt(variance)
        sigma = min(max(predictive, self.min_sigma), self.max_sigma)
        return DurationEstimate(median=math.exp(center), sigma=sigma, observations=n)

    def known_kinds(self) -> list[JobKind]:
        with self._lock:
            return list(self._samples)

    def clear(self) -> None:
        """Forget everything learned (watchers stay registered)."""
        with self._lock:
            self._samples.clear()
            self._cache.clear()

    # ----------------------------------------------------------------------------------------- persistence

    @property
    def path(self) -> Path | None:
        """The file this model saves itself to (see :meth:`attach`), or ``None``."""
        return self._path

    def load(self, path: str | os.PathLike[str]) -> int:
        """Add the observations saved in ``path`` (younger than ``max_age``); returns how many were new.

        They count as history (see ``history_sigma``). A missing file loads nothing; an unreadable one logs a
        warning and loads nothing: this never raises (except on a bug in the caller's arguments).
        """
        path = Path(path)
        try:
            stored = _read_file(path)
        except FileNotFoundError:
            return 0
        except Exception as exc:
            _log.warning("Ignoring saved job durations in %s: %s", path, _describe(exc))
            return 0
        oldest = time.time() - self.max_age
        added = 0
        changed: list[JobKind] = []
        with self._lock:
            for kind, loaded in stored.items():
                fresh = [_Sample(*s.key, history=True) for s in loaded if s.at >= oldest]
                if not fresh:
                    continue
                current = self._samples.get(kind, ())
                merged = _merge(current, fresh, self.window)
                new = len({s.key for s in merged} - {s.key for s in current})
                if new:
                    self._samples[kind] = deque(merged, maxlen=self.window)
                    self._cache.pop(kind, None)
                    changed.append(kind)
                    added += new
            watchers = [w for kind in changed for w in self._watchers.get(kind, ())]
        for watch in watchers:
            watch.notify()
        return added

    def save(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Write what was learned to ``path`` (default: the :meth:`attach`-ed file), merged with what it holds.

        Another process may have saved there meanwhile: the file gets the union of both, newest ``window`` per
        kind, nothing older than ``max_age``. Written atomically (a temporary file renamed over it), under an
        advisory lock where the platform has one. Returns whether it was written; failures log a warning and
        never raise.
        """
        with self._save_lock:
            return self._save_locked(Path(path) if path is not None else self._path)

    def flush(self) -> bool:
        """Save to the attached file now if observations since the last save are unsaved; whether it wrote."""
        with self._save_lock:
            if self._path is None or self._changes == self._saved_changes:
                return False
            return self._save_locked(self._path)

    def attach(self, path: str | os.PathLike[str]) -> int:
        """Load ``path``, then keep it up to date: after kept observations (at most every ``save_every``
        seconds) and at interpreter exit. Returns how many observations were loaded."""
        path = Path(path)
        loaded = self.load(path)
        with self._save_lock:
            self._path = path
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(_flush_at_exit, weakref.ref(self))
        return loaded

    def _autosave(self) -> None:
        if self._path is None or time.monotonic() - self._last_save < self.save_every:
            return
        if not self._save_lock.acquire(blocking=False):  # another thread is saving; the next one (or exit) will
            return

        def save() -> None:
            try:
                if self._path is not None and time.monotonic() - self._last_save >= self.save_every:
                    self._save_locked(self._path)
            finally:
                self._save_lock.release()

        # Off the caller's thread: observe() runs in event loops, and a save may wait for another process's
        # file lock and for fsync. flush() (and the exit hook) take the same lock, so they wait for it.
        threading.Thread(target=save, name="kling-durations-save", daemon=True).start()

    def _save_locked(self, path: Path | None) -> bool:
        if path is None:
            return False
        with self._lock:
            changes = self._changes
            mine = {kind: list(samples) for kind, samples in self._samples.items()}
        self._last_save = time.monotonic()  # also after a failure: retry after save_every, not at every observe
        try:
            _write_merged(path, mine, window=self.window, oldest=time.time() - self.max_age)
        except Exception as exc:
            log = _log.debug if self._save_warned else _log.warning
            log("Could not save job durations to %s: %s", path, _describe(exc))
            self._save_warned = True
            return False
        self._save_warned = False
        if path == self._path:
            self._saved_changes = changes
        return True

    @contextlib.contextmanager
    def watch(self, kind: JobKind, watch: Doorbell | None = None) -> Iterator[Doorbell]:
        """Be told (``await watch.wait(timeout)`` returns ``True``) when ``kind`` gets a new observation.

        Works across event loops and threads; call inside a running asyncio loop. Pass ``watch`` to ring a
        doorbell the wait already listens on (e.g. one a callback receiver rings too).
        """
        watch = watch if watch is not None else Doorbell()
        with self._lock:
            self._watchers.setdefault(kind, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watchers = self._watchers.get(kind)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._watchers[kind]


class Doorbell:
    """One waiter's doorbell: rung from any thread, heard in the loop that created it.

    :meth:`notify` says "re-plan" (something learned changed); :meth:`hint` says "query now" (a callback said
    the job may have ended), which the wait reads with :meth:`take_hint`.
    """

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._event = asyncio.Event() if self._loop is not None else None
        self._rung = False
        self._hinted = False

    def hint(self) -> None:
        self._hinted = True
        self.notify()

    def take_hint(self) -> bool:
        """Whether a hint arrived since the last call (then cleared)."""
        hinted, self._hinted = self._hinted, False
        return hinted

    def notify(self) -> None:
        self._rung = True
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; ``True`` as soon as new knowledge arrived (then re-armed)."""
        if self._event is None:  # not created in an asyncio loop (trio): no doorbell, just the sleep
            await anyio.sleep(max(0.0, timeout))
            return False
        if not self._rung:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        rung, self._rung = self._rung, False
        self._event.clear()
        return rung


# --------------------------------------------------------------------------------------------- persistence


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


class _NewerFileError(ValueError):
    """The file was written by a newer format version: neither read nor overwritten."""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _read_file(path: Path) -> dict[JobKind, list[_Sample]]:
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
    stored: dict[JobKind, list[_Sample]] = {}
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
            samples.append(_Sample(log, variance, at))
    return stored


def _merge(first: Iterable[_Sample], second: Iterable[_Sample], window: int) -> list[_Sample]:
    """The union (by value; ``first`` wins a tie) in time order: the newest ``window`` of it."""
    seen: dict[tuple[float, float, float], _Sample] = {}
    for sample in (*first, *second):
        seen.setdefault(sample.key, sample)
    return sorted(seen.values(), key=lambda s: s.at)[-window:] if window > 0 else []


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


def _write_merged(path: Path, mine: Mapping[JobKind, Iterable[_Sample]], *, window: int, oldest: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        try:
            theirs = _read_file(path)
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
            samples = _merge(both, (), window)
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
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _flush_at_exit(model: weakref.ReferenceType[DurationModel]) -> None:
    alive = model()
    if alive is not None:
        alive.flush()


_default_model = DurationModel()
_default_lock = threading.Lock()
_default_attached = False


def default_duration_model() -> DurationModel:
    """The process-wide model every wait uses unless given another.

    On the first call it loads what earlier processes learned from :func:`durations_path` and keeps that file
    up to date (:meth:`DurationModel.attach`), unless ``KLING_PREFECT_DURATIONS=off``.
    """
    global _default_attached
    if not _default_attached:
        with _default_lock:
            if not _default_attached:
                try:
                    path = durations_path()
                except Exception as exc:  # no home directory to expand `~` in
                    _log.warning("Not persisting job durations: %s", _describe(exc))
                    path = None
                if path is not None:
                    _default_model.attach(path)
                _default_attached = True
    return _default_model


@dataclass(frozen=True)
class SimulatedWait:
    """One job of :func:`simulate_waits`: how many queries it cost and how late its completion was seen."""

    queries: int
    delay: float


def simulate_waits(
    policy: PollPolicy, model: DurationModel, jobs: list[tuple[JobKind, float]], seed: int
) -> list[SimulatedWait]:
    """The query schedule on simulated time, for tests and ``benchmarks/simulate_waiting.py``: nothing sleeps.

    ``jobs`` are (kind, duration) pairs, all created at time 0 and sharing ``model``; each wait follows
    ``policy.learned_interval``, and a completion that teaches the model re-plans every waiting job of its
    kind, as :func:`watch` does for real waits.
    """
    rng = random.Random(seed)
    state: list[dict[str, Any]] = [{"pending_at": 0.0, "previous": None, "queries": 0, "version": 0} for _ in jobs]
    delays = [0.0] * len(jobs)
    heap: list[tuple[float, int, int]] = []

    def plan(index: int, now: float) -> None:
        job = state[index]
        interval = policy.learned_interval(job["pending_at"], model.estimate(jobs[index][0]), job["previous"], rng)
        job["version"] += 1
        job["interval"] = interval
        heapq.heappush(heap, (max(now, job["pending_at"] + interval), job["version"], index))

    for index in range(len(jobs)):
        plan(index, 0.0)
    done: set[int] = set()
    while heap:
        now, version, index = heapq.heappop(heap)
        job = state[index]
        if index in done or version != job["version"]:
            continue
        job["queries"] += 1
        kind, duration = jobs[index]
        if now < duration:
            job["pending_at"], job["previous"] = now, job["interval"]
            plan(index, now)
            continue
        done.add(index)
        delays[index] = now - duration
        if model.observe(kind, pending_at=job["pending_at"], done_by=now):
            for other in range(len(jobs)):
                if other not in done and jobs[other][0] == kind:
                    plan(other, now)
    return [SimulatedWait(job["queries"], delay) for job, delay in zip(state, delays, strict=True)]


__all__ = [
    "DURATIONS_ENV",
    "Doorbell",
    "DurationEstimate",
    "DurationModel",
    "JobKind",
    "SimulatedWait",
    "default_duration_model",
    "durations_path",
    "simulate_waits",
]
