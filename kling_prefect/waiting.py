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
import contextlib
import heapq
import math
import random
import statistics
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from kling_prefect.client import PollPolicy

_NORMAL = statistics.NormalDist()


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


class DurationModel:
    """Job durations learned per :class:`JobKind`; thread-safe, shared by every wait in the process.

    Args:
        window: observations kept per kind (the most recent: the vendor's speed drifts with its load).
        prior_sigma: log-space spread assumed before the data say otherwise (0.25 is a +/-28% 1-sigma band).
        prior_weight: how many observations' worth that assumption is worth.
        min_sigma / max_sigma: bounds of the predictive spread.
        max_relative_width: an observation whose detection interval is wider than this fraction of its
            midpoint says too little (a job seen done at its first query after hours) and is ignored.
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
    ) -> None:
        self.window = window
        self.prior_sigma = prior_sigma
        self.prior_weight = prior_weight
        self.min_sigma = min_sigma
        self.max_sigma = max_sigma
        self.max_relative_width = max_relative_width
        self._lock = threading.Lock()
        self._samples: dict[JobKind, deque[tuple[float, float]]] = {}
        self._cache: dict[JobKind, DurationEstimate | None] = {}
        self._watchers: dict[JobKind, set[Doorbell]] = {}

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
            samples.append((math.log(middle), extra_variance))
            self._cache.pop(kind, None)
            watchers = list(self._watchers.get(kind, ()))
        for watch in watchers:
            watch.notify()
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

    def _compute(self, samples: list[tuple[float, float]]) -> DurationEstimate:
        logs = [x for x, _ in samples]
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
        variance = variance * (1 + 1 / n) + statistics.fmean(v for _, v in samples) / n
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


_default_model = DurationModel()


def default_duration_model() -> DurationModel:
    """The process-wide model every wait uses unless given another."""
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
    "Doorbell",
    "DurationEstimate",
    "DurationModel",
    "JobKind",
    "SimulatedWait",
    "default_duration_model",
    "simulate_waits",
]
