"""The only task that costs money: create one job, exactly once per (run key, step, request)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import anyio
from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from kling_prefect import events, progress
from kling_prefect.client.responses import refused_create
from kling_prefect.concurrency import (
    AccountLimiter,
    AccountSlot,
    account_limiter,
    create_rate_slot,
    current_account_slot,
)
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.dispatch import dispatching_task
from kling_prefect.exceptions import AccountBusy, JobMayHaveBeenCreated, RateLimited, ShortAPIError
from kling_prefect.ledger import StepLedger, step_key
from kling_prefect.models import KlingRequest
from kling_prefect.pricing import format_usd
from kling_prefect.records import SubmittedJob
from kling_prefect.tasks.connect import load_credentials, open_client

__all__ = ["DEFAULT_BUSY_TIMEOUT", "JobSubmissionKey", "submit_kling_job"]

#: Seconds a step keeps sending a create the account refused for a limit, unless told otherwise.
DEFAULT_BUSY_TIMEOUT = 3600.0
#: Backoff steps after which the pause between refused creates stops growing (the policy's cap applies first).
_MAX_BACKOFF_STEP = 30


@dataclass
class JobSubmissionKey(CachePolicy):
    """Cache key of :func:`submit_kling_job`: ``run_key`` + ``step`` + the request, namespaced; no secrets.

    Only those three: the credentials block, callback URL, rate limit, ``resubmit_uncertain`` and
    ``busy_timeout`` say *how* to create, not *what*, so changing them never pays for the step again.
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
    retries=0,  # a retried POST can be a second charge: never (a refused create is sent again by the body)
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
    busy_timeout: float | None = DEFAULT_BUSY_TIMEOUT,
) -> SubmittedJob:
    """Create one job at the vendor, exactly once per (``run_key``, ``step``, request).

    Its result (the job) is cached on those three: a flow retry or a re-run with the same ``run_key`` gets the
    same job back without running this body. When the body runs, it first reads the step's ledger
    (:mod:`kling_prefect.ledger`): if an earlier attempt's create may have been accepted, it raises
    ``JobMayHaveBeenCreated`` and sends nothing, unless ``resubmit_uncertain``. It notes the create before
    the POST and replaces the note with the job the moment the vendor answers, so an attempt whose cached result
    was never saved resumes that job (``replacing``: the id of a job that failed at the vendor, which a
    resubmission replaces instead of resuming).

    A create the vendor *refused* for a limit, in an error envelope (``AccountBusy``: the account runs as many
    jobs as it allows, HTTP 429 / code 1303; ``RateLimited``: its request rate), made no job: the note is
    cleared, and the create is sent again after a pause (the vendor's ``Retry-After``, else capped exponential
    backoff with jitter from the credentials' retry settings), holding neither the step's lease nor a slot of
    the account's limiter meanwhile (:class:`~kling_prefect.concurrency.AccountLimiter`), for up to
    ``busy_timeout`` seconds (``None``: no end); then that refusal is raised, and a re-run may send the step.
    A create whose outcome is unknown (a timeout, a reset, a 5xx page) raises ``JobMayHaveBeenCreated`` and is
    never sent again automatically. ``create_rate_limit`` names a Prefect rate limit taken before each create.

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
    limiter = account_limiter(credentials)
    slot = current_account_slot()
    # Called by generate_video, the step's slot is held until its job ends; called alone, only for the create
    # (the job's end is not seen here, so a refusal then teaches the limiter nothing).
    tracked = slot is not None and slot.limiter is limiter
    if slot is None or not tracked:
        slot = AccountSlot(limiter)
    retry = credentials.retry_policy()
    deadline = None if busy_timeout is None else time.monotonic() + busy_timeout
    refusals = 0
    try:
        while True:
            await slot.acquire()
            if refusals:  # said now, not at the refusal: answers that crossed it have been counted by now
                _tell_learned_limit_once(logger, limiter)
            outcome = await _create_once(
                ledger,
                credentials,
                credentials_block,
                slot,
                callback_url=callback_url,
                create_rate_limit=create_rate_limit,
                resubmit_uncertain=resubmit_uncertain,
                replacing=replacing,
            )
            if isinstance(outcome, SubmittedJob):
                if outcome.remembered:
                    logger.warning(
                        "%s: resuming job %s, created by an earlier attempt (nothing is paid again)",
                        step,
                        outcome.job_id,
                    )
                    return outcome
                submitted = outcome
                break
            # Refused, made nothing: pause holding nothing (no lease, no account slot), then send it again.
            busy = isinstance(outcome, AccountBusy)
            slot.refused(busy=busy and tracked)
            refusals += 1
            pause = retry.delay(min(refusals - 1, _MAX_BACKOFF_STEP), outcome.retry_after)
            if busy_timeout is not None and deadline is not None and time.monotonic() + pause > deadline:
                _tell_learned_limit_once(logger, limiter)
                raise _gave_up(outcome, busy_timeout, refusals)
            logger.info(
                "%s: %s; nothing was created. Sending the create again in %.2f s%s (refusal %d)",
                step,
                outcome.message,
                pause,
                " and once a job of this account ends" if busy and tracked else "",
                refusals,
            )
            await anyio.sleep(pause)
    finally:
        if not tracked:
            slot.release()
    logger.info(
        "created %s job %s for step %r (estimated %s, vendor amount %s)",
        request.model_id,
        submitted.job_id,
        step,
        format_usd(submitted.estimated_cost),
        format_usd(submitted.amount),
    )
    events.emit_job_event(events.JOB_CREATED, submitted)
    progress.emit(progress.ProgressEvent(run_key, step, "queued", 0.02, submitted.job_id))
    return submitted


async def _create_once(
    ledger: StepLedger,
    credentials: ShortAPICredentials,
    credentials_block: str | None,
    slot: AccountSlot,
    *,
    callback_url: str | None,
    create_rate_limit: str | None,
    resubmit_uncertain: bool,
    replacing: str | None,
) -> SubmittedJob | RateLimited:
    """One decision and at most one POST, under the step's lease: the step's job (``remembered`` when an earlier
    attempt made it), or the vendor's refusal of a create that made nothing (to send again after a pause)."""
    # The decision (the ledger read), the POST and the record of its answer, under the step's lease: another
    # attempt of this step running now, in any process, waits here and then resumes the job this one made.
    async with ledger.creating(lease_url=credentials.lease_url_value(), lease_seconds=credentials.lease_seconds):
        earlier = await ledger.before_create(resubmit_uncertain=resubmit_uncertain, replacing=replacing)
        if earlier is not None:
            slot.accepted(created=False)  # that job may still be running at the account
            return replace(earlier, remembered=True)
        await create_rate_slot(create_rate_limit)
        client = await open_client(credentials_block, credentials=credentials)
        await ledger.note_create_sending()  # if this process dies while the request is out, later attempts know
        async with client:
            try:
                created = await client.create_job(ledger.request, callback_url=callback_url)
            except JobMayHaveBeenCreated as exc:
                await ledger.note_create_uncertain(exc)
                raise
            except ShortAPIError as exc:
                await ledger.note_create_refused()  # no job: a later attempt (or this one) may send it
                if refused_create(exc):
                    assert isinstance(exc, RateLimited)  # what refused_create says
                    return exc
                raise
        slot.accepted()
        submitted = SubmittedJob(
            job_id=created.job_id,
            model=ledger.request.model_id,
            run_key=ledger.run_key,
            step=ledger.step,
            args=ledger.request.to_args(),
            estimated_cost=created.estimated_cost,
            amount=created.amount,
            video_seconds=created.video_seconds,
            created_at=created.created_at,
            callback_url=created.callback_url,
        )
        await ledger.note_created(submitted)  # the job id, the moment it exists
    return submitted


def _tell_learned_limit_once(logger: Any, limiter: AccountLimiter) -> None:
    """Say once per flow run, in its log, what the account accepted and how to avoid its refusals."""
    context = TaskRunContext.get()
    run = str(getattr(getattr(context, "task_run", None), "flow_run_id", None) or "process")
    report = limiter.tell_once(run)
    if report is not None:
        jobs = f"{report.limit} job" + ("s" if report.limit != 1 else "")
        logger.warning(
            "%s. This process keeps at most %s in flight on the account from now on, probing for more slowly",
            report.describe(),
            jobs,
        )


def _gave_up(refusal: RateLimited, busy_timeout: float, refusals: int) -> RateLimited:
    """The refusal, saying that the step stopped sending it (nothing was created; a re-run sends it again)."""
    error = type(refusal)(
        f"{refusal.message}; refused {refusals} time(s) within busy_timeout ({busy_timeout:g} s), so the step "
        "stopped sending it. Nothing was created: a re-run with the same run key sends it again",
        retry_after=refusal.retry_after,
        status_code=refusal.status_code,
        raw=refusal.raw,
    )
    return error
