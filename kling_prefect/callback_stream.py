"""Callbacks heard on Prefect's event stream: a worker of a pool whose callback URL is served by a relay.

:class:`StreamCallbacks` is a :class:`~kling_prefect.callbacks.CallbackReceiver` that listens to no port: it
hands out the relay's URLs (``<public_url>/<token>``) and keeps one subscription to Prefect's event stream,
filtered to ``kling.callback.received`` and the relay's heartbeat (see :mod:`kling_prefect.callback_relay`).
An event for one of its tokens rings the doorbell of that job's wait, which queries the job once; tokens,
subscriptions, misses and trust are the receiver's own logic.

Waits rely on callbacks (poll only as a fallback) while the stream is *live*: an event (a callback or the
relay's heartbeat) arrived within ``stale_after`` seconds. When the subscription drops or events stop, every
wait is told to re-plan and goes back to the full poll schedule, and the subscription is opened again (with
Prefect's backfill of about the last minute). A callback that comes before its wait began is not lost: the
token it names was issued here and is marked rung, and a token not known yet (a resumed job's) is kept for a
while (:data:`RECENT_UNKNOWN` of them).

Examples:
    ```python
    from kling_prefect import ShortAPICredentials

    # SHORTAPI_CALLBACK_URL=https://hooks.example.com/kling  (a relay: kling-prefect callbacks serve)
    # SHORTAPI_CALLBACK_MODE=relay                            (PREFECT_API_URL: the server the relay uses)
    credentials = ShortAPICredentials.from_env()
    client = credentials.get_client()  # its waits wake on the relay's events
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import httpx

from kling_prefect.callback_relay import (
    CALLBACK_HEARTBEAT,
    CALLBACK_RECEIVED,
    HEARTBEAT_SECONDS,
    PROBE_ANSWER,
    PROBE_PATH,
    TOKEN_PATTERN,
)
from kling_prefect.callbacks import SELF_TEST_TIMEOUT, CallbackReceiver, _Token

__all__ = ["RECENT_UNKNOWN", "StreamCallbacks"]

logger = logging.getLogger("kling_prefect.callbacks")

#: Callbacks for tokens not issued here that are remembered (for a wait that adopts the token later).
RECENT_UNKNOWN = 10_000
#: Longest pause between two attempts to subscribe.
MAX_BACKOFF = 30.0


class StreamCallbacks(CallbackReceiver):
    """Callbacks for this process's jobs, heard on Prefect's event stream (see the module documentation).

    Args:
        public_url: the relay's base URL (no ``{port}``: the relay's address is fixed).
        probe: GET ``<public_url>/kling-callback-probe`` on start and refuse to be used unless a relay answers.
        stale_after: seconds without any event after which the stream is taken for dead (at least three of the
            relay's heartbeat intervals, which its heartbeats carry).
        subscriber: ``subscriber()`` returning an async context manager that iterates events; default:
            Prefect's ``get_events_subscriber`` on the current ``PREFECT_API_URL``.

    Examples:
        ```python
        from kling_prefect import ShortAPIClient
        from kling_prefect.callback_stream import StreamCallbacks

        callbacks = StreamCallbacks("https://hooks.example.com/kling").start()
        client = ShortAPIClient(callbacks=callbacks)
        ```
    """

    def __init__(
        self,
        public_url: str,
        *,
        probe: bool = True,
        stale_after: float = 3 * HEARTBEAT_SECONDS,
        subscriber: Any = None,
    ) -> None:
        if "{port}" in public_url:
            raise ValueError(
                "callback_url: a relay's or a webhook's URL has no {port} (that is for a listener of this process)"
            )
        super().__init__(public_url, "127.0.0.1:0", self_test=probe)
        self.stale_after = stale_after
        # stale_after, or 3 beats of a relay that says it beats slower; None: quiet is normal (no heartbeats)
        self._quiet_limit: float | None = stale_after
        self._subscriber = subscriber
        self._live = False
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._seen: OrderedDict[Any, None] = OrderedDict()  # ids of the events heard, across subscriptions
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.subscriptions = 0  # subscriptions opened (1 + the times it resubscribed)
        self.events = 0  # events heard (callbacks and heartbeats)

    def __repr__(self) -> str:
        state = "live" if self.trusted else ("subscribing" if self._started else "stopped")
        return f"{type(self).__name__}({self.shown_url!r}, {state})"

    @property
    def public_url(self) -> str:
        return self._public_template

    @property
    def trusted(self) -> bool:
        """Whether waits may rely on callbacks now: not demoted by misses, and the stream live."""
        return self._trusted and self._live

    @property
    def live(self) -> bool:
        return self._live

    def start(self) -> StreamCallbacks:
        """Probe the relay (``probe``), then subscribe in a daemon thread. ``RuntimeError`` if no relay answers."""
        if self._started:
            return self
        if self.self_test:
            self._probe()
        self._trusted = True
        self._started = True
        self._stopping.clear()
        # The thread runs in a copy of this context: Prefect's settings (the API URL, its auth) are context-bound.
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._run,), name="kling-callback-stream", daemon=True)
        self._thread = thread
        thread.start()
        return self

    def _probe(self) -> None:
        url = f"{self.public_url}/{PROBE_PATH}"
        try:
            answer = httpx.get(url, timeout=SELF_TEST_TIMEOUT)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{self.public_url} is not reachable from this process: {type(exc).__name__}") from None
        try:
            relay = answer.status_code == 200 and answer.json() == PROBE_ANSWER
        except ValueError:
            relay = False
        if not relay:
            raise RuntimeError(f"{self.public_url} is not served by a callback relay (its probe answered otherwise)")

    def close(self) -> None:
        self._stopping.set()
        self._started = False
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._live = False  # closed on purpose: no warning
        self._trusted = False

    # -- the subscription

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if await self._subscribe_once():
                    backoff = 0.5  # it heard something: the next drop starts the backoff again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_live(False, f"the event stream failed ({type(exc).__name__}: {exc})")
            if self._stopping.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _subscribe_once(self) -> bool:
        """One subscription, until it ends or goes quiet; whether it heard any event."""
        heard = False
        async with self._open_subscriber() as subscriber:
            self.subscriptions += 1
            events = subscriber.__aiter__()
            self._subscribed()
            while not self._stopping.is_set():
                try:
                    event = await asyncio.wait_for(events.__anext__(), timeout=self._quiet_limit)
                except StopAsyncIteration:
                    self._set_live(False, "the event stream closed")
                    return heard
                except TimeoutError:
                    self._set_live(False, f"no event from the relay in {self._quiet_limit or 0:g} s")
                    return heard  # a quiet socket may be a dead one: subscribe again
                heard = True
                self._heard(event)
        return heard

    def _open_subscriber(self) -> Any:
        if self._subscriber is not None:
            return self._subscriber()
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        names = self._event_names()
        # Few reconnections inside Prefect's client: a quiet or failed stream is this class's to handle.
        return get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=names)), reconnection_attempts=2)

    def _heard(self, event: Any) -> None:
        with self._lock:
            # A new subscription replays about the last minute: an event heard before is not heard again.
            if event.id in self._seen:
                return
            self._seen[event.id] = None
            while len(self._seen) > RECENT_UNKNOWN:
                self._seen.popitem(last=False)
        self.events += 1
        if event.event == CALLBACK_HEARTBEAT:
            interval = (getattr(event, "payload", None) or {}).get("interval_seconds")
            if isinstance(interval, (int, float)) and 0 < interval <= 3600:
                self._quiet_limit = max(self.stale_after, 3 * float(interval))
        # Only a recent event says the stream and the relay are alive now; a replayed one from a relay that has
        # since died does not (the relay's clock dates it: a skew of seconds against stale_after is harmless).
        age = (datetime.now(UTC) - event.occurred).total_seconds()
        if self._quiet_limit is not None and age < self._quiet_limit:
            self._set_live(True, None)
        if event.event != CALLBACK_RECEIVED:
            return
        key = self._key_of_event(event)
        if key is not None:
            self._ring(key)

    # -- what a subclass may change (see kling_prefect.callback_webhook)

    def _event_names(self) -> list[str]:
        """The events the subscription is filtered to."""
        return [CALLBACK_RECEIVED, CALLBACK_HEARTBEAT]

    def _subscribed(self) -> None:
        """A subscription was opened (a relay's stream is live only once an event is heard)."""

    def _key_of_event(self, event: Any) -> str | None:
        """The key (here: the token) a ``kling.callback.received`` event rings, ``None`` for none of ours."""
        token = event.resource.get("kling.callback.token")
        return token if isinstance(token, str) and TOKEN_PATTERN.match(token) else None

    def _set_live(self, live: bool, why: str | None) -> None:
        with self._lock:
            if self._live == live:
                return
            self._live = live
            doorbells = [d for s in self._tokens.values() for d in (s.doorbells or ())]
        if live:
            logger.info("hearing callbacks from %s on Prefect's event stream", self.shown_url)
        else:
            logger.warning("callbacks from %s not heard (%s); waits poll on the full schedule", self.shown_url, why)
        for doorbell in doorbells:
            doorbell.notify()  # re-plan: whether the fallback schedule applies has changed

    # -- tokens of other processes

    def _adopt(self, token: str) -> _Token:
        rung = token in self._recent  # its callback came before its wait began
        self._recent.pop(token, None)
        return _Token(rung=rung)

    def _remember_unknown(self, token: str) -> None:
        self._recent[token] = None
        self._recent.move_to_end(token)
        while len(self._recent) > RECENT_UNKNOWN:
            self._recent.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        """The receiver's counters, with ``live``, ``subscriptions`` and ``events``."""
        return {**super().stats(), "live": self._live, "subscriptions": self.subscriptions, "events": self.events}


def wait_until_live(callbacks: StreamCallbacks, timeout: float) -> bool:
    """Block until ``callbacks`` hears the stream (``True``) or ``timeout`` seconds pass (``False``)."""
    deadline = time.monotonic() + timeout
    while not callbacks.live and time.monotonic() < deadline:
        time.sleep(0.02)
    return callbacks.live
