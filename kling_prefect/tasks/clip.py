"""The one path that makes a clip: submit -> wait -> store, with the money-safety rules inside it.

:func:`generate_video` is what every flow, every per-model helper and every user's own flow calls. It holds the
jobs-in-flight slot from before the create until the job is terminal, and recovers only in ways that cannot
create a second job:

- ``job/create`` is sent at most once per step and attempt (:func:`~kling_prefect.tasks.submit.submit_kling_job`,
  cached on run key + step + request, never retried); a create that may have been accepted refuses later
  attempts of the step until ``resubmit_uncertain=True`` (:mod:`kling_prefect.ledger`);
- a create the vendor *refused* for a limit (the account's concurrency, its request rate) made nothing: it is
  sent again after a pause, within ``busy_timeout``, and the clip holds a slot of the process's
  :class:`~kling_prefect.concurrency.AccountLimiter` from before its create until its job ended, so a process
  the account refused keeps no more jobs in flight than the account accepted;
- once the job exists, a transient failure (429, 5xx, reset, timeout) resumes that job, never creates another:
  at most :data:`STEP_ATTEMPTS` tries, spaced by the credentials' retry policy and the server's ``Retry-After``;
- an undocumented status (or success without a URL) is re-checked on the same job up to
  :data:`UNKNOWN_STATUS_RECHECKS` times, then raised with the raw payload; the job is noted in the ledger so a
  flow retry or re-run asks about it again instead of paying for the step again;
- a remembered job (from an earlier attempt or run) that failed at the vendor is submitted again, once; a job
  created and failed in this attempt is not (paying again is the caller's decision).
"""

from __future__ import annotations

from dataclasses import replace

import anyio
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from typing_extensions import TypedDict, Unpack

from kling_prefect.concurrency import account_step, job_slot
from kling_prefect.dispatch import dispatching
from kling_prefect.exceptions import JobFailed, JobMayHaveBeenCreated, ShortAPIError, TransientError, UnknownJobStatus
from kling_prefect.ledger import StepLedger
from kling_prefect.models import KlingRequest
from kling_prefect.records import FinishedJob, StoredVideo, SubmittedJob
from kling_prefect.storage import StorageSpec
from kling_prefect.tasks.connect import load_credentials
from kling_prefect.tasks.store import store_kling_video
from kling_prefect.tasks.submit import submit_kling_job
from kling_prefect.tasks.wait import wait_for_kling_job

__all__ = ["STEP_ATTEMPTS", "UNKNOWN_STATUS_RECHECKS", "ClipOptions", "generate_video"]

#: Tries of one step when it fails transiently (429, 5xx, resets) in a way that cannot create a second job.
STEP_ATTEMPTS = 5
#: Re-checks of a job that reported a status the vendor documents do not define, before giving up on it.
UNKNOWN_STATUS_RECHECKS = 3


class ClipOptions(TypedDict, total=False):
    """How a clip is made (all optional): where it goes and how the job is created and waited for.

    Attributes:
        storage: where the clip goes (default: ``kling-output/<run key>/``).
        credentials_block: name of a saved ``ShortAPICredentials`` block (default: the environment).
        timeout: seconds to wait for the job before ``JobTimedOut`` (the wait can be resumed).
        busy_timeout: seconds to keep sending a create the vendor refused for the account's concurrency or
            request rate (each refusal made nothing) before the step fails with that refusal; default:
            ``timeout``. ``None``: no end.
        poll_interval: seconds between queries while the job may be done: how late a finished job is noticed.
        callback_url: the URL the vendor calls when the job ends (default: the credentials' receiver, if any).
        jobs_limit: a Prefect global concurrency limit: one slot held from before the create until the job ends.
        create_rate_limit: a Prefect rate limit taken before each real create.
        resubmit_uncertain: submit the step even if an earlier create may have been accepted (check first).
    """

    storage: StorageSpec | None
    credentials_block: str | None
    timeout: float
    busy_timeout: float | None
    poll_interval: float
    callback_url: str | None
    jobs_limit: str | None
    create_rate_limit: str | None
    resubmit_uncertain: bool


