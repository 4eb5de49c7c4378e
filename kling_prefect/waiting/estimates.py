"""How long jobs of each kind take: a belief per :class:`~kling_prefect.waiting.kinds.JobKind`, learned from
the jobs this process (and, through :mod:`~kling_prefect.waiting.persistence`, earlier ones) saw end.

Before any job of a kind was seen, the belief is a *wide prior* around the model's typical job time
(:meth:`ModelFacts.typical_job_seconds <kling_prefect.models.facts.ModelFacts.typical_job_seconds>`): wide
because the vendor documents no times. Once jobs of *some* kind were seen, the prior of the others is moved by
how fast the vendor is being compared with the typical times (one completion calibrates every kind) and
narrowed. Jobs of the kind itself then replace the prior.

Observations are interval-censored: a wait knows the job was pending at its last query and done at the next,
so an observation is the midpoint of that interval, its width adding to the spread.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from kling_prefect.waiting.doorbell import Doorbell
from kling_prefect.waiting.kinds import JobKind

__all__ = ["DurationEstimate", "DurationModel", "Sample"]

_NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class DurationEstimate:
    """A log-normal belief about a job's duration (seconds from creation to completion).

    ``sigma`` is the predictive spread in log space. ``observations`` counts the jobs of the kind it rests on
    (0: a prior).
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

    def chance_done(self, pending_at: float, now: float) -> float:
        """Probability that a job still pending at ``pending_at`` is done by ``now`` (what a query now finds)."""
        before = self.cdf(pending_at)
        if before >= 1.0:
            return 1.0
        return max(0.0, min(1.0, (self.cdf(now) - before) / (1.0 - before)))


