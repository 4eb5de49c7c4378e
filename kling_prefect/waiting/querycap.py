"""A process-wide cap on job queries per second, spent first on the queries likeliest to find their job done;
optionally one rate for every process that shares a Prefect server.

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

**One rate for the whole account** (``kling-prefect setup --max-queries-per-second N``): N processes with a
cap of 10 each make N x 10 queries a second with one key. ``setup`` creates a Prefect rate limit,
:data:`DEFAULT_QUERY_RATE_LIMIT` (``SHORTAPI_QUERY_RATE_LIMIT`` names another), with ``slot_decay_per_second``
= N and a burst of :func:`shared_burst` (N). A cap with a ``shared_limit`` name looks that limit up on the
Prefect server the process is configured with (``PREFECT_API_URL``; never the temporary server, which no
other process shares) the first time it is used, and again a minute later on every later use. While it exists,
each query needs a token of the shared limit as well as one of the process's own cap (the stricter wins):
the cap takes them from the server a few at a time (one Prefect API call for up to 5 queries, only while
queries wait, so no process sits on tokens others could use) and hands them out locally by priority as
above. No limit of that name, no Prefect API, or the API unreachable for 10 s: the process's own cap alone, as
before (the last logged once, as a warning). Across the processes, at most ``5 x N + burst`` queries leave in
any 5 seconds.

Examples:
    ```python
    from kling_prefect.waiting.querycap import shared_query_cap

    cap = shared_query_cap(10.0)
    await cap.acquire(priority=0.8)  # returns once this query may be sent
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_QUERIES_PER_SECOND",
    "DEFAULT_QUERY_RATE_LIMIT",
    "ENV_QUERY_RATE_LIMIT",
    "QueryCap",
    "shared_burst",
    "shared_query_cap",
]

DEFAULT_QUERIES_PER_SECOND = 10.0
#: The Prefect rate limit every process of one Prefect server shares, when it exists (``kling-prefect setup``).
DEFAULT_QUERY_RATE_LIMIT = "kling-job-queries"
#: Names another shared limit than :data:`DEFAULT_QUERY_RATE_LIMIT`.
ENV_QUERY_RATE_LIMIT = "SHORTAPI_QUERY_RATE_LIMIT"
#: Most shared tokens taken with one Prefect API call.
TAKE_AT_MOST = 5
#: Seconds between looks at the shared limit (it may be created, changed or removed while processes run).
LOOKUP_EVERY = 60.0
#: Seconds after which a Prefect API that does not answer counts as unreachable (the process's own cap then).
PREFECT_TIMEOUT = 10.0
#: Seconds until a process that found the Prefect API unreachable looks again.
RETRY_UNREACHABLE = 10.0
#: Seconds a shared token may wait for a query (one left over by a query that gave up is dropped then).
TOKEN_SECONDS = 1.0

_log = logging.getLogger("kling_prefect.waiting")

Priority = float | Callable[[], float]
Mode = Literal["unknown", "local", "shared"]


def shared_burst(rate: float) -> int:
    """The ``limit`` of a shared rate limit of ``rate`` queries a second: half a second's tokens, 1 to 5.

    Small, because it is what may leave on top of the rate in any window; and the most a process takes at once.

    Examples:
        ```python
        shared_burst(10)  # 5: at most 5 x 10 + 5 = 55 queries in any 5 s
        shared_burst(1)  # 1
        ```
    """
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"rate: must be a finite number > 0, got {rate}")
    return max(1, min(TAKE_AT_MOST, math.ceil(rate / 2)))


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
    event loops; waiting queries are served highest ``priority`` first, then first come. With ``shared_limit``,
    also at most what that Prefect rate limit allows, when it exists (see the module documentation).

    Args:
        rate: tokens per second (> 0); ``None``: no cap of the process's own (the shared limit alone).
        burst: tokens that may accumulate while nobody queries (1: queries are spaced by ``1 / rate``).
        shared_limit: the name of a Prefect rate limit to share with other processes, when it exists.
    """

    def __init__(self, rate: float | None, burst: float = 1.0, *, shared_limit: str | None = None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate: must be > 0 queries per second, got {rate}")
        if rate is None and not shared_limit:
            raise ValueError("rate: None (no cap of its own) needs a shared_limit")
        self.rate = None if rate is None else float(rate)
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
        self._shared = _SharedRate(shared_limit, self) if shared_limit else None

    def __repr__(self) -> str:
        rate = "none" if self.rate is None else f"{self.rate:g}/s"
        shared = f", shared={self._shared!r}" if self._shared is not None else ""
        return f"QueryCap(rate={rate}, queued={len(self._queue)}{shared})"

    def _refill(self, now: float) -> None:
        if self.rate is None:
            self._tokens = self.burst
            return
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _pending(self) -> int:
        """Queries waiting for a token (under the condition)."""
        return sum(1 for w in self._queue if not w.abandoned)

    async def acquire(self, priority: Priority = 0.5) -> float:
        """Wait for a token; returns the seconds waited.

        ``priority`` is in [0, 1], higher goes first; a callable is evaluated (in the cap's thread) each time a
        token comes free, so the priority of a query kept waiting can grow.
        """
        loop = asyncio.get_running_loop()
        with self._condition:
            now = time.monotonic()
            self._refill(now)
            if self._shared is not None:
                self._shared.note_caller()
            shared_ready = self._shared is None or self._shared.ready(now)
            if not self._queue and self._tokens >= 1.0 and shared_ready:
                if self._shared is not None:
                    self._shared.spend()
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
            self._condition.notify_all()
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
        spacing = 0.0 if self.rate is None else 1.0 / self.rate
        while True:
            with self._condition:
                now = time.monotonic()
                pause = self._last_release + spacing - now
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
                now = time.monotonic()
                self._refill(now)
                if self._tokens < 1.0:
                    assert self.rate is not None  # without a rate of its own the bucket is always full
                    self._condition.wait((1.0 - self._tokens) / self.rate)
                    continue
                self._queue = [w for w in self._queue if not w.abandoned]
                if not self._queue:
                    continue
                if self._shared is not None and not self._shared.ready(now):
                    # The shared limit's answer (or its tokens) is coming from the Prefect server: wait for it.
                    self._condition.notify_all()
                    self._condition.wait(TOKEN_SECONDS)
                    continue
                waiter = max(self._queue, key=_Waiter.rank)
                self._queue.remove(waiter)
                if self._shared is not None:
                    self._shared.spend()
                self._tokens -= 1.0
                self.granted += 1
                try:
                    waiter.loop.call_soon_threadsafe(_release, waiter.future)
                except RuntimeError:  # its loop has closed: nobody waits for this token
                    pass

    def stats(self) -> dict[str, Any]:
        """Queries granted, how many had to wait, total seconds waited, queued now; with a shared limit, how
        it stands (``shared``: ``unknown``, ``local`` or ``shared``), the shared tokens taken and with how many
        Prefect API calls that granted some (``shared_takes``)."""
        with self._condition:
            stats: dict[str, Any] = {
                "granted": self.granted,
                "delayed": self.delayed,
                "waited_seconds": self.waited_seconds,
                "queued": len(self._queue),
            }
            if self._shared is not None:
                stats.update(self._shared.stats())
            return stats


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _SharedRate:
    """The Prefect rate limit ``name`` as a source of tokens for one :class:`QueryCap`.

    Every field is guarded by the cap's condition. The Prefect API is called from a thread of its own with an
    event loop of its own (``kling-query-rate``), so callers on any loop or thread, sync flows included, only
    ever wait on the condition; the settings it uses are the latest caller's (a test harness's or a flow's
    temporary settings live in a context variable, which a new thread would not see).
    """

    def __init__(self, name: str, cap: QueryCap) -> None:
        self.name = name
        self._cap = cap
        self._condition = cap._condition
        self.mode: Mode = "unknown"
        self._lookup_at = 0.0  # when the limit is next looked up (on the first query after it)
        self._lookup_wanted = True
        self._burst = 1
        self._tokens: list[float] = []  # when each token taken from the server stops being usable
        self._feeder: threading.Thread | None = None
        self._settings: Any = None
        self._warned = False
        self.taken = 0
        self.takes = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"{self.name!r}: {self.mode}"

    def ready(self, now: float) -> bool:
        """Whether a query may go as far as the shared limit is concerned (under the condition); starts a look
        at the limit when one is due, and the feeder thread the first time."""
        if now >= self._lookup_at and not self._lookup_wanted:
            self._lookup_wanted = True
            self._condition.notify_all()
        if self._feeder is None:
            self._feeder = threading.Thread(target=self._feed, name="kling-query-rate", daemon=True)
            self._feeder.start()
        if self.mode == "local":
            return True
        if self.mode == "unknown":
            return False
        self._tokens = [until for until in self._tokens if until > now]
        return bool(self._tokens)

    def note_caller(self) -> None:
        """Keep the calling thread's Prefect settings for the feeder (under the condition, in :meth:`acquire`)."""
        settings = _caller_settings()
        if settings is not None:
            self._settings = settings

    def spend(self) -> None:
        """One query goes (under the condition, after :meth:`ready`)."""
        if self.mode == "shared":
            self._tokens.pop(0)

    def stats(self) -> dict[str, Any]:
        return {
            "shared": self.mode,
            "shared_limit": self.name,
            "shared_tokens": self.taken,
            "shared_takes": self.takes,
            "shared_refusals": self.refused,
        }

    # -- the feeder thread

    def _want(self) -> int:
        """Tokens to take now (under the condition): for the queries waiting, a few at most, and no more than
        the process's own cap lets go within half a second (tokens taken ahead are never held for long)."""
        if self.mode != "shared":
            return 0
        now = time.monotonic()
        self._tokens = [until for until in self._tokens if until > now]
        missing = self._cap._pending() - len(self._tokens)
        if missing <= 0:
            return 0
        most = self._burst
        if self._cap.rate is not None:
            most = min(most, max(1, int(self._cap.rate / 2)))
        return min(missing, most)

    def _feed(self) -> None:
        loop = asyncio.new_event_loop()
        calls = _PrefectCalls()
        try:
            while True:
                with self._condition:
                    while not (self._lookup_wanted or self._want()):
                        self._condition.wait()
                    lookup, count, settings = self._lookup_wanted, self._want(), self._settings
                try:
                    if lookup:
                        loop.run_until_complete(self._lookup(calls, settings))
                    else:
                        loop.run_until_complete(self._take(calls, settings, count))
                except Exception as exc:  # whatever the Prefect client raised: never the end of the queries
                    loop.run_until_complete(calls.close())
                    self._unreachable(f"{type(exc).__name__}: {exc}"[:200])
        finally:  # pragma: no cover - a daemon thread: ends only with the interpreter
            loop.close()

    def _settle(self, mode: Mode, *, burst: int = 1, again_in: float = LOOKUP_EVERY) -> Mode:
        """Set the mode (and when to look again); the mode before."""
        with self._condition:
            before = self.mode
            self.mode, self._burst = mode, burst
            self._lookup_wanted = False
            self._lookup_at = time.monotonic() + again_in
            if mode != "shared":
                self._tokens.clear()
            self._condition.notify_all()
        if mode == "shared" and before != "shared":
            self._warned = False  # the next outage is worth a warning again
            _log.info(
                "job queries: sharing the Prefect rate limit %r with every process of this Prefect server "
                "(taking up to %d tokens at a time; this process's own cap applies as well)",
                self.name,
                burst,
            )
        return before

    def _gone(self, *, again_in: float = LOOKUP_EVERY) -> None:
        """No usable limit of that name (any more): the process's own cap alone."""
        if self._settle("local", again_in=again_in) == "shared":
            _log.info("job queries: the Prefect rate limit %r is gone; this process's own cap alone", self.name)

    def _unreachable(self, why: str) -> None:
        """The Prefect API did not answer: the process's own cap alone until the next look, logged once per
        outage as a warning (a server that stays away would otherwise fill the log)."""
        self._settle("local", again_in=RETRY_UNREACHABLE)
        log = _log.debug if self._warned else _log.warning
        self._warned = True
        log(
            "job queries: the Prefect API did not answer (%s), so this process keeps to its own query cap, not to "
            "the shared rate limit %r, until it does (tried again every %g s)",
            why,
            self.name,
            RETRY_UNREACHABLE,
        )

    async def _lookup(self, calls: _PrefectCalls, settings: Any) -> None:
        try:
            burst = await calls.read_limit(self.name, settings)
        except _PrefectUnavailable as exc:
            self._unreachable(str(exc))
            return
        if burst is None:
            self._gone()
        else:
            self._settle("shared", burst=burst)

    async def _take(self, calls: _PrefectCalls, settings: Any, count: int) -> None:
        while count > 0:
            try:
                granted, retry_after = await calls.take(self.name, count, settings)
            except _PrefectUnavailable as exc:
                self._unreachable(str(exc))
                return
            if granted is None:  # removed or deactivated since the last look: look again now
                self._gone(again_in=0.0)
                return
            if granted:
                with self._condition:
                    until = time.monotonic() + TOKEN_SECONDS
                    self._tokens.extend([until] * count)
                    self.taken += count
                    self.takes += 1
                    self._condition.notify_all()
                return
            with self._condition:
                self.refused += 1
            # Other processes have the tokens for now: the server says when enough will have come back.
            await asyncio.sleep(retry_after)
            with self._condition:
                count = self._want()


class _PrefectUnavailable(Exception):
    """The Prefect API did not answer in time, or not as an API."""


class _PrefectCalls:
    """The two Prefect API calls of the shared rate, on one client kept open in the feeder's event loop (a new
    one when the API's settings change or a call failed), each bounded by :data:`PREFECT_TIMEOUT`.

    The increment is called directly, not through ``prefect.concurrency.asyncio.rate_limit``: that one retries
    a refused take in Prefect's own thread until it succeeds, and a dropped connection with Prefect's client
    backoff (about a minute), while here a take stops as soon as no query waits any more, and a server that is
    away means the process's own cap within seconds.
    """

    def __init__(self) -> None:
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._api: Any = None

    async def close(self) -> None:
        stack, self._stack, self._client, self._api = self._stack, None, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def _call(self, settings: Any, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """``call(client)`` under ``settings``; :class:`_PrefectUnavailable` when the server is not there."""
        import httpx
        from prefect.client.orchestration import get_client

        try:
            with settings.model_copy():
                if self._client is None or self._api != settings.settings.api:
                    await self.close()
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(get_client())
                    self._stack, self._api = stack, settings.settings.api
                return await asyncio.wait_for(call(self._client), PREFECT_TIMEOUT)
        except (httpx.TransportError, TimeoutError, OSError) as exc:
            await self.close()  # a new connection next time
            raise _PrefectUnavailable(type(exc).__name__) from None

    async def read_limit(self, name: str, settings: Any) -> int | None:
        """The limit's burst when ``name`` is a usable rate limit on the configured Prefect server, else
        ``None`` (no Prefect API configured, no such limit, inactive, or without slot decay)."""
        import httpx
        from prefect.exceptions import ObjectNotFound

        settings = settings if settings is not None else _global_settings()
        if settings is None or not settings.settings.api.url:
            return None  # no server shared with other processes (a temporary one is this process's own)

        async def read(client: Any) -> Any:
            try:
                return await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return None

        try:
            limit = await self._call(settings, read)
        except httpx.HTTPStatusError as exc:
            raise _PrefectUnavailable(f"HTTP {exc.response.status_code}") from None
        if limit is None or not limit.active or limit.limit < 1:
            return None
        if limit.slot_decay_per_second <= 0:
            if name not in _not_rate_limits:
                _not_rate_limits.add(name)
                _log.warning("job queries: the Prefect limit %r has no slot decay, so it is not a rate limit", name)
            return None
        return int(limit.limit)

    async def take(self, name: str, count: int, settings: Any) -> tuple[bool | None, float]:
        """Take ``count`` tokens: ``(True, 0)``; refused for now: ``(False, seconds to wait)``; the limit is
        gone (or no longer a rate limit): ``(None, 0)``."""
        import httpx

        settings = settings if settings is not None else _global_settings()
        if settings is None:
            return None, 0.0

        async def increment(client: Any) -> Any:
            return await client.increment_concurrency_slots(names=[name], slots=count, mode="rate_limit")

        try:
            response = await self._call(settings, increment)
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code == 423:
                try:
                    return False, min(max(float(exc.response.headers.get("Retry-After", 1.0)), 0.0), 30.0)
                except ValueError:
                    return False, 1.0
            if code in (404, 422):
                return None, 0.0
            raise _PrefectUnavailable(f"HTTP {code}") from None
        try:
            limits = response.json()  # the limits that gave slots: none when it is gone or inactive
        except ValueError:
            raise _PrefectUnavailable("an answer that is not JSON") from None
        return (True, 0.0) if limits else (None, 0.0)


_not_rate_limits: set[str] = set()


def _caller_settings() -> Any:
    """The Prefect settings in effect for the caller (a context variable), when Prefect is imported."""
    context = sys.modules.get("prefect.context")
    return None if context is None else context.SettingsContext.get()


def _global_settings() -> Any:
    """Prefect's settings when no caller had Prefect imported: only worth importing it for a configured API."""
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.context import SettingsContext

    return SettingsContext.get()


_caps: dict[tuple[float, str], QueryCap] = {}
_caps_lock = threading.Lock()


def shared_query_cap(rate: float | None, shared_limit: str | None = None) -> QueryCap | None:
    """The process's cap for ``rate`` queries per second (one per rate and shared limit, shared by every client
    asking for it); ``rate`` of 0 or ``None``: no cap of the process's own. ``None`` when there is no cap at all
    (no rate and no ``shared_limit``).

    ``shared_limit``: the Prefect rate limit to share with every process of the Prefect server when it exists
    (:data:`DEFAULT_QUERY_RATE_LIMIT`; ``""``: none).
    """
    if not rate and not shared_limit:
        return None
    key = (float(rate or 0.0), shared_limit or "")
    with _caps_lock:
        cap = _caps.get(key)
        if cap is None:
            cap = _caps[key] = QueryCap(float(rate) if rate else None, shared_limit=shared_limit or None)
        return cap
