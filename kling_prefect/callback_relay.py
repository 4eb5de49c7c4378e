"""The callback relay: one public receiver for a pool of workers, publishing each callback as a Prefect event.

A worker's own listener (:class:`~kling_prefect.callbacks.CallbackReceiver`) needs a public URL per process. The
relay is the one public URL of a pool: the vendor POSTs a job's callback to ``<public_url>/<token>``, the relay
checks it and publishes ``kling.callback.received`` through the Prefect API it is configured with, and every
worker hears it on Prefect's event stream (:class:`~kling_prefect.callback_stream.StreamCallbacks`). The
worker that issued the token wakes the wait of its job, which queries the job once, as a direct callback does.

The token is random (issued by the worker at create time, when the job id is not known yet): the event's
resource is ``kling.callback.<token>``; a job id the body claims is only a related resource (``kling.job.<id>``,
role ``claimed-job``), never used to wake anything. What a request can do is bounded:

- only ``POST`` (or ``PUT``) to a last path segment of the token's shape (22 URL-safe characters) publishes;
- a body over :data:`MAX_BODY` bytes is refused (413) unread, a content type other than JSON, a form, plain
  text or none (:data:`CONTENT_TYPES`) with 415, a body taken for JSON that does not parse with 400: nothing
  published;
- past ``max_per_second`` callbacks a second (a burst of twice that) the rest are answered 429 with
  ``Retry-After``, unread and unpublished: a flood cannot swamp the Prefect API or the workers' streams, and a
  job whose callback was refused is found by its wait's polls;
- the relay keeps nothing: no state but counters, the body is never a result.

``GET <anything>/kling-callback-probe`` answers ``{"kling_callback_relay": 1}`` (a worker's check that its
``callback_url`` is served by a relay, not a dead URL or something else), ``GET /healthz`` answers ``ok``. The
relay also publishes ``kling.callback.heartbeat`` every :data:`HEARTBEAT_SECONDS`: workers that stop hearing
it go back to the full poll schedule. One log line per request.

Examples:
    As a service (``PREFECT_API_URL`` set to the server the workers use)::

        kling-prefect callbacks serve --listen 0.0.0.0:8788

    Inside an existing ASGI application (Starlette, FastAPI)::

        from kling_prefect.callback_relay import relay_app

        app.mount("/hooks/kling", relay_app())

    Inside a Prefect ``serve`` process (a thread of it)::

        from prefect import serve
        from kling_prefect.callback_relay import serve_in_thread

        serve_in_thread("0.0.0.0", 8788)
        serve(*deployments)
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

__all__ = [
    "CALLBACK_HEARTBEAT",
    "CALLBACK_RECEIVED",
    "HEARTBEAT_SECONDS",
    "MAX_BODY",
    "MAX_CALLBACKS_PER_SECOND",
    "PROBE_PATH",
    "TOKEN_PATTERN",
    "CallbackRelay",
    "RelayInThread",
    "relay_app",
    "serve",
    "serve_in_thread",
]

CALLBACK_RECEIVED = "kling.callback.received"
CALLBACK_HEARTBEAT = "kling.callback.heartbeat"
#: The last path segment a worker GETs to tell a relay from a dead URL.
PROBE_PATH = "kling-callback-probe"
PROBE_ANSWER = {"kling_callback_relay": 1}
#: Largest body accepted (bytes): the vendor's callback is a small JSON object.
MAX_BODY = 16 * 1024
#: Content types accepted (the vendor does not document its callback's): JSON, none, a form or plain text.
CONTENT_TYPES = ("", "application/json", "application/x-www-form-urlencoded", "text/plain")
#: A token as :func:`secrets.token_urlsafe(16) <secrets.token_urlsafe>` makes it.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
#: A job id the body may claim, kept as a related resource only when it has this shape.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Seconds between the relay's heartbeats (workers take ~3 missed beats for a dead relay or stream).
HEARTBEAT_SECONDS = 3.0
#: Callbacks accepted a second by default (a burst of twice as many): far above what a pool's jobs end at.
MAX_CALLBACKS_PER_SECOND = 200.0

logger = logging.getLogger("kling_prefect.callback_relay")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Publish = Callable[[str, dict[str, str], list[dict[str, str]], dict[str, Any]], None]


def _emit(event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    if emit_event(event=event, resource=resource, related=related, payload=payload) is None:
        raise RuntimeError("Prefect is not sending events here (is PREFECT_API_URL set?)")


class CallbackRelay:
    """The relay as an ASGI application (see the module documentation).

    Args:
        publish: ``publish(event, resource, related, payload)``; default: Prefect's ``emit_event`` (through the
            configured ``PREFECT_API_URL``). Tests pass a list's ``append``-like function.
        heartbeat_seconds: seconds between heartbeat events while serving (0: none).
        max_per_second: callbacks accepted a second (a burst of twice as many); the rest are answered 429.

    Examples:
        ```python
        import uvicorn
        from kling_prefect.callback_relay import CallbackRelay

        uvicorn.run(CallbackRelay(), host="0.0.0.0", port=8788)
        ```
    """

    def __init__(
        self,
        publish: Publish | None = None,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        max_per_second: float = MAX_CALLBACKS_PER_SECOND,
    ) -> None:
        if max_per_second <= 0:
            raise ValueError(f"max_per_second: must be above 0, got {max_per_second:g}")
        self.publish = publish if publish is not None else _emit
        self.heartbeat_seconds = heartbeat_seconds
        self.max_per_second = max_per_second
        self._allowance = 2 * max_per_second  # the bucket: full at start
        self._refilled = time.monotonic()
        self._flood_logged = 0.0
        self.instance = uuid.uuid4().hex[:12]
        self.counts: dict[str, int] = {"published": 0, "refused": 0, "probes": 0, "flooded": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- heartbeat

    def start_heartbeat(self) -> None:
        """Publish a heartbeat now and every ``heartbeat_seconds`` in a daemon thread (idempotent)."""
        if self.heartbeat_seconds <= 0 or self._heartbeat is not None:
            return
        self._heartbeat = threading.Thread(target=self._beat, name="kling-relay-heartbeat", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish(
                    CALLBACK_HEARTBEAT, {"prefect.resource.id": f"kling.callback-relay.{self.instance}"}, [], {}
                )
            except Exception as exc:  # the next beat may get through; workers poll meanwhile
                logger.warning("could not publish a heartbeat: %s", exc)
            self._stop.wait(self.heartbeat_seconds)

    # -- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        status, body, note = await self._handle(scope, receive)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 429:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if status == 429:
            if not self._flood_line_due():
                return  # a flood gets one line a second, not one a request
            note = f"{note} ({self.counts['flooded']} refused so far)"
        # One line a request; the token is cut to its first characters (it is what lets a callback wake a wait).
        logger.info(
            "%s %s %d %s %.1f ms",
            scope.get("method", "?"),
            _redacted(scope.get("path", "")),
            status,
            note,
            (time.monotonic() - started) * 1000,
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_heartbeat()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop_heartbeat()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, str]:
        method = scope.get("method", "")
        path = str(scope.get("path", "")).rstrip("/")
        last = path.rsplit("/", 1)[-1]
        if method in ("GET", "HEAD"):
            if path == "/healthz" or path.endswith("/healthz"):
                return 200, b'"ok"', "health"
            if last == PROBE_PATH:
                self._count("probes")
                return 200, json.dumps(PROBE_ANSWER).encode(), "probe"
            return self._refuse(404, "not found")
        if method not in ("POST", "PUT"):
            return self._refuse(405, "method not allowed")
        if not TOKEN_PATTERN.match(last):
            return self._refuse(404, "unknown callback")
        if not self._take():
            self._count("flooded")
            return self._refuse(429, "too many callbacks")  # refused unread
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        length_text = headers.get("content-length")
        if length_text is not None and (not length_text.isdigit() or int(length_text) > MAX_BODY):
            return self._refuse(413, "body too large")  # refused unread
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            return self._refuse(415, "content type")
        body = await _read_body(receive, MAX_BODY)
        if body is None:
            return self._refuse(413, "body too large")
        claimed = None
        if content_type == "application/x-www-form-urlencoded":
            claimed = _claimed_job_id(dict(parse_qsl(body.decode("utf-8", "replace"))))
        elif body.strip():
            try:
                claimed = _claimed_job_id(json.loads(body))
            except ValueError:
                if content_type != "text/plain":  # declared (or taken for) JSON, and it is not
                    return self._refuse(400, "body is not JSON")
        resource = {"prefect.resource.id": f"kling.callback.{last}", "kling.callback.token": last}
        related = []
        if claimed is not None:
            # What the body says, unverified: for people reading events, never to wake a wait.
            related.append({"prefect.resource.id": f"kling.job.{claimed}", "prefect.resource.role": "claimed-job"})
        try:
            self.publish(CALLBACK_RECEIVED, resource, related, {"relay": self.instance})
        except Exception as exc:
            logger.warning("could not publish a callback: %s", exc)
            return self._refuse(503, "not published")  # the vendor may retry; the waits' polls catch it anyway
        self._count("published")
        return 200, b'{"code":0}', "published"

    def _refuse(self, status: int, why: str) -> tuple[int, bytes, str]:
        self._count("refused")
        return status, json.dumps({"code": status, "message": why}).encode(), why

    def _take(self) -> bool:
        """One callback from the bucket (refilled at ``max_per_second``, holding twice that), if there is one."""
        with self._lock:
            now = time.monotonic()
            capacity = 2 * self.max_per_second
            self._allowance = min(capacity, self._allowance + (now - self._refilled) * self.max_per_second)
            self._refilled = now
            if self._allowance < 1:
                return False
            self._allowance -= 1
            return True

    def _flood_line_due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._flood_logged < 1.0:
                return False
            self._flood_logged = now
            return True

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or ``None`` past ``limit`` bytes (a chunked body without a length is read to there)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _claimed_job_id(body: Any) -> str | None:
    value = body.get("job_id", body.get("task_id")) if isinstance(body, dict) else None
    if isinstance(body, dict) and value is None and isinstance(body.get("data"), dict):
        value = body["data"].get("job_id", body["data"].get("task_id"))
    return value if isinstance(value, str) and JOB_ID_PATTERN.match(value) else None


def _redacted(path: str) -> str:
    head, _, last = path.rstrip("/").rpartition("/")
    return f"{head}/{last[:4]}..." if TOKEN_PATTERN.match(last) else path[:200]


def relay_app(
    publish: Publish | None = None,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    max_per_second: float = MAX_CALLBACKS_PER_SECOND,
) -> CallbackRelay:
    """A :class:`CallbackRelay` to mount in an ASGI application or serve with any ASGI server.

    Examples:
        ```python
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from kling_prefect.callback_relay import relay_app

        app = Starlette(routes=[Mount("/hooks/kling", app=relay_app())])
        ```
    """
    return CallbackRelay(publish, heartbeat_seconds=heartbeat_seconds, max_per_second=max_per_second)


def serve(
    host: str,
    port: int,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    max_per_second: float = MAX_CALLBACKS_PER_SECOND,
) -> None:
    """Serve a relay on ``host:port`` until interrupted (uvicorn; events through ``PREFECT_API_URL``)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    relay = CallbackRelay(heartbeat_seconds=heartbeat_seconds, max_per_second=max_per_second)
    logger.info("relaying callbacks from %s:%d to Prefect's event stream", host, port)
    try:
        uvicorn.run(relay, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    finally:
        relay.stop_heartbeat()
        _flush_events()


class RelayInThread:
    """A relay served by uvicorn in a daemon thread of this process; see :func:`serve_in_thread`."""

    def __init__(self, relay: CallbackRelay, host: str, port: int) -> None:
        import uvicorn

        self.relay = relay
        self.host, self.port = host, port
        config = uvicorn.Config(relay, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="kling-callback-relay", daemon=True)

    def start(self, timeout: float = 20.0) -> RelayInThread:
        """Start serving; ``RuntimeError`` if it is not listening within ``timeout`` seconds (port taken...)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the callback relay could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        logger.info("relaying callbacks from %s:%d to Prefect's event stream", self.host, self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (the heartbeat stops with the ASGI lifespan) and send the events still queued."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout)
        self.relay.stop_heartbeat()
        _flush_events()

    def __enter__(self) -> RelayInThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    host: str,
    port: int,
    *,
    relay: CallbackRelay | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    max_per_second: float = MAX_CALLBACKS_PER_SECOND,
) -> RelayInThread:
    """Serve a relay on ``host:port`` from a daemon thread of this process (a Prefect ``serve`` process, a
    worker's own) until :meth:`RelayInThread.stop` or the process ends; returns it started. Its one line a
    request goes to the ``kling_prefect.callback_relay`` logger at INFO: the process's logging configuration
    decides where (``logging.basicConfig(level=logging.INFO)`` shows them on stderr).

    Args:
        host, port: the address to bind (behind the public URL the vendor calls).
        relay: the application to serve (default: a new :class:`CallbackRelay` with the options below).
        heartbeat_seconds, max_per_second: as for :class:`CallbackRelay`.

    Examples:
        ```python
        from kling_prefect.callback_relay import serve_in_thread

        with serve_in_thread("127.0.0.1", 8788) as running:
            ...  # callbacks to http://127.0.0.1:8788/<token> become Prefect events meanwhile
        ```
    """
    app = relay or CallbackRelay(heartbeat_seconds=heartbeat_seconds, max_per_second=max_per_second)
    return RelayInThread(app, host, port).start()


def _flush_events() -> None:
    """Send the events still queued before the process ends."""
    try:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=5)
    except Exception as exc:  # best effort at exit
        logger.debug("could not flush events: %s", exc)
