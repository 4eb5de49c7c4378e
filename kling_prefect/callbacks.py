"""Callbacks: the vendor POSTs to a job's ``callback_url`` when it ends; a wait takes that as a hint to query.

The documents show ``callback_url`` on every create but say nothing of the payload or of a signature, so a
callback is never trusted as a result: it only wakes the wait of its job, which queries the job at once and
believes the query. What callbacks buy is time and queries: a wait that expects one polls only as a fallback
(every ``PollPolicy.callback_fallback`` seconds, 60 s by default) in case a callback is lost, and still sees
its job's end within a fraction of a second of the callback.

How it works:

- :class:`CallbackReceiver` listens on ``listen`` (``host:port``, default ``127.0.0.1:0``: loopback, any free
  port) in a daemon thread, and hands out one URL per job, ``<public_url>/<token>``, the token random and
  unguessable (a stranger who POSTs to a known URL can only cause one extra query). ``public_url`` is where
  the vendor reaches the listener (a reverse proxy or tunnel for a real deployment); ``{port}`` in it is
  replaced by the port actually bound.
- On start it POSTs to itself through ``public_url``; if that does not arrive, callbacks are off for the
  process (waits poll as without them) and a warning says why.
- Trust is earned back job by job: a job seen ended by a fallback query whose callback never came is a
  *missed* callback. Past three misses that are also a quarter of the jobs ended, the receiver stops being
  :attr:`~CallbackReceiver.trusted` and every wait returns to the full poll schedule (callbacks that still
  come keep waking their waits).

Configure it on the :class:`~kling_prefect.credentials.ShortAPICredentials` block (``callback_url``,
``callback_listen``) or with ``SHORTAPI_CALLBACK_URL`` / ``SHORTAPI_CALLBACK_LISTEN``; tasks and flows then use
it for every job they create.

Examples:
    ```python
    from kling_prefect import KlingO3TextToVideo, ShortAPIClient
    from kling_prefect.callbacks import callback_receiver

    async def main():
        receiver = callback_receiver("http://127.0.0.1:{port}")  # the vendor must be able to reach this URL
        async with ShortAPIClient(callbacks=receiver) as client:
            created = await client.create_job(KlingO3TextToVideo(prompt="A kite over dunes"))
            job = await client.wait_for_job(created)  # it carries the callback URL
    ```
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx

from kling_prefect.waiting.doorbell import Doorbell

logger = logging.getLogger("kling_prefect.callbacks")

#: Largest callback body read (bytes); the body is never used, only drained so the connection can be reused.
MAX_BODY = 64 * 1024
#: Tokens remembered (issued and not yet ended); the oldest are forgotten beyond this.
MAX_TOKENS = 100_000
#: Missed callbacks tolerated before the receiver stops being trusted, and the share of ended jobs they may be.
MISSED_TOLERATED = 3
MISSED_SHARE = 0.25
SELF_TEST_TIMEOUT = 5.0


@dataclass
class _Token:
    rung: bool = False
    doorbells: set[Doorbell] | None = None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; ``ValueError`` naming the problem."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"callback_listen: expected host:port, got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"callback_listen: the port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"callback_listen: the port must be 0 to 65535, got {port}")
    return host, port


def check_public_url(value: str) -> str:
    """A callback base URL: http(s), a host, no query or fragment (the token is appended as a path segment)."""
    # The value itself is not echoed in errors: a URL can carry credentials (``https://user:password@host``).
    parts = urlsplit(value.strip().replace("{port}", "1"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("callback_url: must be an http(s) URL with a host, such as https://hooks.example.com/kling")
    if parts.query or parts.fragment:
        raise ValueError("callback_url: must not have a query or fragment (the job's token is added to its path)")
    return value.strip().rstrip("/")


class CallbackReceiver:
    """A listener for the vendor's callbacks, ringing the doorbell of the wait whose job the callback is for.

    Args:
        public_url: the base URL the vendor POSTs to (``{port}`` becomes the bound port).
        listen: ``host:port`` to bind (port 0: any free port).
        self_test: POST to ``public_url`` on start and refuse to be used if that does not arrive.
    """

    def __init__(self, public_url: str, listen: str = "127.0.0.1:0", *, self_test: bool = True) -> None:
        self._public_template = check_public_url(public_url)
        self.host, self.port = parse_listen(listen)
        self.self_test = self_test
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, _Token] = OrderedDict()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._trusted = False
        self.received = 0  # callbacks for tokens this receiver issued
        self.unknown = 0  # callbacks for tokens it does not know (forgotten, or another process's)
        self.confirmed = 0  # jobs that ended after their callback came
        self.missed = 0  # jobs seen ended by a query, their callback never having come

    def __repr__(self) -> str:
        state = "trusted" if self._trusted else ("listening" if self._server else "stopped")
        return f"CallbackReceiver({self.public_url!r}, {state})"

    # -- lifecycle

    @property
    def public_url(self) -> str:
        return self._public_template.replace("{port}", str(self.port))

    @property
    def shown_url(self) -> str:
        """``public_url`` as logs show it (a receiver whose URL is a secret shows only its start)."""
        return self.public_url

    @property
    def trusted(self) -> bool:
        """Whether waits may rely on callbacks and poll only as a fallback."""
        return self._trusted

    def start(self) -> CallbackReceiver:
        """Bind, serve in a daemon thread and (``self_test``) check ``public_url`` reaches it.

        Raises ``OSError`` when the address cannot be bound and ``RuntimeError`` when the self-test fails.
        """
        if self._server is not None:
            return self
        server_class = _ThreadingHTTPServerV6 if ":" in self.host else ThreadingHTTPServer
        server = server_class((self.host, self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="kling-callbacks", daemon=True)
        self._thread.start()
        if self.self_test:
            try:
                self._check_reachable()
            except Exception:
                self.close()
                raise
        self._trusted = True
        return self

    def _check_reachable(self) -> None:
        token = self._issue()
        url = f"{self.public_url}/{token}"
        try:
            httpx.post(url, json={"self_test": True}, timeout=SELF_TEST_TIMEOUT)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{self.public_url} is not reachable from this process: {type(exc).__name__}") from None
        finally:
            with self._lock:
                state = self._tokens.pop(token, None)
        if state is None or not state.rung:
            raise RuntimeError(f"a POST to {self.public_url} did not reach the listener on {self.host}:{self.port}")
        with self._lock:
            self.received -= 1  # the self-test is not a vendor callback

    def close(self) -> None:
        server, self._server = self._server, None
        self._trusted = False
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- tokens

    def _issue(self) -> str:
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._tokens[token] = _Token()
            while len(self._tokens) > MAX_TOKENS:
                self._tokens.popitem(last=False)
        return token

    def new_url(self) -> str:
        """A fresh callback URL for one job."""
        return f"{self.public_url}/{self._issue()}"

    def token_of(self, url: str | None) -> str | None:
        """The token of a URL this receiver's ``public_url`` issued (``None`` for any other URL)."""
        if not url or not url.startswith(self.public_url + "/"):
            return None
        token = url[len(self.public_url) + 1 :]
        return token if token and "/" not in token else None

    def key_of(self, url: str | None, job_id: str | None = None) -> str | None:
        """What a callback for this job is known by here: the token of ``url`` (``None``: not this receiver's)."""
        return self.token_of(url)

    @contextlib.contextmanager
    def subscribe(self, url: str | None, doorbell: Doorbell, job_id: str | None = None) -> Iterator[bool]:
        """Ring ``doorbell`` with a hint when the callback of ``url`` arrives (at once if it already has).

        Yields whether ``url`` is one of this receiver's (a resumed job's URL from another process is adopted).
        ``job_id``: the job's, for receivers that know a callback by its job (one URL for every job).
        """
        token = self.key_of(url, job_id)
        if token is None:
            yield False
            return
        with self._lock:
            state = self._tokens.get(token) or self._adopt(token)
            self._tokens[token] = state
            self._tokens.move_to_end(token)
            state.doorbells = (state.doorbells or set()) | {doorbell}
            rung = state.rung
        if rung:
            doorbell.hint()
        try:
            yield True
        finally:
            with self._lock:
                current = self._tokens.get(token)
                if current is not None and current.doorbells:
                    current.doorbells.discard(doorbell)

    def job_ended(self, url: str | None, job_id: str | None = None) -> None:
        """Count whether the job of ``url`` had its callback by the time a query saw it end; forget its token."""
        token = self.key_of(url, job_id)
        if token is None:
            return
        with self._lock:
            state = self._tokens.pop(token, None)
            if state is None:
                return
            if state.rung:
                self.confirmed += 1
                return
            self.missed += 1
            demote = (
                self._trusted
                and self.missed >= MISSED_TOLERATED
                and self.missed > MISSED_SHARE * (self.missed + self.confirmed)
            )
            if demote:
                self._trusted = False
                doorbells = [d for s in self._tokens.values() for d in (s.doorbells or ())]
        if demote:
            logger.warning(
                "%d of %d jobs ended without their callback reaching %s; back to polling on the full schedule",
                self.missed,
                self.missed + self.confirmed,
                self.public_url,
            )
            for doorbell in doorbells:
                doorbell.notify()  # re-plan: the fallback schedule no longer applies

    def _ring(self, token: str) -> bool:
        with self._lock:
            state = self._tokens.get(token)
            if state is None:
                self.unknown += 1
                self._remember_unknown(token)
                return False
            self.received += 1
            state.rung = True
            doorbells = list(state.doorbells or ())
        for doorbell in doorbells:
            doorbell.hint()
        return True

    def _adopt(self, token: str) -> _Token:
        """The state of a token this receiver did not issue (a resumed job's): not rung yet. Called locked."""
        return _Token()

    def _remember_unknown(self, token: str) -> None:
        """A callback for a token not known here: forgotten (a subclass may keep it for a wait to come). Locked."""

    def stats(self) -> dict[str, Any]:
        """Counters: callbacks received/unknown, jobs confirmed/missed, whether trusted, tokens outstanding."""
        with self._lock:
            return {
                "received": self.received,
                "unknown": self.unknown,
                "confirmed": self.confirmed,
                "missed": self.missed,
                "trusted": self._trusted,
                "outstanding": len(self._tokens),
            }


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(receiver: CallbackReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # seconds a connection may sit idle or trickle its request: no thread is held forever
        server_version = "kling-prefect-callbacks"
        sys_version = ""

        def _handle(self) -> None:
            length_text = self.headers.get("Content-Length") or "0"
            length = int(length_text) if length_text.isdigit() else -1
            if length < 0 or length > MAX_BODY or self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # a body we will not read: answer, then drop the connection
            elif length:
                self.rfile.read(length)  # drained, never parsed: the payload format is not documented
            token = urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[-1]
            known = receiver._ring(token)
            body = b'{"code":0}' if known else b'{"code":404,"message":"unknown callback"}'
            self.send_response(200 if known else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the default writes every hit to stderr
            logger.debug("callback %s", format % args)

    return Handler


#: What hears a job's callback: ``listen`` (this process listens on ``callback_listen``), ``relay`` (a relay
#: serves ``callback_url`` and this process hears it on Prefect's event stream, see
#: :mod:`kling_prefect.callback_stream`) or ``webhook`` (``callback_url`` is a Prefect Cloud webhook, heard on
#: the event stream too, see :mod:`kling_prefect.callback_webhook`).
CALLBACK_MODES = ("listen", "relay", "webhook")

_receivers: dict[tuple[str, str, str], CallbackReceiver | None] = {}
_receivers_lock = threading.Lock()


def check_mode(value: str) -> str:
    """``listen``, ``relay`` or ``webhook`` (stripped, lower case); ``ValueError`` otherwise."""
    mode = value.strip().lower()
    if mode not in CALLBACK_MODES:
        raise ValueError(f"callback_mode: must be listen, relay or webhook, got {value[:20]!r}")
    return mode


def callback_receiver(public_url: str, listen: str = "127.0.0.1:0", mode: str = "listen") -> CallbackReceiver | None:
    """The process's started receiver for (``public_url``, ``listen``, ``mode``), or ``None`` if it cannot work here.

    Started on first use and kept for the life of the process (flows and tasks in it share it). When the
    address cannot be bound (another process has it), the self-test fails or (``relay``) no relay answers the
    probe, a warning says why and ``None`` is returned from then on: waits then poll as if no callbacks were
    configured.
    """
    key = (check_public_url(public_url), listen.strip(), check_mode(mode))
    parse_listen(key[1])
    with _receivers_lock:
        if key in _receivers:
            return _receivers[key]
        receiver: CallbackReceiver | None
        try:
            if key[2] == "relay":
                from kling_prefect.callback_stream import StreamCallbacks

                receiver = StreamCallbacks(key[0]).start()
            elif key[2] == "webhook":
                from kling_prefect.callback_webhook import WebhookCallbacks

                receiver = WebhookCallbacks(key[0]).start()
            else:
                receiver = CallbackReceiver(key[0], key[1]).start()
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("callbacks are off for this process: %s", exc)
            receiver = None
        _receivers[key] = receiver
        return receiver


__all__ = ["CALLBACK_MODES", "CallbackReceiver", "callback_receiver", "check_mode", "check_public_url", "parse_listen"]
