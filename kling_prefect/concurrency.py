"""Limits shared by every worker: jobs in flight at the vendor, and (optionally) a create rate.

Kling limits how many jobs an account may have running. A Prefect *global* concurrency limit lives on the
Prefect server, so it holds across every worker and process that talks to that server. A slot is taken
before ``job/create`` and given back once the job reached a terminal status, so N workers together never
have more jobs at the vendor than the limit.

Both helpers are **strict**: Prefect silently ignores a limit that does not exist unless told otherwise,
and a silent no-op here would let a fleet of workers over-commit the account. Create the limits once with
``kling-prefect setup``.

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

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency, rate_limit

DEFAULT_JOBS_LIMIT = "kling-jobs-in-flight"
DEFAULT_CREATE_RATE_LIMIT = "kling-job-creates"


@asynccontextmanager
async def job_slot(limit_name: str | None, *, timeout_seconds: float | None = None) -> AsyncIterator[None]:
    """Hold one slot of the global limit ``limit_name`` (no-op when ``None``). A missing limit is an error."""
    if not limit_name:
        yield
        return
    async with concurrency(limit_name, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


async def create_rate_slot(limit_name: str | None, *, timeout_seconds: float | None = None) -> None:
    """Wait for the create rate limit ``limit_name`` (a limit with slot decay); no-op when ``None``."""
    if limit_name:
        await rate_limit(limit_name, occupy=1, timeout_seconds=timeout_seconds, strict=True)


async def setup_limits(
    jobs_limit_name: str = DEFAULT_JOBS_LIMIT,
    jobs_limit: int = 5,
    creates_per_second: float | None = None,
    create_limit_name: str = DEFAULT_CREATE_RATE_LIMIT,
) -> list[str]:
    """Register this package's blocks and create (or update) the limits on the current Prefect server.

    Returns one line per thing done, for the CLI to print.
    """
    from kling_prefect.credentials import ShortAPICredentials

    done = []
    await ShortAPICredentials.aregister_type_and_schema()
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
        await _upsert(client, jobs_limit_name, jobs_limit, None)
        done.append(f"global concurrency limit {jobs_limit_name!r}: {jobs_limit} jobs in flight")
        if creates_per_second:
            # A rate limit: each create takes a slot that decays away; `limit` bounds a burst.
            burst = max(1, round(creates_per_second))
            await _upsert(client, create_limit_name, burst, creates_per_second)
            done.append(f"rate limit {create_limit_name!r}: {creates_per_second} creates per second")
    return done


async def _upsert(client: object, name: str, limit: int, decay: float | None) -> None:
    # upsert_* only creates when missing; update an existing limit so `setup` can also change it.
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        await client.read_global_concurrency_limit_by_name(name)  # type: ignore[attr-defined]
    except ObjectNotFound:
        await client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=decay)  # type: ignore[attr-defined]
        return
    update = GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay)
    await client.update_global_concurrency_limit(name, update)  # type: ignore[attr-defined]
