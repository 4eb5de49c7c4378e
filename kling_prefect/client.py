"""The ShortAPI job client: create a job, query it, wait for it, download its result.

:class:`ShortAPIClient` is async; :class:`SyncShortAPIClient` is its blocking twin with the same methods.
Every HTTP response goes through one function, :func:`interpret_response`, which turns it into the ``data``
object or a typed error from :mod:`kling_prefect.exceptions`.

Money safety: ``create_job`` is **never** retried. A failure after the request was sent raises
:class:`~kling_prefect.exceptions.JobMayHaveBeenCreated`. Queries and downloads are retried on 429, 5xx,
malformed bodies, resets and timeouts, with capped exponential backoff, full jitter and ``Retry-After``.

Examples:
    ```python
        from kling_prefect import KlingO3TextToVideo, ShortAPIClient

    async def main():
        async with ShortAPIClient() as client:  # SHORTAPI_KEY / SHORTAPI_BASE_URL from the environment
            created = await client.create_job(KlingO3TextToVideo(prompt="A red kite over dunes"))
            job = await client.wait_for_job(created.job_id, timeout=1800)
            await client.download(job.video_url, "kite.mp4", job_id=job.job_id)

    asyncio.run(main())
    ```
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import inspect
import json
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import httpx
from pydantic import SecretStr

from kling_prefect.credentials import DEFAULT_BASE_URL, ENV_BASE_URL, ENV_KEY, redact
from kling_prefect.exceptions import (
    AuthenticationFailed,
    DownloadFailed,
    JobFailed,
    JobMayHaveBeenCreated,
    JobNotFound,
    JobTimedOut,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ShortAPIError,
    TransientError,
    UnknownJobStatus,
    VendorUnavailable,
)
from kling_prefect.models import KlingRequest
from kling_prefect.pricing import estimate_cost
from kling_prefect.waiting import Doorbell, DurationEstimate, DurationModel, JobKind, default_duration_model

if TYPE_CHECKING:
    from kling_prefect.callbacks import CallbackReceiver

logger = logging.getLogger("kling_prefect.client")

CREATE_PATH = "/api/v1/job/create"
QUERY_PATH = "/api/v1/job/query"
RAW_LIMIT = 4000  # characters of a non-JSON body kept on an error
DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 1024**3
CHUNK = 1024 * 1024
MAX_PLAUSIBLE_AMOUNT = Decimal(100_000)  # USD for one job; anything above is a malformed answer, not a charge

JobState = Literal["queued", "processing", "succeeded", "failed", "unknown"]
_STATES: dict[int, JobState] = {0: "queued", 1: "processing", 2: "succeeded", 3: "failed"}

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CreatedJob:
    """A job the vendor accepted: its id, what the vendor says it charged, and our estimate.

    ``created_at`` is ``time.time()`` when the vendor's answer arrived (the job existed by then).
    ``callback_url`` is the URL the vendor was given (pass it to :meth:`ShortAPIClient.wait_for_job`).
    """

    job_id: str
    model: str
    amount: Decimal | None
    estimated_cost: Decimal
    video_seconds: int
    created_at: float
    raw: dict[str, Any] = field(repr=False, compare=False)
    callback_url: str | None = None


@dataclass(frozen=True)
class Job:
    """One answer of ``job/query``.

    ``status`` is the vendor's raw value; ``state`` is what it means (``unknown`` for values the documents
    do not define, which are terminal). ``video_urls`` is filled when the job succeeded.
    """

    job_id: str
    status: Any
    state: JobState
    video_urls: tuple[str, ...] = ()
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state in ("succeeded", "failed", "unknown")

    @property
    def video_url(self) -> str:
        """The first result URL (raises :class:`UnknownJobStatus` when the job has none)."""
        if not self.video_urls:
            raise UnknownJobStatus(
                f"job is {self.state} and has no result URL",
                job_id=self.job_id,
                status=self.status,
                raw=self.raw,
            )
        return self.video_urls[0]


# --------------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, for idempotent calls.

    Attempt ``n`` (from 0) waits a uniform random time in ``[0, min(max_delay, base_delay * 2**n)]``, but at
    least the server's ``Retry-After`` (itself capped by ``max_retry_after``).
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        backoff = (rng or random).uniform(0, cap)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_retry_after))
        return backoff


@dataclass(frozen=True)
class PollPolicy:
    """When to query a running job.

    Two schedules:

    - :meth:`learned_interval` (what :meth:`ShortAPIClient.wait_for_job` uses when given the job's ``kind``):
      from what jobs of that kind took in this process (:mod:`kling_prefect.waiting`); geometric growth from
      ``min_interval`` while nothing is known (the ``cold_*`` fields); ``late_budget``, ``max_skip`` and the
      ``overdue_*`` fields shape it. ``min_interval`` is then the detection delay aimed at while completion is likely.
    - :meth:`next_interval`, with an ``expected`` duration given by the caller (seconds from creation):
      nothing is queried until ``first_check`` of it has passed (the job cannot be done yet); then intervals
      shrink as the expected end nears, down to ``min_interval``; past it they grow again slowly, up to
      ``max_interval``.

    A wait whose job has a callback URL from a trusted :class:`~kling_prefect.callbacks.CallbackReceiver`
    queries every ``callback_fallback`` seconds instead (:meth:`fallback_interval`), and at once when the
    callback comes.

    Each interval gets +/- ``jitter`` so many concurrent waits do not query in lockstep.
    """

    min_interval: float = 2.0
    max_interval: float = 30.0
    first_check: float = 0.8
    growth: float = 1.5
    jitter: float = 0.2
    late_budget: float = 0.01
    max_skip: float = 60.0
    overdue_quantile: float = 0.995
    overdue_growth: float = 0.1
    cold_growth: float = 2.0
    cold_max_interval: float = 20.0
    callback_fallback: float = 60.0

    @classmethod
    def scaled(cls, min_interval: float, max_interval: float | None = None, **overrides: Any) -> PollPolicy:
        """The default policy with every duration scaled so that its smallest interval is ``min_interval``.

        ``max_interval`` defaults to 15x ``min_interval`` (30 s for 2 s), ``max_skip`` and
        ``callback_fallback`` to 30x, ``cold_max_interval`` to 10x.
        """
        if min_interval <= 0:
            raise ValueError(f"min_interval: must be > 0, got {min_interval}")
        factor = min_interval / cls.min_interval
        values: dict[str, Any] = {
            "min_interval": min_interval,
            "max_interval": max(min_interval, max_interval if max_interval is not None else 15 * min_interval),
            "max_skip": cls.max_skip * factor,
            "cold_max_interval": cls.cold_max_interval * factor,
            "callback_fallback": cls.callback_fallback * factor,
        }
        values.update(overrides)
        return cls(**values)

    def learned_interval(
        self,
        since: float,
        estimate: DurationEstimate | None,
        previous: float | None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds from ``since`` (elapsed since creation when the job was last seen pending) to the next query.

        - No ``estimate``: ``min_interval``, then growing by ``cold_growth`` per query up to
          ``cold_max_interval`` (and ``max_interval``): few queries early, and the first completion of a kind
          is seen soon enough to tighten the schedule of the other jobs of that kind.
        - With one: sleep while the job is unlikely to finish, so that the chance it finishes more than
          ``min_interval`` before the next query stays under ``late_budget``, but never more than ``max_skip``
          at once (what a wrong estimate can cost); ``min_interval`` while completion is likely; past the
          ``overdue_quantile`` the estimate is wrong for this job and intervals grow by ``overdue_growth`` of
          the overrun, up to ``max_interval``.

        Jitter: +/- ``jitter`` on query intervals, downwards only on long sleeps (they never overshoot).
        """
        rng = rng or random
        floor = self.min_interval
        if estimate is None:
            base = floor if previous is None else previous * self.cold_growth
            base = min(max(base, floor), self.cold_max_interval, self.max_interval)
            return max(0.0, base + rng.uniform(-base * self.jitter, base * self.jitter))
        overdue_from = estimate.quantile(self.overdue_quantile)
        if since >= overdue_from:
            base = min(max(floor + self.overdue_growth * (since - overdue_from), floor), self.max_interval)
            return max(0.0, base + rng.uniform(-base * self.jitter, base * self.jitter))
        done = estimate.cdf(since)
        # Completions before `late_by` would be seen more than `floor` late by a query at `late_by + floor`.
        late_by = estimate.quantile(done + self.late_budget * (1 - done))
        base = late_by + floor - since
        if base <= floor:
            return max(0.0, floor + rng.uniform(-floor * self.jitter, floor * self.jitter))
        base = min(base, max(self.max_skip, floor))
        return base * (1 - rng.uniform(0, self.jitter))

    def fallback_interval(self, rng: random.Random | None = None) -> float:
        """Seconds to the next query of a wait expecting a callback: ``callback_fallback``, jittered downwards.

        These queries only catch a lost callback; the callback itself triggers the query that sees the end.
        """
        base = max(self.callback_fallback, self.min_interval)
        return base * (1 - (rng or random).uniform(0, self.jitter))

    def next_interval(
        self, elapsed: float, expected: float | None, previous: float | None, rng: random.Random | None = None
    ) -> float:
        if expected is not None and expected > 0:
            if elapsed < expected * self.first_check:
                base = expected * self.first_check - elapsed
            elif elapsed < expected:
                base = (expected - elapsed) / 2
            else:
                base = self.min_interval + 0.1 * (elapsed - expected)
        else:
            base = self.min_interval if previous is None else previous * self.growth
        base = min(max(base, self.min_interval), self.max_interval)
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


# --------------------------------------------------------------------------------------------- responses


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _vendor_message(payload: Mapping[str, Any]) -> str:
    for key in ("message", "info", "msg", "error", "detail"):
        value = payload.get(key)
        if value:
            return str(value)
    return "no message"


def _classify_code(code: Any, http_status: int, message: str) -> type[ShortAPIError]:
    """The error class for a non-zero envelope ``code`` (vendor codes are undocumented: use every hint)."""
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = 0
    hints = {http_status, number}
    lowered = message.lower()
    if hints & {401, 403} or any(w in lowered for w in ("api key", "apikey", "unauthori", "token", "auth")):
        return AuthenticationFailed
    if 429 in hints or "too many" in lowered or "rate limit" in lowered:
        return RateLimited
    if 404 in hints or "not found" in lowered:
        return JobNotFound
    if http_status >= 500 or 500 <= number <= 599:
        return VendorUnavailable
    return RequestRejected


def interpret_response(
    response: httpx.Response,
    *,
    operation: str,
    job_id: str | None = None,
    secret: SecretStr | None = None,
) -> dict[str, Any]:
    """The one place a ShortAPI response becomes its ``data`` object or a typed error.

    A non-zero ``code`` is an error whatever the HTTP status; an HTML or malformed body is
    :class:`VendorUnavailable` (5xx/2xx) or :class:`RequestRejected` (4xx); 429 is :class:`RateLimited`
    with its ``Retry-After``; 401/403 is :class:`AuthenticationFailed`.
    """
    status = response.status_code
    text = redact(response.text, secret)
    try:
        payload: Any = json.loads(text) if text else None
    except ValueError:
        payload = None
    raw: Any = payload if isinstance(payload, dict) else text[:RAW_LIMIT]
    common: dict[str, Any] = {"job_id": job_id, "status_code": status, "raw": raw}
    retry_after = parse_retry_after(response.headers.get("retry-after"))

    if not isinstance(payload, dict):
        what = "an HTML page" if "<html" in text[:500].lower() else "a body that is not a JSON object"
        message = f"{operation}: HTTP {status} with {what}"
        if status == 429:
            raise RateLimited(message, retry_after=retry_after, **common)
        if status in (401, 403):
            raise AuthenticationFailed(message, **common)
        if 400 <= status < 500:
            raise RequestRejected(message, **common)
        raise VendorUnavailable(message, **common)

    code = payload.get("code", 0)
    if code not in (0, "0") or status >= 400:
        message = _vendor_message(payload)
        error_class = (
            _classify_code(code, status, message) if code not in (0, "0") else _classify_code(status, status, message)
        )
        text_out = f"{operation} refused: {message} (HTTP {status}, code {code})"
        if error_class is RateLimited:
            raise RateLimited(text_out, retry_after=retry_after, **common)
        raise error_class(text_out, **common)

    data = payload.get("data")
    if not isinstance(data, dict):
        raise VendorUnavailable(f"{operation}: response has no data object (HTTP {status})", **common)
    return data


def job_from_data(job_id: str, data: Mapping[str, Any]) -> Job:
    """A :class:`Job` from a query's ``data``: states 0/1 pending, 2 succeeded, 3 failed, others unknown."""
    raw_status = data.get("status")
    try:
        number = int(raw_status)  # some gateways send "2"
    except (TypeError, ValueError):
        number = None
    state: JobState = _STATES.get(number, "unknown") if number is not None else "unknown"
    urls: list[str] = []
    result = data.get("result")
    if isinstance(result, Mapping):
        # The vendor pages show result.videos[].url; the image-to-video page shows result.images[].url.
        for key in ("videos", "video", "images"):
            items = result.get(key)
            items = [items] if isinstance(items, Mapping) else items
            if isinstance(items, list):
                urls.extend(str(i["url"]) for i in items if isinstance(i, Mapping) and i.get("url"))
    error = data.get("error") or data.get("message") or data.get("fail_reason")
    return Job(
        job_id=job_id,
        status=raw_status,
        state=state,
        video_urls=tuple(urls),
        error=str(error) if error else None,
        raw=dict(data),
    )


def _parse_amount(value: Any) -> Decimal | None:
    """The vendor's ``amount`` as a Decimal, or ``None`` when absent or not a plausible, finite charge."""
    if value in (None, "") or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_PLAUSIBLE_AMOUNT:
        return None
    return amount


# --------------------------------------------------------------------------------------------- auth


class _BearerAuth(httpx.Auth):
    """Adds the key per request, so it never sits in a client's default headers or reprs."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(**********)"


StatusCallback = Callable[[Job], Awaitable[None] | None]


# --------------------------------------------------------------------------------------------- shared pool

#: Connection limits of API pools (creates and queries). Few connections on purpose: hundreds of waits make a
#: few queries per second between them, and an httpx pool costs more CPU per request the more connections it
#: juggles (measured here: ~1.6 ms a request with 8, ~3 ms with 32, ~6.4 ms with 100, 200 requests queued).
POOL_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=16, keepalive_expiry=30.0)
#: Connection limits of download pools: results are streamed on their own connections, so a queue of large
#: downloads never delays the queries that notice other jobs finishing.
DOWNLOAD_POOL_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8, keepalive_expiry=30.0)

PoolPurpose = Literal["api", "download"]

#: Queries at ``min_interval`` after a callback whose own query still saw the job pending.
HINT_FOLLOW_UPS = 2


@dataclass
class _Pool:
    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    client: httpx.AsyncClient
    closer: Any = None
    started: Any = None


_pools: dict[tuple[int, str], _Pool] = {}
_pools_lock = threading.Lock()


def shared_http_client(purpose: PoolPurpose = "api") -> httpx.AsyncClient:
    """The process's ``httpx.AsyncClient`` for the running event loop: one connection pool per loop and purpose.

    ``"api"`` is for creates and queries (:data:`POOL_LIMITS`), ``"download"`` for result files
    (:data:`DOWNLOAD_POOL_LIMITS`). Clients given them (``ShortAPIClient(http_client=..., download_client=...)``)
    share their connections and never close them. A pool is closed when its loop shuts down (``asyncio.run``,
    ``anyio.run`` and Prefect's loops do) or at exit; a loop dropped without shutting down takes it along.
    Call it inside a running asyncio loop; each loop gets its own pools (httpx connections belong to one loop).
    """
    if purpose not in ("api", "download"):
        raise ValueError(f"purpose: 'api' or 'download', not {purpose!r}")
    loop = asyncio.get_running_loop()
    key = (id(loop), purpose)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and pool.loop() is loop and not pool.client.is_closed:
            return pool.client
        limits = POOL_LIMITS if purpose == "api" else DOWNLOAD_POOL_LIMITS
        client = httpx.AsyncClient(limits=limits, follow_redirects=False)

        def forget(_: object, key: tuple[int, str] = key, client: httpx.AsyncClient = client) -> None:
            with _pools_lock:
                if key in _pools and _pools[key].client is client:
                    del _pools[key]

        pool = _pools[key] = _Pool(loop=weakref.ref(loop, forget), client=client)
    # An async generator parked at its `yield` is closed by the loop's shutdown_asyncgens(): its `finally`
    # then closes the pool inside the loop that owns its connections.
    pool.closer = _close_at_loop_shutdown(client)
    pool.started = loop.create_task(pool.closer.__anext__())
    return client


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with _pools_lock:
            for key, pool in list(_pools.items()):
                if pool.client is client:
                    del _pools[key]
        await client.aclose()


@atexit.register
def _close_pools_at_exit() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        loop = pool.loop()
        if loop is None or loop.is_closed() or pool.client.is_closed:
            continue
        with contextlib.suppress(Exception):
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(pool.client.aclose(), loop).result(timeout=5)
            else:
                loop.run_until_complete(pool.client.aclose())


# --------------------------------------------------------------------------------------------- client


class ShortAPIClient:
    """Async client for ShortAPI's job API.

    Args:
        api_key: the key (``str`` or ``SecretStr``); default ``SHORTAPI_KEY`` from the environment.
        base_url: API root; default ``SHORTAPI_BASE_URL`` or ``https://api.shortapi.ai``.
        connect_timeout / read_timeout: explicit per-request timeouts in seconds.
        retry: backoff for queries and downloads (never for creates).
        poll: query schedule of :meth:`wait_for_job`.
        http_client: an ``httpx.AsyncClient`` to share (its pool is reused; it is not closed by this client),
            e.g. :func:`shared_http_client`.
        download_client: the same for result downloads (default: ``http_client``, else the client's own pool).
        callbacks: a started :class:`~kling_prefect.callbacks.CallbackReceiver`: each create without a
            ``callback_url`` gets one of its URLs, and waits given that URL wake when the callback comes.
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        download_client: httpx.AsyncClient | None = None,
        callbacks: CallbackReceiver | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(ENV_KEY, "")
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not self._key.get_secret_value().strip():
            raise AuthenticationFailed(f"no ShortAPI key: pass api_key or set {ENV_KEY}")
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self._http = http_client
        self._owns_http = http_client is None
        self._download_http = download_client
        self.callbacks = callbacks
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"ShortAPIClient(base_url={self.base_url!r}, api_key=**********)"

    # -- lifecycle

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, limits=POOL_LIMITS, follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> ShortAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- create

    async def create_job(self, request: KlingRequest, *, callback_url: str | None = None) -> CreatedJob:
        """POST ``job/create`` once. Never retried: see :class:`JobMayHaveBeenCreated`.

        ``callback_url`` is passed through; the vendor POSTs there when the job ends (treat it only as a
        hint to query the job again). Without one, a client with ``callbacks`` sends a fresh URL of its
        receiver (as ``CreatedJob.callback_url``).
        """
        body: dict[str, Any] = {"model": request.model_id, "args": request.to_args()}
        if not callback_url and self.callbacks is not None:
            callback_url = self.callbacks.new_url()
        if callback_url:
            body["callback_url"] = callback_url
        operation = f"job/create ({request.model_id})"
        sent_at = time.time()
        try:
            response = await self._client().post(
                self.base_url + CREATE_PATH, json=body, auth=_BearerAuth(self._key), timeout=self.timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached the vendor: safe to submit again.
            raise VendorUnavailable(
                f"{operation}: could not connect ({type(exc).__name__}); no job was created"
            ) from None
        except httpx.TransportError as exc:
            raise self._ambiguous(operation, sent_at, f"{type(exc).__name__} after the request was sent") from None
        received_at = time.time()

        try:
            data = interpret_response(response, operation=operation, secret=self._key)
        except VendorUnavailable as exc:
            if isinstance(exc.raw, dict):
                raise  # the vendor answered with an error envelope: it refused the job
            raise self._ambiguous(operation, sent_at, exc.message, raw=exc.raw, status_code=exc.status_code) from None
        job_id = data.get("job_id")
        if not job_id:
            raise self._ambiguous(operation, sent_at, "the response has no job_id", raw=data)
        return CreatedJob(
            job_id=str(job_id),
            model=request.model_id,
            amount=_parse_amount(data.get("amount")),
            estimated_cost=estimate_cost(request),
            video_seconds=request.video_seconds,
            # When the answer came: the job exists by then, and a request that queued for a pooled connection
            # (hundreds of creates at once) must not make the job look older than it is to the wait's schedule.
            created_at=received_at,
            raw=dict(data),
            callback_url=callback_url or None,
        )

    @staticmethod
    def _ambiguous(operation: str, sent_at: float, why: str, **kwargs: Any) -> JobMayHaveBeenCreated:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sent_at))
        return JobMayHaveBeenCreated(
            f"{operation} may have been accepted: {why}. The vendor may have created and billed a job; it was "
            f"NOT retried automatically. Look for a job created around {when} in your ShortAPI dashboard "
            "before submitting again",
            **kwargs,
        )

    # -- query

    async def get_job(self, job_id: str, *, deadline: float | None = None) -> Job:
        """Query a job once, retrying transient failures (429 honouring ``Retry-After``, 5xx, resets, timeouts).

        ``deadline`` (a ``time.monotonic()`` value) bounds the retries.
        """
        operation = "job/query"

        async def attempt() -> Job:
            try:
                response = await self._client().get(
                    self.base_url + QUERY_PATH, params={"id": job_id}, auth=_BearerAuth(self._key), timeout=self.timeout
                )
            except httpx.TransportError as exc:
                raise VendorUnavailable(f"{operation}: {type(exc).__name__}", job_id=job_id) from None
            data = interpret_response(response, operation=operation, job_id=job_id, secret=self._key)
            return job_from_data(job_id, data)

        return await self._with_retries(attempt, deadline=deadline)

    async def _with_retries(self, call: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except TransientError as exc:
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    raise
                pause = self.retry.delay(attempt - 1, getattr(exc, "retry_after", None), self._rng)
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise
                logger.debug("retrying after %s in %.2fs", exc, pause)
                await anyio.sleep(pause)

    async def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = 3600.0,
        expected_seconds: float | None = None,
        started_at: float | None = None,
        on_status_change: StatusCallback | None = None,
        kind: JobKind | None = None,
        durations: DurationModel | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Poll until the job ends; return it when it succeeded.

        Args:
            timeout: overall deadline in seconds (``None``: wait forever). On expiry raises
                :class:`JobTimedOut` carrying the job id, so the wait can be resumed.
            expected_seconds: how long the job should take from creation; no queries are made before most
                of it has passed (see :meth:`PollPolicy.next_interval`).
            started_at: ``time.time()`` when the job was created, if known (for a resumed wait).
            on_status_change: called (sync or async) with each :class:`Job` whose state differs from the last.
            kind: the job's :class:`~kling_prefect.waiting.JobKind`. With ``started_at`` and no
                ``expected_seconds``, the schedule adapts to what ``durations`` (default: the process-wide
                model) learned of that kind, and this job's duration is added to it when it succeeds
                (see :meth:`PollPolicy.learned_interval`).
            durations: the :class:`~kling_prefect.waiting.DurationModel` to learn from and into.
            callback_url: the job's callback URL (``CreatedJob.callback_url``). When it is one of this
                client's ``callbacks`` receiver, the callback triggers a query at once and, while the receiver
                is trusted, queries otherwise only come every ``PollPolicy.callback_fallback`` seconds.

        Raises:
            JobFailed: status 3, with the vendor's message. UnknownJobStatus: a status outside 0-3, or success
            without a result URL. JobTimedOut: the deadline passed. AuthenticationFailed / JobNotFound.
        """
        doorbell = Doorbell()
        callbacks = self.callbacks
        with contextlib.ExitStack() as stack:
            if callbacks is not None and not stack.enter_context(callbacks.subscribe(callback_url, doorbell)):
                callbacks = None  # not one of our receiver's URLs: nothing will ring
            try:
                if kind is not None and started_at and expected_seconds is None:
                    durations = durations or default_duration_model()
                    stack.enter_context(durations.watch(kind, doorbell))
                    job = await self._wait_learned(
                        job_id,
                        timeout=timeout,
                        started_at=started_at,
                        on_status_change=on_status_change,
                        kind=kind,
                        durations=durations,
                        doorbell=doorbell,
                        callbacks=callbacks,
                    )
                else:
                    job = await self._wait_simple(
                        job_id,
                        timeout=timeout,
                        expected_seconds=expected_seconds,
                        started_at=started_at,
                        on_status_change=on_status_change,
                        doorbell=doorbell if callbacks is not None else None,
                    )
            except (JobFailed, UnknownJobStatus):
                if callbacks is not None:  # ended too: its callback counts (and its token goes)
                    callbacks.job_ended(callback_url)
                raise
            if callbacks is not None:
                callbacks.job_ended(callback_url)
            return job

    async def _wait_simple(
        self,
        job_id: str,
        *,
        timeout: float | None,
        expected_seconds: float | None,
        started_at: float | None,
        on_status_change: StatusCallback | None,
        doorbell: Doorbell | None,
    ) -> Job:
        """:meth:`wait_for_job` on :meth:`PollPolicy.next_interval` (a callback cuts a sleep short)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        elapsed_offset = max(0.0, time.time() - started_at) if started_at else 0.0
        began = time.monotonic()
        watcher = _JobWatcher(job_id, on_status_change)
        interval: float | None = None
        while True:
            elapsed = time.monotonic() - began + elapsed_offset
            interval = self.poll.next_interval(elapsed, expected_seconds, interval, self._rng)
            if watcher.last is None and expected_seconds is None:
                interval = 0.0  # first look at once when we know nothing
            if deadline is not None and time.monotonic() + interval > deadline:
                interval = max(0.0, deadline - time.monotonic())
            if doorbell is None:
                await anyio.sleep(interval)
            else:
                await doorbell.wait(interval)
                doorbell.take_hint()
            job = await self._query_for_wait(job_id, deadline, watcher)
            if job is not None and await watcher.seen(job):
                return job
            watcher.check_deadline(deadline, timeout)

    async def _wait_learned(
        self,
        job_id: str,
        *,
        timeout: float | None,
        started_at: float,
        on_status_change: StatusCallback | None,
        kind: JobKind,
        durations: DurationModel,
        doorbell: Doorbell,
        callbacks: CallbackReceiver | None,
    ) -> Job:
        """:meth:`wait_for_job` on the schedule learned per job kind (see :meth:`PollPolicy.learned_interval`).

        ``doorbell`` rings when another job of the kind taught ``durations`` something (re-plan) or, with a
        hint, when the job's callback came (query now).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = time.time() - started_at
        began = time.monotonic()

        def elapsed() -> float:
            return time.monotonic() - began + offset

        def plan() -> float:
            nonlocal fallback
            if follow_ups:
                return self.poll.min_interval
            if callbacks is not None and callbacks.trusted:
                # Drawn once per query: re-planning when other jobs of the kind end must not redraw the jitter
                # (the earliest of many draws would bring the fallback forward).
                fallback = fallback or self.poll.fallback_interval(self._rng)
                return fallback
            return self.poll.learned_interval(pending_at, durations.estimate(kind), previous, self._rng)

        watcher = _JobWatcher(job_id, on_status_change)
        pending_at = 0.0  # elapsed time at which the job was last known pending (its creation, at first)
        previous: float | None = None
        not_before = 0.0
        hinted_at: float | None = None  # when the job's callback came
        follow_ups = 0  # queries at min_interval after a callback whose query still saw the job pending
        fallback: float | None = None  # this sleep's fallback interval while callbacks are trusted
        while True:
            interval = plan()
            if doorbell.take_hint():
                hinted_at = elapsed()
                interval = 0.0
            while True:
                wake = max(pending_at + interval, not_before)
                pause = wake - elapsed()
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    break
                if await doorbell.wait(pause):
                    if doorbell.take_hint():  # the job's callback: query now (or as soon as allowed)
                        hinted_at = elapsed()
                        interval = 0.0
                    elif interval > 0:  # another job of this kind ended: re-plan with what it taught
                        interval = plan()
            asked_at = elapsed()
            job = await self._query_for_wait(job_id, deadline, watcher)
            fallback = None
            if interval > 0:
                previous = interval
            if job is None:
                not_before = elapsed() + self.poll.min_interval  # the vendor is struggling: do not hammer it
                if interval == 0.0:
                    doorbell.hint()  # the callback's query failed: it is still owed, after that pause
            elif await watcher.seen(job):
                # The callback came within moments of the end: it dates the end better than the last query.
                lower = pending_at if hinted_at is None else max(pending_at, hinted_at - self.poll.min_interval)
                durations.observe(kind, pending_at=lower, done_by=asked_at if hinted_at is None else hinted_at)
                return job
            else:
                pending_at = asked_at
                # A callback the query does not bear out yet: the vendor's query may lag its callback (or the
                # callback was for another status change), so look again twice at min_interval.
                follow_ups = HINT_FOLLOW_UPS if interval == 0.0 else max(0, follow_ups - 1)
                hinted_at = None
            watcher.check_deadline(deadline, timeout)

    async def _query_for_wait(self, job_id: str, deadline: float | None, watcher: _JobWatcher) -> Job | None:
        try:
            job = await self.get_job(job_id, deadline=deadline)
        except TransientError as exc:
            watcher.last_error = exc  # keep waiting: the job runs on regardless of our connection
            return None
        watcher.last_error = None
        return job

    # -- download

    async def download(
        self,
        url: str,
        path: str | os.PathLike[str],
        *,
        job_id: str | None = None,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Stream ``url`` to ``path``: constant memory, a temporary name renamed only once complete.

        Only http(s) is fetched, without the API key (result URLs are pre-signed, often on another host).
        A truncated transfer is retried from scratch; 403/404/410 raise :class:`ResultExpired`; a body
        over ``max_bytes`` raises :class:`DownloadFailed`.
        """
        target = Path(path)
        scheme = httpx.URL(url).scheme
        if scheme not in ("http", "https"):
            raise DownloadFailed(f"refusing to download a result over {scheme or 'no'} scheme", job_id=job_id)
        target.parent.mkdir(parents=True, exist_ok=True)

        async def attempt() -> Path:
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                await self._stream_to(url, temp, job_id=job_id, max_bytes=max_bytes, on_progress=on_progress)
                os.replace(temp, target)
                return target
            finally:
                temp.unlink(missing_ok=True)

        return await self._with_retries(attempt)

    async def _stream_to(
        self,
        url: str,
        temp: Path,
        *,
        job_id: str | None,
        max_bytes: int,
        on_progress: Callable[[int, int | None], None] | None,
    ) -> None:
        try:
            http = self._download_http or self._client()
            async with http.stream("GET", url, timeout=self.timeout) as response:
                if response.status_code in (403, 404, 410):
                    body = redact((await response.aread())[:RAW_LIMIT].decode("utf-8", "replace"), self._key)
                    raise ResultExpired(
                        f"the result URL no longer serves the file (HTTP {response.status_code}); vendor URLs "
                        "expire, so results are downloaded as soon as a job succeeds",
                        job_id=job_id,
                        status_code=response.status_code,
                        raw=body,
                    )
                if response.status_code == 429 or response.status_code >= 500:
                    error = RateLimited if response.status_code == 429 else VendorUnavailable
                    raise error(
                        f"download: HTTP {response.status_code}",
                        job_id=job_id,
                        status_code=response.status_code,
                        **(
                            {"retry_after": parse_retry_after(response.headers.get("retry-after"))}
                            if response.status_code == 429
                            else {}
                        ),
                    )
                if response.status_code != 200:
                    raise DownloadFailed(f"download: unexpected HTTP {response.status_code}", job_id=job_id)
                length = response.headers.get("content-length")
                expected = int(length) if length and length.isdigit() else None
                if expected is not None and expected > max_bytes:
                    raise DownloadFailed(f"result is {expected} bytes, over the {max_bytes}-byte cap", job_id=job_id)
                received = 0
                async with await anyio.open_file(temp, "wb") as sink:
                    async for chunk in response.aiter_raw(CHUNK):
                        received += len(chunk)
                        if received > max_bytes:
                            raise DownloadFailed(f"result exceeds the {max_bytes}-byte cap", job_id=job_id)
                        await sink.write(chunk)
                        if on_progress is not None:
                            on_progress(received, expected)
                if expected is not None and received != expected:
                    raise VendorUnavailable(f"download truncated: {received} of {expected} bytes", job_id=job_id)
        except httpx.TransportError as exc:
            raise VendorUnavailable(f"download interrupted: {type(exc).__name__}", job_id=job_id) from None


async def _call(callback: StatusCallback | None, job: Job) -> None:
    if callback is None:
        return
    outcome = callback(job)
    if inspect.isawaitable(outcome):
        await outcome


class _JobWatcher:
    """What a wait saw of one job: status changes reported, terminal states turned into results or errors."""

    def __init__(self, job_id: str, on_status_change: StatusCallback | None) -> None:
        self.job_id = job_id
        self.on_status_change = on_status_change
        self.last: Job | None = None
        self.last_error: ShortAPIError | None = None

    async def seen(self, job: Job) -> bool:
        """Report ``job`` if its state changed; ``True`` when it succeeded, raise when it ended otherwise."""
        last, self.last = self.last, job
        if last is None or job.state != last.state or job.status != last.status:
            await _call(self.on_status_change, job)
        if job.state == "succeeded":
            if not job.video_urls:
                raise UnknownJobStatus(
                    "job succeeded but its result has no URL", job_id=self.job_id, status=job.status, raw=job.raw
                )
            return True
        if job.state == "failed":
            raise JobFailed(
                f"job failed at the vendor: {job.error or 'no reason given'}", job_id=self.job_id, raw=job.raw
            )
        if job.state == "unknown":
            raise UnknownJobStatus(
                f"job has status {job.status!r}, which is not documented; treated as terminal",
                job_id=self.job_id,
                status=job.status,
                raw=job.raw,
            )
        return False

    def check_deadline(self, deadline: float | None, timeout: float | None) -> None:
        if deadline is None or time.monotonic() < deadline:
            return
        state = self.last.state if self.last else "unknown"
        why = f"; last error: {self.last_error.message}" if self.last_error else ""
        raise JobTimedOut(
            f"job still {state} after {timeout:.0f} s{why}; wait on this job id again to resume",
            job_id=self.job_id,
            last_status=self.last.status if self.last else None,
        )


# --------------------------------------------------------------------------------------------- sync twin


class SyncShortAPIClient:
    """The blocking twin of :class:`ShortAPIClient`: same arguments, same methods, same errors.

    It runs the async client on a private event loop thread, so it also works inside code that already
    runs an event loop (a Jupyter cell, a sync Prefect task on an async worker).

    Examples:
        ```python
        from kling_prefect import KlingO1TextToVideo, SyncShortAPIClient

        with SyncShortAPIClient() as client:
            created = client.create_job(KlingO1TextToVideo(prompt="Waves at night"))
            job = client.wait_for_job(created.job_id)
            client.download(job.video_url, "waves.mp4")
        ```
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._async = ShortAPIClient(*args, **kwargs)
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def __repr__(self) -> str:
        return f"SyncShortAPIClient(base_url={self._async.base_url!r}, api_key=**********)"

    def _run(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._portal is None:
            self._portal_cm = anyio.from_thread.start_blocking_portal()
            self._portal = self._portal_cm.__enter__()
        return self._portal.call(lambda: func(*args, **kwargs))

    def create_job(self, request: KlingRequest, *, callback_url: str | None = None) -> CreatedJob:
        return self._run(self._async.create_job, request, callback_url=callback_url)

    def get_job(self, job_id: str, *, deadline: float | None = None) -> Job:
        return self._run(self._async.get_job, job_id, deadline=deadline)

    def wait_for_job(self, job_id: str, **kwargs: Any) -> Job:
        return self._run(self._async.wait_for_job, job_id, **kwargs)

    def download(self, url: str, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        return self._run(self._async.download, url, path, **kwargs)

    def close(self) -> None:
        if self._portal is not None:
            self._portal.call(self._async.aclose)
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None

    def __enter__(self) -> SyncShortAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CreatedJob",
    "Job",
    "PollPolicy",
    "RetryPolicy",
    "ShortAPIClient",
    "SyncShortAPIClient",
    "interpret_response",
    "job_from_data",
    "parse_retry_after",
    "shared_http_client",
]
