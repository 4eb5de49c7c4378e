"""The async ShortAPI client: create a job, query it, wait for it, download its result.

Money safety: ``create_job`` is **never** retried. A failure after the request was sent raises
:class:`~kling_prefect.exceptions.JobMayHaveBeenCreated`. Queries and downloads are retried on 429, 5xx,
malformed bodies, resets and timeouts, with capped exponential backoff, full jitter and ``Retry-After``.
Every query takes a token of the process's :class:`~kling_prefect.waiting.QueryCap` first (and, when
``kling-prefect setup --max-queries-per-second`` made one, of the rate shared by every process of the Prefect
server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx
from pydantic import SecretStr

from kling_prefect.atomic import atomic_path
from kling_prefect.client.pool import POOL_LIMITS
from kling_prefect.client.responses import (
    RAW_LIMIT,
    interpret_response,
    job_from_data,
    parse_amount,
    parse_retry_after,
    redact,
)
from kling_prefect.client.results import CreatedJob, Job
from kling_prefect.client.retry import RetryPolicy
from kling_prefect.exceptions import (
    AuthenticationFailed,
    DownloadFailed,
    JobFailed,
    JobMayHaveBeenCreated,
    RateLimited,
    ResultExpired,
    TransientError,
    UnknownJobStatus,
    VendorUnavailable,
)
from kling_prefect.models import KlingRequest
from kling_prefect.pricing import estimate_cost
from kling_prefect.waiting import (
    DEFAULT_QUERIES_PER_SECOND,
    DEFAULT_QUERY_RATE_LIMIT,
    ENV_QUERY_RATE_LIMIT,
    Doorbell,
    DurationModel,
    JobKind,
    PollPolicy,
    default_duration_model,
    shared_query_cap,
    wait_for_end,
)

if TYPE_CHECKING:
    from kling_prefect.callbacks import CallbackReceiver

__all__ = ["DEFAULT_BASE_URL", "ENV_BASE_URL", "ENV_KEY", "ShortAPIClient", "StatusCallback"]

DEFAULT_BASE_URL = "https://api.shortapi.ai"
ENV_KEY = "SHORTAPI_KEY"
ENV_BASE_URL = "SHORTAPI_BASE_URL"
ENV_MAX_QUERIES = "SHORTAPI_MAX_QUERIES_PER_SECOND"
CREATE_PATH = "/api/v1/job/create"
QUERY_PATH = "/api/v1/job/query"
DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 1024**3
CHUNK = 1024 * 1024
#: The kind a wait plans by when it is given none: an unknown model (the widest prior).
UNKNOWN_KIND = JobKind(model="unknown", mode="default", seconds=0)

logger = logging.getLogger("kling_prefect.client")

T = TypeVar("T")
StatusCallback = Callable[[Job], Awaitable[None] | None]


def _env_rate() -> float:
    text = os.environ.get(ENV_MAX_QUERIES, "").strip()
    if not text:
        return DEFAULT_QUERIES_PER_SECOND
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"{ENV_MAX_QUERIES}: must be a number of queries per second, got {text[:40]!r}") from None
    if not rate >= 0 or rate == float("inf"):
        raise ValueError(f"{ENV_MAX_QUERIES}: must be a finite number >= 0 (0: no cap), got {text[:40]!r}")
    return rate


class _BearerAuth(httpx.Auth):
    """Adds the key per request, so it never sits in a client's default headers or reprs."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(**********)"


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
        max_queries_per_second: the process-wide cap on queries this client shares with every client of the
            same setting (:class:`~kling_prefect.waiting.QueryCap`); default ``SHORTAPI_MAX_QUERIES_PER_SECOND``
            or 10; ``0`` for none.
        query_rate_limit: the Prefect rate limit on queries shared by every process of the Prefect server, used
            when it exists (``kling-prefect setup --max-queries-per-second N``) as well as the cap above; default
            ``SHORTAPI_QUERY_RATE_LIMIT`` or ``kling-job-queries``; ``""`` for none.

    Examples:
        ```python
        import asyncio
        from kling_prefect import KlingO3TextToVideo, ShortAPIClient

        async def main():
            async with ShortAPIClient() as client:  # SHORTAPI_KEY / SHORTAPI_BASE_URL from the environment
                created = await client.create_job(KlingO3TextToVideo(prompt="A red kite over dunes"))
                job = await client.wait_for_job(created, timeout=1800)
                await client.download(job.video_url, "kite.mp4", job_id=job.job_id)

        asyncio.run(main())
        ```
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
        max_queries_per_second: float | None = None,
        query_rate_limit: str | None = None,
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
        if max_queries_per_second is None:
            max_queries_per_second = _env_rate()
        if query_rate_limit is None:
            query_rate_limit = os.environ.get(ENV_QUERY_RATE_LIMIT, "").strip() or DEFAULT_QUERY_RATE_LIMIT
        self.query_cap = shared_query_cap(max_queries_per_second, query_rate_limit.strip())
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

        A create the vendor refuses in an error envelope made no job: :class:`AccountBusy` when the account runs
        as many jobs as it allows (HTTP 429, code 1303), :class:`RateLimited` for its request rate; the submit
        task sends those again after a pause (:func:`~kling_prefect.client.responses.refused_create`).

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
            data = interpret_response(response, operation=operation, secret=self._key, create=True)
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
            amount=parse_amount(data.get("amount")),
            estimated_cost=estimate_cost(request),
            video_seconds=request.video_seconds,
            # When the answer came: the job exists by then, and a request that queued for a pooled connection
            # (hundreds of creates at once) must not make the job look older than it is to the wait's schedule.
            created_at=received_at,
            raw=dict(data),
            callback_url=callback_url or None,
            kind=JobKind.of(request),
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

    async def get_job(
        self, job_id: str, *, deadline: float | None = None, priority: float | Callable[[], float] = 0.5
    ) -> Job:
        """Query a job once, retrying transient failures (429 honouring ``Retry-After``, 5xx, resets, timeouts).

        ``deadline`` (a ``time.monotonic()`` value) bounds the retries. Each attempt first takes a token of the
        query cap; ``priority`` (0-1, the chance this query finds the job done) orders queries queued for one.
        """
        operation = "job/query"

        async def attempt() -> Job:
            if self.query_cap is not None:
                await self.query_cap.acquire(priority)
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
        job: str | CreatedJob,
        *,
        timeout: float | None = 3600.0,
        started_at: float | None = None,
        on_status_change: StatusCallback | None = None,
        kind: JobKind | None = None,
        durations: DurationModel | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Query the job until it ends, on the schedule of :mod:`kling_prefect.waiting`; return it when it
        succeeded.

        Args:
            job: the :class:`CreatedJob` from :meth:`create_job` (it carries the kind, creation time and
                callback URL the wait plans by), or a job id.
            timeout: overall deadline in seconds (``None``: wait forever). On expiry raises
                :class:`JobTimedOut` carrying the job id, so the wait can be resumed.
            started_at: ``time.time()`` when the job was created (default: the created job's; for a bare id
                unknown, and the first query is then made at once).
            on_status_change: called (sync or async) with each :class:`Job` whose state differs from the last.
            kind: the job's :class:`~kling_prefect.waiting.JobKind` (default: the created job's). The schedule
                follows what ``durations`` believes of it, and this job's duration is added when it succeeds.
            durations: the :class:`~kling_prefect.waiting.DurationModel` to plan from and learn into (default:
                the process-wide one).
            callback_url: the job's callback URL (default: the created job's). When it is one of this client's
                ``callbacks`` receiver, the callback triggers a query at once and, while the receiver is
                trusted, queries otherwise only come every ``PollPolicy.callback_fallback`` seconds.

        Raises:
            JobFailed: status 3, with the vendor's message. UnknownJobStatus: a status outside 0-3, or success
            without a result URL. JobTimedOut: the deadline passed. AuthenticationFailed / JobNotFound.
        """
        if isinstance(job, CreatedJob):
            job_id = job.job_id
            started_at = started_at if started_at is not None else job.created_at
            kind = kind or job.kind
            callback_url = callback_url or job.callback_url
        else:
            job_id = job
        kind = kind or UNKNOWN_KIND
        durations = durations or default_duration_model()
        doorbell = Doorbell()
        callbacks = self.callbacks
        with contextlib.ExitStack() as stack:
            if callbacks is not None and not stack.enter_context(callbacks.subscribe(callback_url, doorbell, job_id)):
                callbacks = None  # not one of our receiver's URLs: nothing will ring
            stack.enter_context(durations.watch(kind, doorbell))
            receiver = callbacks

            async def query(priority: Callable[[], float], deadline: float | None) -> Job:
                return await self.get_job(job_id, deadline=deadline, priority=priority)

            try:
                result = await wait_for_end(
                    job_id,
                    query,
                    kind=kind,
                    started_at=started_at,
                    durations=durations,
                    policy=self.poll,
                    doorbell=doorbell,
                    timeout=timeout,
                    on_status_change=on_status_change,
                    expects_callback=None if receiver is None else (lambda: receiver.trusted),
                    rng=self._rng,
                )
            except (JobFailed, UnknownJobStatus):
                if receiver is not None:  # ended too: its callback counts (and its token goes)
                    receiver.job_ended(callback_url, job_id)
                raise
            if receiver is not None:
                receiver.job_ended(callback_url, job_id)
            return result

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
            with atomic_path(target, fsync=False) as temporary:
                await self._stream_to(url, temporary, job_id=job_id, max_bytes=max_bytes, on_progress=on_progress)
            return target

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
