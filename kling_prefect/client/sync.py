"""The blocking twin of :class:`~kling_prefect.client.ShortAPIClient`: same arguments, methods and errors."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread

from kling_prefect.client.api import ShortAPIClient
from kling_prefect.client.results import CreatedJob, Job
from kling_prefect.models import KlingRequest

__all__ = ["SyncShortAPIClient"]

T = TypeVar("T")


class SyncShortAPIClient:
    """The blocking twin of :class:`ShortAPIClient`: same arguments, same methods, same errors.

    It runs the async client on a private event loop thread, so it also works inside code that already
    runs an event loop (a Jupyter cell, a sync Prefect task on an async worker).

    Examples:
        ```python
        from kling_prefect import KlingO1TextToVideo, SyncShortAPIClient

        with SyncShortAPIClient() as client:
            created = client.create_job(KlingO1TextToVideo(prompt="Waves at night"))
            job = client.wait_for_job(created)
            client.download(job.video_url, "waves.mp4")
        ```
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._async = ShortAPIClient(*args, **kwargs)
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def __repr__(self) -> str:
        return f"SyncShortAPIClient(base_url={self._async.base_url!r}, api_key=**********)"

    def _run(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._portal is None:
            self._portal_cm = anyio.from_thread.start_blocking_portal()
            self._portal = self._portal_cm.__enter__()

        async def call() -> T:
            return await func(*args, **kwargs)

        return self._portal.call(call)

    def create_job(self, request: KlingRequest, *, callback_url: str | None = None) -> CreatedJob:
        return self._run(self._async.create_job, request, callback_url=callback_url)

    def get_job(
        self, job_id: str, *, deadline: float | None = None, priority: float | Callable[[], float] = 0.5
    ) -> Job:
        return self._run(self._async.get_job, job_id, deadline=deadline, priority=priority)

    def wait_for_job(self, job: str | CreatedJob, **kwargs: Any) -> Job:
        return self._run(self._async.wait_for_job, job, **kwargs)

    def download(self, url: str, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        return self._run(self._async.download, url, path, **kwargs)

    def close(self) -> None:
        if self._portal is not None:
            self._portal.call(self._async.aclose)
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None

    def __enter__(self) -> SyncShortAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
