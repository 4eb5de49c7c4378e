"""Limits shared by every worker: jobs in flight at the vendor, and (optionally) a create rate and a query rate.

Kling limits how many jobs an account may have running. A Prefect *global* concurrency limit lives on the
Prefect server, so it holds across every worker and process that talks to that server. A slot is taken
before ``job/create`` and given back once the job reached a terminal status, so N workers together never
have more jobs at the vendor than the limit.

Both helpers are **strict**: Prefect silently ignores a limit that does not exist unless told otherwise,
and a silent no-op here would let a fleet of workers over-commit the account. A missing or inactive limit,
or a limit of the wrong kind, raises :class:`ConcurrencyLimitUnavailable` before anything is created at the
vendor. Create the limits once with ``kling-prefect setup``.

The query rate (``setup_limits(max_queries_per_second=N)``, ``kling-prefect setup --max-queries-per-second N``)
is different: it is not required, and every process's query cap uses it when it exists
(:mod:`kling_prefect.waiting.querycap`).

A held slot is a *lease* on the server, renewed while the job runs. If the process holding it dies, the
server frees the slot when the lease expires (``lease_duration``, 5 minutes by default).

Examples:
    ```python
    from kling_prefect.concurrency import job_slot

    async with job_slot("kling-jobs-in-flight"):
        ...  # create the job and wait for it
    ```
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import ConcurrencyLimitUnavailable
from kling_prefect.waiting.querycap import DEFAULT_QUERY_RATE_LIMIT, shared_burst

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

DEFAULT_JOBS_LIMIT = "kling-jobs-in-flight"
DEFAULT_CREATE_RATE_LIMIT = "kling-job-creates"
#: Seconds a held slot survives without renewal (the holder renews it at 75 % of this while it runs).
DEFAULT_LEASE_SECONDS = 300.0


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(no PREFECT_API_URL: the local ephemeral server)"


async def require_limit(limit_name: str, *, rate: bool = False) -> GlobalConcurrencyLimitResponse:
    """Read the global limit ``limit_name``; raise :class:`ConcurrencyLimitUnavailable` unless it is usable.

    Usable means: it exists, is active, and is a plain concurrency limit (no slot decay; a decaying limit
    would hand slots back while jobs still run) or, with ``rate=True``, a rate limit (slot decay > 0).
    """
    setup_hint = (
        f"kling-prefect setup --create-limit-name {limit_name} --creates-per-second N"
        if rate
        else f"kling-prefect setup --jobs-limit-name {limit_name} --jobs-limit N"
    )
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            raise ConcurrencyLimitUnavailable(
                f"global concurrency limit {limit_name!r} does not exist on the Prefect server at {_api_url()}; "
                f"create it with `{setup_hint}`",
                limit_name=limit_name,
            ) from None
    if not limit.active:
        raise ConcurrencyLimitUnavailable(
            f"global concurrency limit {limit_name!r} is inactive, so the server would not enforce it; "
            f"activate it (`prefect gcl enable {limit_name}`) or re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    if limit.limit < 1:
        raise ConcurrencyLimitUnavailable(
            f"global concurrency limit {limit_name!r} allows {limit.limit} slots: nothing could ever run; "
            f"re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    decays = limit.slot_decay_per_second > 0
    if rate and not decays:
        raise ConcurrencyLimitUnavailable(
            f"limit {limit_name!r} has no slot decay, so it is not a rate limit; re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    if not rate and decays:
        raise ConcurrencyLimitUnavailable(
            f"limit {limit_name!r} decays ({limit.slot_decay_per_second} slots/s): it is a rate limit and would "
            f"free slots while jobs still run; use a limit without decay (`{setup_hint}`)",
            limit_name=limit_name,
        )
    return limit


def _holder() -> ConcurrencyLeaseHolder | None:
    """Who holds the slot, as shown by ``prefect gcl inspect`` and the UI: this task run or flow run."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_ctx.task_run.id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_ctx.flow_run.id)
    return None


@asynccontextmanager
async def job_slot(
    limit_name: str | None,
    *,
    timeout_seconds: float | None = None,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
) -> AsyncIterator[None]:
    """Hold one slot of the global limit ``limit_name`` for the body (no-op when ``None`` or empty).

    Raises :class:`ConcurrencyLimitUnavailable` (before the body runs) when the limit is missing, inactive or
    a rate limit, and ``AcquireConcurrencySlotTimeoutError`` when no slot came within ``timeout_seconds``.

    A failed lease renewal (the Prefect server unreachable for a while) does **not** cancel the body: the job
    is already running at the vendor, and abandoning the wait would not take it back.
    """
    if not limit_name:
        yield
        return
    await require_limit(limit_name)
    async with concurrency(
        limit_name,
        occupy=1,
        timeout_seconds=timeout_seconds,
        lease_duration=lease_duration,
        strict=True,
        holder=_holder(),
        raise_on_lease_renewal_failure=False,
    ):
        yield


