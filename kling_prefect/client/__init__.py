"""The ShortAPI job client, one concern per module.

- :mod:`~kling_prefect.client.api`: :class:`ShortAPIClient` (async): create, query, wait, download.
- :mod:`~kling_prefect.client.sync`: :class:`SyncShortAPIClient`, its blocking twin.
- :mod:`~kling_prefect.client.results`: :class:`CreatedJob`, :class:`Job`.
- :mod:`~kling_prefect.client.responses`: the one place responses become data, jobs or typed errors.
- :mod:`~kling_prefect.client.retry`: :class:`RetryPolicy`.
- :mod:`~kling_prefect.client.pool`: :func:`shared_http_client`, one connection pool per event loop.

Examples:
    See :class:`ShortAPIClient` (``create_job`` -> ``wait_for_job`` -> ``download``).
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