class Sample(NamedTuple):
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
        prior_sigma: log-space spread assumed for a kind with few observations (0.25 is a +/-28% 1-sigma band).
        prior_weight: how many observations' worth that assumption is worth.
        cold_sigma: spread of the prior before any job at all was seen (0.9: the typical time may be off by a
            factor of 2.5 either way at one sigma, 8 at 2.33 sigma).
        informed_sigma: spread of the prior of an unseen kind once other kinds calibrated the vendor's speed.
        default_typical: centre of the prior for a model without facts (seconds).
        min_sigma / max_sigma: bounds of the predictive spread.
        max_relative_width: an observation whose detection interval is wider than this fraction of its
            midpoint says too little and is ignored. The default, 2, keeps ``[0, t]``: a job found done by its
            first query still says "at most t", which is how a belief far too slow learns at all.
        history_sigma: log-space drift of the vendor's speed between runs: each observation loaded from a
            file counts with ``history_sigma**2`` more variance than one this process made.
    """

    def __init__(
        self,
        *,
        window: int = 64,
        prior_sigma: float = 0.25,
        prior_weight: float = 2.0,
        cold_sigma: float = 0.9,
        informed_sigma: float = 0.45,
        default_typical: float = 120.0,
        min_sigma: float = 0.02,
        max_sigma: float = 1.2,
        max_relative_width: float = 2.0,
        history_sigma: float = 0.1,
    ) -> None:
        self.window = window
        self.prior_sigma = prior_sigma
        self.prior_weight = prior_weight
        self.cold_sigma = cold_sigma
        self.informed_sigma = informed_sigma
        self.default_typical = default_typical
        self.min_sigma = min_sigma
        self.max_sigma = max_sigma
        self.max_relative_width = max_relative_width
        self.history_sigma = history_sigma
        self._lock = threading.Lock()
        self._samples: dict[JobKind, deque[Sample]] = {}
        self._cache: dict[JobKind, DurationEstimate] = {}
        self._learned: dict[JobKind, DurationEstimate | None] = {}
        self._watchers: dict[JobKind, set[Doorbell]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._changes = 0

    # ----------------------------------------------------------------------------------------- learning

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
            samples.append(Sample(math.log(middle), extra_variance, time.time()))
            self._changed()
            watchers = self._watchers_of(kind)
            listeners = list(self._listeners)
        for watch in watchers:
            watch.notify()
        for listener in listeners:
            listener()
        return True

    def merge(self, stored: Mapping[JobKind, Iterable[Sample]], *, oldest: float) -> int:
        """Add observations of earlier runs (as history), younger than ``oldest``; returns how many were new."""
        added = 0
        changed: list[JobKind] = []
        with self._lock:
            for kind, loaded in stored.items():
                fresh = [Sample(*s.key, history=True) for s in loaded if s.at >= oldest]
                if not fresh:
                    continue
                current = self._samples.get(kind, ())
                merged = merge_samples(current, fresh, self.window)
                new = len({s.key for s in merged} - {s.key for s in current})
                if new:
                    self._samples[kind] = deque(merged, maxlen=self.window)
                    changed.append(kind)
                    added += new
            if changed:
                self._changed()
            watchers = {w for kind in changed for w in self._watchers_of(kind)}
        for watch in watchers:
            watch.notify()
        return added

    def _changed(self) -> None:
        # Any observation may move the prior of every unseen kind (the vendor's speed): recompute lazily.
        self._cache.clear()
        self._learned.clear()
        self._changes += 1

    def _watchers_of(self, kind: JobKind) -> list[Doorbell]:
        """Waits to wake after ``kind`` learned something: its own, and those of kinds still on a prior."""
        return [
            watch
            for other, watches in self._watchers.items()
            if other == kind or other not in self._samples
            for watch in watches
        ]

    # ----------------------------------------------------------------------------------------- beliefs

    def estimate(self, kind: JobKind) -> DurationEstimate:
        """What is believed of ``kind``'s duration: learned from its jobs, else a prior (``observations == 0``)."""
        with self._lock:
            cached = self._cache.get(kind)
            if cached is None:
                cached = self._learned_locked(kind) or self._prior_locked(kind)
                self._cache[kind] = cached
            return cached

    def learned(self, kind: JobKind) -> DurationEstimate | None:
        """The estimate from jobs of ``kind`` alone, or ``None`` before any was seen end."""
        with self._lock:
            return self._learned_locked(kind)

    def _learned_locked(self, kind: JobKind) -> DurationEstimate | None:
        if kind not in self._learned:
            samples = list(self._samples.get(kind, ()))
            self._learned[kind] = self._compute(samples) if samples else None
        return self._learned[kind]

    def _prior_locked(self, kind: JobKind) -> DurationEstimate:
        typical = kind.typical_seconds() or self.default_typical
        # How much faster or slower than typical the vendor is: the median over the kinds seen.
        offsets = []
        for other in self._samples:
            learned = self._learned_locked(other)
            other_typical = other.typical_seconds()
            if learned is not None and other_typical:
                offsets.append(math.log(learned.median / other_typical))
        if not offsets:
            return DurationEstimate(median=typical, sigma=self.cold_sigma, observations=0)
        return DurationEstimate(
            median=typical * math.exp(statistics.median(offsets)), sigma=self.informed_sigma, observations=0
        )

    def _compute(self, samples: list[Sample]) -> DurationEstimate:
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
        sigma = min(max(math.sqrt(variance), self.min_sigma), self.max_sigma)
        return DurationEstimate(median=math.exp(center), sigma=sigma, observations=n)

    # ----------------------------------------------------------------------------------------- state

    @property
    def changes(self) -> int:
        """How many times what was learned changed (observations kept, histories merged)."""
        with self._lock:
            return self._changes

    def snapshot(self) -> dict[JobKind, list[Sample]]:
        """Every kept observation, by kind (for saving)."""
        with self._lock:
            return {kind: list(samples) for kind, samples in self._samples.items()}

    def known_kinds(self) -> list[JobKind]:
        with self._lock:
            return list(self._samples)

    def clear(self) -> None:
        """Forget everything learned (watchers stay registered)."""
        with self._lock:
            self._samples.clear()
            self._changed()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the observing thread, outside the lock) after each kept observation."""
        with self._lock:
            self._listeners.append(listener)

    @contextlib.contextmanager
    def watch(self, kind: JobKind, watch: Doorbell | None = None) -> Iterator[Doorbell]:
        """Be told (``await watch.wait(timeout)`` returns ``True``) when what is believed of ``kind`` changes.

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


def merge_samples(first: Iterable[Sample], second: Iterable[Sample], window: int) -> list[Sample]:
    """The union (by value; ``first`` wins a tie) in time order: the newest ``window`` of it."""
    seen: dict[tuple[float, float, float], Sample] = {}
    for sample in (*first, *second):
        seen.setdefault(sample.key, sample)
    return sorted(seen.values(), key=lambda s: s.at)[-window:] if window > 0 else []
