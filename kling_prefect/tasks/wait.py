"""Wait for a job (async, never cached), keeping a progress artifact current."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import anyio
from prefect import get_run_logger
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE

from kling_prefect import events, progress
from kling_prefect.artifacts import progress_description, progress_key
from kling_prefect.client import Job, PollPolicy
from kling_prefect.dispatch import dispatching_task
from kling_prefect.exceptions import JobFailed, JobTimedOut, ShortAPIError, TransientError, UnknownJobStatus
from kling_prefect.records import FinishedJob, SubmittedJob
from kling_prefect.tasks.connect import open_client
from kling_prefect.waiting import default_duration_model

__all__ = ["retry_resumable", "wait_for_kling_job"]

_STATE_PERCENT = {"queued": 5.0, "processing": 10.0, "succeeded": 100.0}
#: How the progress display names a vendor state.
STATE_NAMES = {"queued": "queued", "processing": "running", "succeeded": "succeeded"}


async def retry_resumable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a wait or a download only when doing so cannot cost money and may succeed.

    Async on purpose: in async code ``state.result()`` is a coroutine, and a sync check would never see
    the exception (so it would never retry).
    """
    outcome = await state.aresult(raise_on_failure=False)
    return isinstance(outcome, (TransientError, JobTimedOut, OSError))


#: The least seconds between two progress updates of a running job (each is a call to the Prefect API).
CREEP_SECONDS = 30.0
#: The longest a wait task waits for its progress artifact's last update before it returns.
FINAL_UPDATE_SECONDS = 10.0


