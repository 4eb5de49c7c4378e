"""A process-wide cap on job queries per second, spent first on the queries likeliest to find their job done.

Hundreds of waits in one process, each polling every few seconds, add up to more queries per second than a
vendor account may make (a real API answers that with 429 for everyone). Every query of every
:class:`~kling_prefect.client.ShortAPIClient` in the process takes a token from one :class:`QueryCap` first
(``ShortAPIClient(max_queries_per_second=...)``, the credentials' ``max_queries_per_second``,
``SHORTAPI_MAX_QUERIES_PER_SECOND``, CLI ``--max-queries-per-second``; 10 by default, 0 for no cap). When
queries queue for tokens, they are served by their ``priority``: the chance that the query finds its job done,
evaluated when a token comes free (from the wait's duration estimate: a query kept waiting grows likelier to
find its job done, so none waits forever), a callback's query first. So the cap delays the queries that would
most likely find a job still running, and the detection delay it costs falls where it matters least.

Tokens come at ``rate`` per second with a burst of one, and a query whose token was granted is sent no sooner
than ``1 / rate`` after the previous one actually left (an event loop busy for a moment would otherwise send
the queries it was handed in a bunch): no second holds more than ``rate + 1`` queries.

Examples:
    ```python
    from kling_prefect.waiting.querycap import shared_query_cap

    cap = shared_query_cap(10.0)
    await cap.acquire(priority=0.8)  # returns once this query may be sent
    ```
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_QUERIES_PER_SECOND", "QueryCap", "shared_query_cap"]

DEFAULT_QUERIES_PER_SECOND = 10.0


Priority = float | Callable[[], float]


@dataclass
class _Waiter:
    order: int
    priority: Priority
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    abandoned: bool = field(default=False)

    def rank(self) -> tuple[float, int]:
        """Higher first, then first come (evaluated now: a callable priority changes while it waits)."""
        try:
            value = self.priority() if callable(self.priority) else self.priority
        except Exception:  # a broken estimate must not stall the queue
            value = 0.5
        return (float(value), -self.order)


class QueryCap:
    """At most ``rate`` queries per second (a token bucket of ``burst`` tokens), shared across threads and
    event loops; waiting queries are served highest ``priority`` first, then first come.

    Args:
        rate: tokens per second (> 0).
        burst: tokens that may accumulate while nobody queries (1: queries are spaced by ``1 / rate``).
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate: must be > 0 queries per second, got {rate}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._updated = time.monotonic()
        self._queue: list[_Waiter] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._dispatcher: threading.Thread | None = None
        self._last_release = -1.0
        self.granted = 0
        self.delayed = 0
        self.waited_seconds = 0.0

    def __repr__(self) -> str:
        return f"QueryCap(rate={self.rate:g}/s, queued={len(self._queue)})"

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, priority: Priority = 0.5) -> float:
        """Wait for a token; returns the seconds waited.

        ``priority`` is in [0, 1], higher goes first; a callable is evaluated (in the cap's thread) each time a
        token comes free, so the priority of a query kept waiting can grow.
        """
        loop = asyncio.get_running_loop()
        with self._condition:
            self._refill(time.monotonic())
            if not self._queue and self._tokens >= 1.0:
                self._tokens -= 1.0
                self.granted += 1
                granted = True
            else:
                granted = False
        if granted:
            return await self._paced(time.monotonic())
        with self._condition:
            waiter = _Waiter(next(self._order), priority, loop, loop.create_future())
            self._queue.append(waiter)
            self.delayed += 1
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="kling-query-cap", daemon=True)
                self._dispatcher.start()
            self._condition.notify()
        began = time.monotonic()
        try:
            await waiter.future
        except BaseException:
            with self._condition:
                waiter.abandoned = True
            raise
        return await self._paced(began)

    async def _paced(self, began: float) -> float:
        """Hold a granted query until ``1 / rate`` after the previous one left; the seconds waited in all."""
        while True:
            with self._condition:
                now = time.monotonic()
                pause = self._last_release + 1.0 / self.rate - now
                if pause <= 0:
                    self._last_release = now
                    waited = now - began
                    self.waited_seconds += waited
                    return waited
            await asyncio.sleep(pause)

    def _dispatch(self) -> None:
        with self._condition:
            while True:
                while not self._queue:
                    self._condition.wait()
                self._refill(time.monotonic())
                if self._tokens < 1.0:
                    self._condition.wait((1.0 - self._tokens) / self.rate)
                    continue
                self._queue = [w for w in self._queue if not w.abandoned]
                if not self._queue:
                    continue
                waiter = max(self._queue, key=_Waiter.rank)
                self._queue.remove(waiter)
                self._tokens -= 1.0
                self.granted += 1
                try:
                    waiter.loop.call_soon_threadsafe(_release, waiter.future)
                except RuntimeError:  # its loop has closed: nobody waits for this token
                    pass

    def stats(self) -> dict[str, float]:
        """Queries granted, how many had to wait, total seconds waited, queued now."""
        with self._condition:
            return {
                "granted": self.granted,
                "delayed": self.delayed,
                "waited_seconds": self.waited_seconds,
                "queued": len(self._queue),
            }


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_caps: dict[float, QueryCap] = {}
_caps_lock = threading.Lock()


def shared_query_cap(rate: float | None) -> QueryCap | None:
    """The process's cap for ``rate`` queries per second (one per rate, shared by every client asking for it);
    ``None`` for no cap (``rate`` of 0 or ``None``)."""
    if not rate:
        return None
    with _caps_lock:
        cap = _caps.get(float(rate))
        if cap is None:
            cap = _caps[float(rate)] = QueryCap(rate)
        return cap
