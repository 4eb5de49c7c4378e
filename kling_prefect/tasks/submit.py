"""The only task that costs money: create one job, exactly once per (run key, step, request)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from kling_prefect import events, progress
from kling_prefect.concurrency import create_rate_slot
from kling_prefect.dispatch import dispatching_task
from kling_prefect.exceptions import JobMayHaveBeenCreated, ShortAPIError
from kling_prefect.ledger import StepLedger, step_key
from kling_prefect.models import KlingRequest
from kling_prefect.pricing import format_usd
from kling_prefect.records import SubmittedJob
from kling_prefect.tasks.connect import load_credentials, open_client

__all__ = ["JobSubmissionKey", "submit_kling_job"]


@dataclass
class JobSubmissionKey(CachePolicy):
    """Cache key of :func:`submit_kling_job`: ``run_key`` + ``step`` + the request, namespaced; no secrets.

    Only those three: the credentials block, callback URL, rate limit and ``resubmit_uncertain`` say *how* to
    create, not *what*, so changing them never pays for the step again.
    """

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        request: KlingRequest = inputs["request"]
        return step_key("submit", str(inputs["run_key"]), str(inputs["step"]), request)


@dispatching_task(
    name="submit-kling-job",
    task_run_name="submit-{step}",
    cache_policy=JobSubmissionKey(),
    retries=0,  # a retried POST can be a second charge: never
    persist_result=True,
)
async def submit_kling_job(
    request: KlingRequest,
    run_key: str,
    step: str,
    credentials_block: str | None = None,
    callback_url: str | None = None,
    create_rate_limit: str | None = None,
    resubmit_uncertain: bool = False,
    replacing: str | None = None,
) -> SubmittedJob:
    """Create one job at the vendor, exactly once per (``run_key``, ``step``, request).

    Its result (the job) is cached on those three: a flow retry or a re-run with the same ``run_key`` gets the
    same job back without running this body. When the body runs, it first reads the step's ledger
    (:mod:`kling_prefect.ledger`): if an earlier attempt's create may have been accepted, it raises
    ``JobMayHaveBeenCreated`` and sends nothing, unless ``resubmit_uncertain``. It notes the create before
    the POST and replaces the note with the job the moment the vendor answers, so an attempt whose cached result
    was never saved resumes that job (``replacing``: the id of a job that failed at the vendor, which a
    resubmission replaces instead of resuming).

    Raises ``JobMayHaveBeenCreated`` when the create failed after the request was sent; it is not retried.
    ``create_rate_limit`` names a Prefect rate limit taken before the create.

    Examples:
        ```python
        from prefect import flow
        from kling_prefect import KlingO3TextToVideo
        from kling_prefect.tasks import submit_kling_job

        @flow
        async def create_only():
            job = await submit_kling_job(KlingO3TextToVideo(prompt="A fox"), run_key="fox-1", step="clip")
            return job.job_id
        ```
    """
    logger = get_run_logger()
    ledger = StepLedger(run_key, step, request)
    credentials = await load_credentials(credentials_block)
    # The decision (the ledger read), the POST and the record of its answer, under the step's lease: another
    # attempt of this step running now, in any process, waits here and then resumes the job this one made.
    async with ledger.creating(lease_url=credentials.lease_url_value(), lease_seconds=credentials.lease_seconds):
        earlier = await ledger.before_create(resubmit_uncertain=resubmit_uncertain, replacing=replacing)
        if earlier is not None:
            logger.warning(
                "%s: resuming job %s, created by an earlier attempt (nothing is paid again)", step, earlier.job_id
            )
            return replace(earlier, remembered=True)
        await create_rate_slot(create_rate_limit)
        client = await open_client(credentials_block, credentials=credentials)
        await ledger.note_create_sending()  # if this process dies while the request is out, later attempts know
        async with client:
            try:
                created = await client.create_job(request, callback_url=callback_url)
            except JobMayHaveBeenCreated as exc:
                await ledger.note_create_uncertain(exc)
                raise
            except ShortAPIError:
                await ledger.note_create_refused()
                raise
        submitted = SubmittedJob(
            job_id=created.job_id,
            model=request.model_id,
            run_key=run_key,
            step=step,
            args=request.to_args(),
            estimated_cost=created.estimated_cost,
            amount=created.amount,
            video_seconds=created.video_seconds,
            created_at=created.created_at,
            callback_url=created.callback_url,
        )
        await ledger.note_created(submitted)  # the job id, the moment it exists
    logger.info(
        "created %s job %s for step %r (estimated %s, vendor amount %s)",
        request.model_id,
        created.job_id,
        step,
        format_usd(created.estimated_cost),
        format_usd(created.amount),
    )
    events.emit_job_event(events.JOB_CREATED, submitted)
    progress.emit(progress.ProgressEvent(run_key, step, "queued", 0.02, created.job_id))
    return submitted