class JobProgress:
    """A job's progress as the UI (its progress artifact) and the terminal (:mod:`kling_prefect.progress`) see it.

    Best effort, and never in the wait's way: the artifact lives on the Prefect API, and an API that is slow or
    overloaded (a thousand jobs reporting at once) must not slow or fail the wait of a job that runs, and is paid
    for, at the vendor. Updates are sent in the background, the latest one only; a failed one is logged once per
    job. The last update (the job's end) is awaited, for at most :data:`FINAL_UPDATE_SECONDS`.
    """

    def __init__(self, job: SubmittedJob, logger: Any) -> None:
        self.job = job
        self.logger = logger
        self.artifact_id: UUID | None = None
        self.percent = 0.0
        self.state = "queued"
        self._shown = 0.0
        self._wanted: tuple[float, str | None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._warned = False

    @classmethod
    async def start(cls, job: SubmittedJob, logger: Any) -> JobProgress:
        shown = cls(job, logger)
        shown._sender = asyncio.ensure_future(shown._send(create=True))
        return shown

    def update(self, percent: float, state: str, description: str | None = None, message: str = "") -> None:
        """Move to ``percent`` (never backwards) in ``state``; the artifact in whole points or with a description."""
        self.percent = max(self.percent, min(percent, 100.0))
        self.state = state
        progress.emit(
            progress.ProgressEvent(self.job.run_key, self.job.step, state, self.percent / 100, self.job.job_id, message)
        )
        if self.percent >= self._shown + 1 or self.percent >= 100 or description is not None:
            self._shown = self.percent
            self._wanted = (self.percent, description)
            if self._sender is None or self._sender.done():
                self._sender = asyncio.ensure_future(self._send())

    async def finish(self, percent: float, state: str, description: str, message: str = "") -> None:
        """The job's end: shown, and the artifact updated before the task ends (within a bounded time)."""
        self.update(percent, state, description, message)
        if self._sender is not None:
            with anyio.move_on_after(FINAL_UPDATE_SECONDS):
                await asyncio.shield(self._sender)

    async def _send(self, create: bool = False) -> None:
        try:
            if create:
                self.artifact_id = await acreate_progress_artifact(
                    0.0,
                    key=progress_key(self.job.step),
                    description=progress_description(self.job, "running"),
                )
            while self._wanted is not None and self.artifact_id is not None:
                (percent, description), self._wanted = self._wanted, None
                await aupdate_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                self.logger.warning(
                    "progress artifact of %s not updated (%s: %s)", self.job.step, type(exc).__name__, exc
                )


def _creeping_percent(elapsed: float, expected: float) -> float:
    """Progress of a running job between its status changes: towards 95%, along its expected duration."""
    return 10 + 85 * min(elapsed / expected, 1.0) if expected > 0 else 10.0


@dispatching_task(
    name="wait-for-kling-job",
    task_run_name="wait-{job.step}",
    cache_policy=NO_CACHE,  # a cached status would be served forever
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_resumable,
)
async def wait_for_kling_job(
    job: SubmittedJob,
    credentials_block: str | None = None,
    timeout: float = 3600.0,
    poll_interval: float = 2.0,
    max_poll_interval: float | None = None,
) -> FinishedJob:
    """Wait until the job ends, keeping a progress artifact current; return it when it succeeded.

    Queries follow :mod:`kling_prefect.waiting`: none while what jobs of this kind (model, mode, seconds,
    audio) took says it cannot be done yet, then every ``poll_interval`` seconds while it may be (so a finished
    job is noticed at most ``poll_interval`` late); before any such job was seen, the same rule on a wide belief
    around the model's typical time. ``max_poll_interval`` (default 15x ``poll_interval``) caps the intervals
    of a job long overdue. Every wait in the process shares one HTTP pool per event loop and the process's cap
    on queries per second. With callbacks configured on the credentials (``callback_url``), the job's callback
    triggers the query that sees its end (see :mod:`kling_prefect.callbacks`).

    Raises ``JobFailed`` (the vendor's message and the job id), ``UnknownJobStatus`` or ``JobTimedOut``.

    Examples:
        ```python
        from kling_prefect.tasks import submit_kling_job, wait_for_kling_job

        job = await submit_kling_job(request, run_key="fox-1", step="clip")
        finished = await wait_for_kling_job(job, poll_interval=5)
        finished.video_urls[0]  # the vendor's (expiring) URL: store it at once
        ```
    """
    logger = get_run_logger()
    kind = job.kind
    durations = default_duration_model()
    shown = await JobProgress.start(job, logger)

    async def on_status(update: Job) -> None:
        logger.info("job %s is %s (status %r)", job.job_id, update.state, update.status)
        shown.update(_STATE_PERCENT.get(update.state, shown.percent), STATE_NAMES.get(update.state, shown.state))

    async def creep() -> None:
        # Between status changes, creep towards 95% so a long job visibly moves.
        while True:
            await anyio.sleep(max(15 * poll_interval, CREEP_SECONDS))  # a progress bar, not a stream of API calls
            if shown.state in ("queued", "running"):
                expected = durations.estimate(kind).median
                shown.update(_creeping_percent(max(0.0, time.time() - job.created_at), expected), shown.state)

    poll = PollPolicy.scaled(poll_interval, max_poll_interval)
    client = await open_client(credentials_block, poll)
    failure: ShortAPIError | None = None
    async with client, anyio.create_task_group() as group:
        group.start_soon(creep)
        try:
            done = await client.wait_for_job(
                job.job_id,
                timeout=timeout,
                started_at=job.created_at,
                on_status_change=on_status,
                kind=kind,
                durations=durations,
                callback_url=job.callback_url,
            )
        except ShortAPIError as exc:
            failure = exc  # raised below, outside the task group, so callers see it unwrapped
        finally:
            group.cancel_scope.cancel()
    if failure is not None:
        reason = failure.message
        if isinstance(failure, (JobFailed, UnknownJobStatus)):
            # The job is over: the bar is full and the description says how it ended (a bar left at 10% would
            # look like a job still running).
            await shown.finish(100.0, "failed", progress_description(job, "failed", failure), reason)
            events.emit_job_event(events.JOB_FAILED, job, reason=reason[:1000])
        else:
            progress.emit(
                progress.ProgressEvent(job.run_key, job.step, shown.state, shown.percent / 100, job.job_id, reason)
            )
        raise failure
    await shown.finish(100.0, "downloading", progress_description(job, "succeeded"))
    events.emit_job_event(events.JOB_SUCCEEDED, job, waited_seconds=round(time.time() - job.created_at, 3))
    return FinishedJob(submitted=job, video_urls=done.video_urls, finished_at=time.time())