async def create_rate_slot(limit_name: str | None, *, timeout_seconds: float | None = None) -> None:
    """Wait for the create rate limit ``limit_name`` (a limit with slot decay); no-op when ``None`` or empty.

    Raises :class:`ConcurrencyLimitUnavailable` when the limit is missing, inactive or has no slot decay.
    """
    if not limit_name:
        return
    await require_limit(limit_name, rate=True)
    await rate_limit(limit_name, occupy=1, timeout_seconds=timeout_seconds, strict=True)


async def setup_limits(
    jobs_limit_name: str = DEFAULT_JOBS_LIMIT,
    jobs_limit: int = 5,
    creates_per_second: float | None = None,
    create_limit_name: str = DEFAULT_CREATE_RATE_LIMIT,
    *,
    max_queries_per_second: float | None = None,
    query_limit_name: str = DEFAULT_QUERY_RATE_LIMIT,
) -> list[str]:
    """Register this package's blocks and create (or update, and activate) the limits on the Prefect server.

    Safe to run again: an existing limit gets the new size. Returns one line per thing done, for the CLI.

    Args:
        jobs_limit_name: the limit on jobs in flight (no decay), ``jobs_limit`` slots.
        jobs_limit: jobs in flight across every worker.
        creates_per_second: also a rate limit on creates (``create_limit_name``).
        create_limit_name: its name.
        max_queries_per_second: also one rate of job queries for every process of this Prefect server: a rate
            limit ``query_limit_name`` (slot decay N, burst :func:`~kling_prefect.waiting.shared_burst`), which
            each process's query cap then keeps to as well as its own.
        query_limit_name: its name; processes find it by ``SHORTAPI_QUERY_RATE_LIMIT`` when it is not the default.

    Examples:
        ```python
        import asyncio
        from kling_prefect.concurrency import setup_limits

        for line in asyncio.run(setup_limits(jobs_limit=4, max_queries_per_second=10)):
            print(line)  # ... rate limit 'kling-job-queries' created: 10 job queries per second ...
        ```
    """
    if max_queries_per_second is not None and not 0 < max_queries_per_second < float("inf"):
        raise ValueError(f"max_queries_per_second: must be a finite number > 0, got {max_queries_per_second}")
    if max_queries_per_second and query_limit_name in (
        jobs_limit_name,
        create_limit_name if creates_per_second else None,
    ):
        raise ValueError("the query rate limit needs a name of its own")
    if jobs_limit < 1:
        raise ValueError(f"jobs_limit: must be at least 1, got {jobs_limit}")
    if creates_per_second is not None and creates_per_second <= 0:
        raise ValueError(f"creates_per_second: must be positive, got {creates_per_second}")
    if creates_per_second and create_limit_name == jobs_limit_name:
        raise ValueError("the create rate limit needs a name of its own (it decays; the jobs limit must not)")
    done = [f"Prefect API: {_api_url()}"]
    try:
        await ShortAPICredentials.aregister_type_and_schema()
    except httpx.TransportError as exc:
        raise ConnectionError(
            f"cannot reach the Prefect API at {_api_url()} ({type(exc).__name__}: {exc}); start one with "
            "`prefect server start` or point PREFECT_API_URL at yours"
        ) from exc
    done.append("registered block type 'shortapi-credentials'")
    try:
        from prefect_aws import AwsCredentials
        from prefect_aws.s3 import S3Bucket

        for block in (AwsCredentials, S3Bucket):
            await block.aregister_type_and_schema()
        done.append("registered block types 'aws-credentials' and 's3-bucket'")
    except ImportError:  # pragma: no cover - prefect-aws is a dependency, but keep setup usable without it
        pass
    async with get_client() as client:
        verb = await _upsert(client, jobs_limit_name, jobs_limit, 0.0)
        done.append(f"global concurrency limit {jobs_limit_name!r} {verb}: {jobs_limit} jobs in flight")
        if creates_per_second:
            # A rate limit: each create takes a slot that decays away; `limit` bounds a burst.
            burst = max(1, round(creates_per_second))
            verb = await _upsert(client, create_limit_name, burst, creates_per_second)
            done.append(
                f"rate limit {create_limit_name!r} {verb}: {creates_per_second} creates per second (burst {burst})"
            )
        if max_queries_per_second:
            # Shared by every process's query cap; the burst is what may leave on top of the rate in a window.
            burst = shared_burst(max_queries_per_second)
            verb = await _upsert(client, query_limit_name, burst, max_queries_per_second)
            done.append(
                f"rate limit {query_limit_name!r} {verb}: {max_queries_per_second:g} job queries per second shared "
                f"by every process of this Prefect server (burst {burst})"
            )
    return done


async def _upsert(client: PrefectClient, name: str, limit: int, decay: float) -> str:
    """Create the limit, or set its size and decay and activate it; return what was done."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    try:
        await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True, slot_decay_per_second=decay)
        )
        return "created"
    # Every field explicit: the server stores a sent ``null`` decay as a constraint violation (409).
    await client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=limit, active=True, slot_decay_per_second=decay)
    )
    return "updated"