@dispatching
async def generate_video(
    request: KlingRequest, *, run_key: str, step: str = "clip", **options: Unpack[ClipOptions]
) -> StoredVideo:
    """Make one clip, as task runs: submit (once), wait, store. Call it from a flow.

    A flow retry or a re-run with the same ``run_key`` and ``step`` resumes the job already created (nothing
    is paid again, nothing stored is rewritten); see the module documentation for every recovery rule.

    Args:
        request: the validated request (``KlingO3TextToVideo(...)``, ...).
        run_key: names the run: the same key resumes, a new key makes new clips (and a new folder).
        step: names the clip within the run (``clip-01``, ``item-0003``): its file is ``<step>.mp4``.
        **options: see :class:`ClipOptions`.

    Examples:
        ```python
        from prefect import flow
        from kling_prefect import KlingO3TextToVideo
        from kling_prefect.tasks import generate_video

        @flow
        async def one_clip():
            clip = await generate_video(KlingO3TextToVideo(prompt="A lighthouse at dawn"), run_key="lighthouse-1")
            return clip.video.uri  # file:///.../kling-output/lighthouse-1/clip.mp4
        ```
    """
    logger = get_run_logger()
    storage = options.get("storage")
    credentials_block = options.get("credentials_block")
    jobs_limit = options.get("jobs_limit")
    poll_interval = options.get("poll_interval", 2.0)

    async def wait(job: SubmittedJob) -> FinishedJob:
        finished: FinishedJob = await wait_for_kling_job(
            job,
            credentials_block=credentials_block,
            timeout=options.get("timeout", 3600.0),
            poll_interval=poll_interval,
        )
        return finished

    async def submit(replacing: str | None = None) -> tuple[SubmittedJob, bool]:
        """The step's job and whether it was remembered (created by an earlier attempt or run); ``replacing``:
        the id of a failed job to submit the step again for (its cached submission is not reused)."""
        submitter = submit_kling_job.with_options(refresh_cache=True) if replacing else submit_kling_job
        state: State[SubmittedJob] = await submitter(  # an async task here: awaited
            request,
            run_key=run_key,
            step=step,
            credentials_block=credentials_block,
            callback_url=options.get("callback_url"),
            create_rate_limit=options.get("create_rate_limit"),
            resubmit_uncertain=options.get("resubmit_uncertain", False),
            replacing=replacing,
            busy_timeout=options.get("busy_timeout", options.get("timeout", 3600.0)),
            return_state=True,
        )
        job: SubmittedJob = await state.aresult()
        return job, state.name == "Cached" or job.remembered

    ledger = StepLedger(run_key, step, request)
    resume = await ledger.unresolved_job()
    if resume is not None:
        logger.warning("%s: checking job %s again (its status was undocumented earlier)", step, resume.job_id)
    noted_unresolved = resume is not None
    resubmitted = False
    remembered = resume is not None  # the step's job was created by an earlier attempt or run
    transient = rechecks = 0
    credentials = await load_credentials(credentials_block)
    retry = credentials.retry_policy()
    # The clip's slot of the account's limiter: taken before its create, given back when its job ended.
    async with account_step(credentials) as account:
        while True:
            job: SubmittedJob | None = resume
            try:
                # The jobs limit first, then (in the submit task) the account's slot: one order, so a clip holding
                # one never waits for another clip holding the other.
                async with job_slot(jobs_limit):
                    if job is None:
                        job, remembered = await submit()
                    account.accepted(created=False)  # a resumed job counts too (no-op after a create)
                    try:
                        finished = await wait(job)
                    except JobFailed:
                        if not remembered or resubmitted:
                            raise
                        logger.warning(
                            "job %s of step %r had failed earlier; submitting the step again", job.job_id, step
                        )
                        resubmitted = True
                        if noted_unresolved:
                            await ledger.clear_unresolved()
                            noted_unresolved = False
                        account.release()  # that job ended
                        job, remembered = await submit(replacing=job.job_id)
                        account.accepted(created=False)
                        finished = await wait(job)
                account.release()  # the job ended: its slot of the account is free before the download
                stored: StoredVideo = await store_kling_video(
                    finished, storage=storage, credentials_block=credentials_block
                )
                if noted_unresolved:
                    await ledger.clear_unresolved()
                return replace(stored, resumed=remembered)
            except JobMayHaveBeenCreated:
                raise  # noted in the ledger by the submit task; never retried
            except ShortAPIError as exc:
                if job is not None and exc.submitted is None:
                    exc.submitted = job  # the job exists and was billed: keep what it cost on the error
                    exc.resumed = remembered
                if isinstance(exc, UnknownJobStatus) and job is not None and rechecks < UNKNOWN_STATUS_RECHECKS:
                    rechecks += 1
                    logger.warning(
                        "%s: job %s reported %s; querying the same job again (%d of %d), no new job is created",
                        step,
                        job.job_id,
                        exc.message,
                        rechecks,
                        UNKNOWN_STATUS_RECHECKS,
                    )
                    resume = job
                    await anyio.sleep(poll_interval)
                    continue
                if isinstance(exc, TransientError) and job is not None and transient + 1 < STEP_ATTEMPTS:
                    transient += 1
                    pause = retry.delay(transient - 1, getattr(exc, "retry_after", None))
                    logger.warning(
                        "%s: %s; resuming job %s in %.1f s (try %d of %d)",
                        step,
                        exc,
                        job.job_id,
                        pause,
                        transient + 1,
                        STEP_ATTEMPTS,
                    )
                    resume = job
                    await anyio.sleep(pause)
                    continue
                if isinstance(exc, UnknownJobStatus) and job is not None:
                    # Remembered, so a flow retry or a re-run asks about this job again instead of paying for the
                    # step a second time (the job may still succeed).
                    await ledger.note_unresolved(job)
                raise
