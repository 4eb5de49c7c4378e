"""The ShortAPI job client, one concern per module.

- :mod:`~kling_prefect.client.api`: :class:`ShortAPIClient` (async): create, query, wait, download.
- :mod:`~kling_prefect.client.sync`: :class:`SyncShortAPIClient`, its blocking twin.
- :mod:`~kling_prefect.client.results`: :class:`CreatedJob`, :class:`Job`.
- :mod:`~kling_prefect.client.responses`: the one place responses become data, jobs or typed errors.
- :mod:`~kling_prefect.client.retry`: :class:`RetryPolicy`.
- :mod:`~kling_prefect.client.pool`: :func:`shared_http_client`, one connection pool per event loop.

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

from kling_prefect.client.api import DEFAULT_BASE_URL, ENV_BASE_URL, ENV_KEY, ShortAPIClient
from kling_prefect.client.pool import shared_http_client
from kling_prefect.client.responses import interpret_response, job_from_data, parse_amount, parse_retry_after, redact
from kling_prefect.client.results import CreatedJob, Job, JobState
from kling_prefect.client.retry import RetryPolicy
from kling_prefect.client.sync import SyncShortAPIClient
from kling_prefect.waiting.schedule import PollPolicy

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "ENV_KEY",
    "CreatedJob",
    "Job",
    "JobState",
    "PollPolicy",
    "RetryPolicy",
    "ShortAPIClient",
    "SyncShortAPIClient",
    "interpret_response",
    "job_from_data",
    "parse_amount",
    "parse_retry_after",
    "redact",
    "shared_http_client",
]
