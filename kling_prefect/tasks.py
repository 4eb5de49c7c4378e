"""Prefect tasks: submit a job (once), wait for it (async, with a progress artifact), store its video.

The three are split on purpose:

- :func:`submit_kling_job` is the only call that costs money. It has **no retries**, and its result (the job
  id) is cached under a key made of an explicit ``run_key``, the ``step`` name and the request: a flow retry or
  a re-run with the same ``run_key`` gets the same job back instead of paying again. The API key is never part
  of the key or of any task parameter (tasks take the *name* of a credentials block).
- :func:`wait_for_kling_job` is async, never cached, polls with the client's backoff and keeps a progress
  artifact current. Retried only for resumable failures (timeouts, transport errors).
- :func:`store_kling_video` downloads the result as soon as the job succeeded (vendor URLs expire), checks the
  file decodes, stores it (local or S3) with a thumbnail. Retried on transient failures; cached per job.

Examples:
    ```python
    from prefect import flow
    from kling_prefect import KlingO3TextToVideo
    from kling_prefect.tasks import generate_video

    @flow
    async def one_clip():
        return await generate_video(KlingO3TextToVideo(prompt="A lighthouse at dawn"), run_key="lighthouse-1")
    ```
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from prefect import get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext
from prefect.results import ResultStore, get_result_store

from kling_prefect import media, progress
from kling_prefect.callbacks import CallbackReceiver
from kling_prefect.client import Job, PollPolicy, ShortAPIClient, shared_http_client
from kling_prefect.concurrency import create_rate_slot, job_slot
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import JobFailed, JobMayHaveBeenCreated, JobTimedOut, ShortAPIError, TransientError
from kling_prefect.models import (
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    KlingRequest,
)
from kling_prefect.storage import StorageSpec, StoredObject, artifact_key, safe_key, safe_name
from kling_prefect.waiting import JobKind, default_duration_model

# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SubmittedJob:
    """A created job, as remembered across retries and re-runs (no secrets)."""

    job_id: str
    model: str
    run_key: str
    step: str
    args: dict[str, Any]
    estimated_cost: Decimal
    amount: Decimal | None
    video_seconds: int
    created_at: float
    callback_url: str | None = None  # given to the vendor: the wait listens for it (see kling_prefect.callbacks)


@dataclass(frozen=True)
class FinishedJob:
    """A job that succeeded at the vendor, with its (expiring) result URLs."""

    submitted: SubmittedJob
    video_urls: tuple[str, ...]
    finished_at: float


@dataclass(frozen=True)
class StoredVideo:
    """A generated clip in the user's storage, checked to decode."""

    submitted: SubmittedJob
    video: StoredObject
    duration_seconds: float
    width: int
    height: int
    thumbnail: StoredObject | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.submitted.job_id

    @property
    def local_path(self) -> Path:
        if not self.video.local_path:
            raise FileNotFoundError(f"no local copy of {self.video.uri}")
        return Path(self.video.local_path)


# --------------------------------------------------------------------------------------------- keys


def request_fingerprint(request: KlingRequest) -> str:
    """A stable digest of what a request asks for.

    Image URLs are reduced to scheme, host and path: a presigned URL for the same frame gets a new signature
    each time it is issued, and that must not look like a new request (it would pay for the clip again).
    """

    def stable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stable(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [stable(v) for v in value]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        if isinstance(value, str) and value.startswith("data:"):
            return "data:" + hashlib.sha256(value.encode()).hexdigest()
        return value

    body = json.dumps([request.model_id, stable(request.to_args())], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class JobSubmissionKey(CachePolicy):
    """Cache key of :func:`submit_kling_job`: ``run_key`` + ``step`` + the request, namespaced; no secrets."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        request: KlingRequest = inputs["request"]
        material = json.dumps([inputs["run_key"], inputs["step"], request_fingerprint(request)])
        return "kling-submit-" + hashlib.sha256(material.encode()).hexdigest()


@dataclass
class StoredVideoKey(CachePolicy):
    """Cache key of :func:`store_kling_video`: one stored copy per job id and destination."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        finished: FinishedJob = inputs["job"]
        storage: StorageSpec = inputs["storage"]
        material = json.dumps([finished.submitted.job_id, storage.model_dump(), inputs.get("key")])
        return "kling-store-" + hashlib.sha256(material.encode()).hexdigest()


# --------------------------------------------------------------------------------------------- notes


def note_key(kind: str, run_key: str, step: str, request: KlingRequest) -> str:
    """Result-storage key of a note about one step, keyed like its cached submission (run key, step, request)."""
    digest = hashlib.sha256(json.dumps([kind, run_key, step, request_fingerprint(request)]).encode()).hexdigest()
    return f"kling-{kind}-{digest}"


def uncertain_create_key(run_key: str, step: str, request: KlingRequest) -> str:
    """Result-storage key of the note left while (and when) a step's create may have been accepted."""
    return note_key("uncertain-create", run_key, step, request)


def _notes() -> ResultStore:
    """Where the notes live: the run's result storage (where cached submissions live too), as self-describing
    records (the flow's own store keeps no metadata, so it cannot tell whether a key exists)."""
    return ResultStore(result_storage=get_result_store().result_storage)


async def read_note(key: str) -> Any:
    """The note under ``key``; ``None`` when there is none (or it was cleared); a placeholder when unreadable."""
    store = _notes()
    if not await store.aexists(key):
        return None
    try:
        return (await store.aread(key)).result
    except Exception:  # unreadable: still a reason not to pay again blindly
        return "(the note could not be read)"


async def write_note(key: str, value: Any) -> None:
    """Write (``None``: clear) the note under ``key``; a storage failure is logged, not raised."""
    try:
        await _notes().awrite(value, key=key)
    except Exception as exc:  # the error itself still reaches the user
        get_run_logger().warning("could not write the note %s to result storage: %s", key, exc)


# --------------------------------------------------------------------------------------------- helpers


async def load_credentials(credentials_block: str | None) -> ShortAPICredentials:
    """A saved :class:`ShortAPICredentials` block by name, else ``SHORTAPI_KEY``/``SHORTAPI_BASE_URL``."""
    if credentials_block:
        return await ShortAPICredentials.aload(credentials_block)
    return ShortAPICredentials.from_env()


async def open_client(credentials_block: str | None, poll: PollPolicy | None = None) -> ShortAPIClient:
    """A client for a task, on the process's shared connection pools for this event loop (one for API calls,
    one for downloads). Closing it (``async with``) leaves the pools open for the other tasks: see
    :func:`~kling_prefect.client.shared_http_client`.
    """
    credentials = await load_credentials(credentials_block)
    return ShortAPIClient(
        **credentials.client_options(),
        poll=poll,
        http_client=shared_http_client("api"),
        download_client=shared_http_client("download"),
        callbacks=await _callback_receiver(credentials),
    )


#: The receivers tasks in this process got, by (callback_url, callback_listen): each one looked up (and
#: said in the run's log) once, not with a thread hop per task run.
_task_receivers: dict[tuple[str, str], CallbackReceiver | None] = {}


async def _callback_receiver(credentials: ShortAPICredentials) -> CallbackReceiver | None:
    """The process's receiver for the credentials' ``callback_url``, said once per process in the run's log."""
    if not credentials.callback_url:
        return None
    key = (credentials.callback_url, credentials.callback_listen)
    if key in _task_receivers:
        return _task_receivers[key]
    # Started once per process (binding and a self-test): off the event loop.
    receiver = await anyio.to_thread.run_sync(credentials.callback_receiver)
    if key not in _task_receivers:  # another task may have got here first: log once
        _task_receivers[key] = receiver
        logger = get_run_logger()
        if receiver is None:
            logger.warning("callbacks are off in this process (the listener could not start); polling only")
        else:
            logger.info("listening for the vendor's callbacks at %s", receiver.public_url)
    return receiver


async def _retry_resumable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a wait or a download only when doing so cannot cost money and may succeed.

    Async on purpose: in async code ``state.result()`` is a coroutine, and a sync check would never see
    the exception (so it would never retry).
    """
    outcome = await state.aresult(raise_on_failure=False)
    return isinstance(outcome, (TransientError, JobTimedOut, OSError))


# --------------------------------------------------------------------------------------------- tasks


@task(
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
) -> SubmittedJob:
    """Create one job at the vendor, exactly once per (``run_key``, ``step``, request).

    Raises ``JobMayHaveBeenCreated`` when the create failed after the request was sent; it is not retried.
    ``create_rate_limit`` names a Prefect rate limit taken before the create (only when the job is really
    created: a cached submission does not run this body).
    """
    logger = get_run_logger()
    await create_rate_slot(create_rate_limit)
    client = await open_client(credentials_block)
    # Noted before the POST and cleared once its answer is known: if this process dies while the request is
    # out, the job may exist and be billed without its id being cached, and the flows then refuse to pay for
    # the step again without resubmit_uncertain (see flows.make_clip).
    marker = uncertain_create_key(run_key, step, request)
    await write_note(
        marker,
        {
            "run_key": run_key,
            "step": step,
            "noted_at": time.time(),
            "message": "a create was being sent when that attempt stopped, and its answer was never recorded",
        },
    )
    async with client:
        try:
            created = await client.create_job(request, callback_url=callback_url)
        except JobMayHaveBeenCreated:
            raise  # the note stays (the flows replace it with this error's details)
        except ShortAPIError:
            await write_note(marker, None)  # refused, or never sent: no job was created
            raise
    await write_note(marker, None)  # the job id is cached with this task's result
    logger.info(
        "created %s job %s for step %r (estimated $%s, vendor amount %s)",
        request.model_id,
        created.job_id,
        step,
        created.estimated_cost,
        created.amount if created.amount is not None else "n/a",
    )
    progress.emit(progress.ProgressEvent(run_key, step, "submitted", 0.02, created.job_id))
    return SubmittedJob(
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


_STATE_PROGRESS = {"queued": 5.0, "processing": 10.0, "succeeded": 100.0}


def job_kind(job: SubmittedJob) -> JobKind:
    """The :class:`~kling_prefect.waiting.JobKind` a submitted job's duration is learned under."""
    return JobKind.from_args(job.model, job.args, job.video_seconds)


def _creeping_percent(elapsed: float, expected: float | None) -> float:
    """Progress of a running job between its status changes: towards 95%, along its expected duration."""
    if expected and expected > 0:
        return 10 + 85 * min(elapsed / expected, 1.0)
    return 10 + 85 * elapsed / (elapsed + 60)


@task(
    name="wait-for-kling-job",
    task_run_name="wait-{job.step}",
    cache_policy=NO_CACHE,  # a cached status would be served forever
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_resumable,
)
async def wait_for_kling_job(
    job: SubmittedJob,
    credentials_block: str | None = None,
    timeout: float = 3600.0,
    poll_interval: float = 2.0,
    max_poll_interval: float | None = None,
) -> FinishedJob:
    """Wait until the job ends, keeping a progress artifact current; return it when it succeeded.

    Queries follow :meth:`~kling_prefect.client.PollPolicy.learned_interval`: none while jobs of this kind
    (model, mode, seconds, audio) seen in this process say it cannot be done yet, then every ``poll_interval``
    seconds while it may be; before any such job was seen, intervals double from ``poll_interval`` up to 10x
    it. ``max_poll_interval`` (default 15x ``poll_interval``) caps the intervals of a job long overdue. Every
    wait in the process shares one HTTP pool (per event loop). With callbacks configured on the credentials
    (``callback_url``), the job's callback triggers the query that sees its end, and queries otherwise come
    every 30x ``poll_interval`` only, to catch a lost callback (see :mod:`kling_prefect.callbacks`).

    Raises ``JobFailed`` (the vendor's message and the job id), ``UnknownJobStatus`` or ``JobTimedOut``.
    """
    logger = get_run_logger()
    key = artifact_key(job.run_key, job.step, "progress")
    artifact_id = await acreate_progress_artifact(
        0.0, key=key, description=f"{job.model} job {job.job_id} ({job.step})"
    )
    kind = job_kind(job)
    durations = default_duration_model()
    current = {"percent": 0.0, "state": "submitted", "shown": 0.0}

    async def report(percent: float, state: str) -> None:
        percent = max(current["percent"], min(percent, 100.0))
        current.update(percent=percent, state=state)
        if percent >= current["shown"] + 1 or percent >= 100:  # whole points only: each one is an API call
            current["shown"] = percent
            await aupdate_progress_artifact(artifact_id, percent)
        progress.emit(progress.ProgressEvent(job.run_key, job.step, state, percent / 100, job.job_id))

    async def on_status(update: Job) -> None:
        logger.info("job %s is %s (status %r)", job.job_id, update.state, update.status)
        await report(_STATE_PROGRESS.get(update.state, current["percent"]), update.state)

    async def tick() -> None:
        # Between status changes, creep towards 95% so a long job visibly moves.
        while True:
            await anyio.sleep(15 * poll_interval)  # 30 s by default: a progress bar, not a hot loop of API calls
            if current["state"] in ("submitted", "queued", "processing"):
                estimate = durations.estimate(kind)
                elapsed = max(0.0, time.time() - job.created_at)
                await report(_creeping_percent(elapsed, estimate.median if estimate else None), current["state"])

    poll = PollPolicy.scaled(poll_interval, max_poll_interval)
    client = await open_client(credentials_block, poll)
    failure: ShortAPIError | None = None
    async with client, anyio.create_task_group() as group:
        group.start_soon(tick)
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
        progress.emit(
            progress.ProgressEvent(job.run_key, job.step, "error", current["percent"] / 100, job.job_id, str(failure))
        )
        raise failure
    await report(100.0, "succeeded")
    return FinishedJob(submitted=job, video_urls=done.video_urls, finished_at=time.time())


@task(
    name="store-kling-video",
    task_run_name="store-{job.submitted.step}",
    cache_policy=StoredVideoKey(),
    persist_result=True,
    retries=3,
    retry_delay_seconds=[1, 5, 20],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_resumable,
)
async def store_kling_video(
    job: FinishedJob,
    storage: StorageSpec,
    key: str | None = None,
    credentials_block: str | None = None,
    thumbnail: bool = True,
) -> StoredVideo:
    """Download the result into ``storage`` (key default ``<step>.mp4``), verify it decodes, add a thumbnail."""
    logger = get_run_logger()
    submitted = job.submitted
    key = key or safe_key(f"{safe_name(submitted.step)}.mp4")
    store = await storage.open()
    work = Path(storage.directory)
    local = work / key
    for stale in local.parent.glob(f".{local.name}.*.part"):  # left by a process killed mid-download
        stale.unlink(missing_ok=True)
    client = await open_client(credentials_block)
    async with client:
        await client.download(job.video_urls[0], local, job_id=submitted.job_id)
    info = (
        await anyio.to_thread.run_sync(media.probe, local)
        if await anyio.to_thread.run_sync(media.is_decodable_mp4, local)
        else None
    )
    if info is None or local.stat().st_size == 0:
        local.unlink(missing_ok=True)
        raise ShortAPIError("the downloaded result is not a decodable MP4 video", job_id=submitted.job_id)
    stored = await store.put(local, key)
    thumb = None
    if thumbnail:
        thumb_path = local.with_suffix(".thumb.png")
        await anyio.to_thread.run_sync(media.make_thumbnail, local, thumb_path)
        thumb = await store.put(thumb_path, key.rsplit(".", 1)[0] + ".thumb.png")
    logger.info(
        "stored job %s as %s (%d bytes, %.1f s)", submitted.job_id, stored.uri, stored.size_bytes, info.duration_seconds
    )
    progress.emit(
        progress.ProgressEvent(submitted.run_key, submitted.step, "stored", 1.0, submitted.job_id, stored.uri)
    )
    if stored.local_path is None:
        stored = replace(stored, local_path=str(local))
    return StoredVideo(
        submitted=submitted,
        video=stored,
        duration_seconds=info.duration_seconds,
        width=info.width,
        height=info.height,
        thumbnail=thumb,
    )


async def generate_video(
    request: KlingRequest,
    *,
    run_key: str,
    step: str = "clip",
    storage: StorageSpec | None = None,
    credentials_block: str | None = None,
    timeout: float = 3600.0,
    poll_interval: float = 2.0,
    callback_url: str | None = None,
    jobs_limit: str | None = None,
    create_rate_limit: str | None = None,
) -> StoredVideo:
    """Submit, wait and store one clip, as three task runs. Call it from a flow.

    A flow retry or re-run with the same ``run_key`` and ``step`` resumes the job already created; if that job
    had failed at the vendor, the step is submitted again (once).

    ``jobs_limit`` names a Prefect global concurrency limit: one slot is held from before the create until the
    job is terminal, so all workers together keep at most that many jobs at the vendor (strict: a missing
    limit is an error). ``create_rate_limit`` names a rate limit taken before each real create.
    """
    submit_args: dict[str, Any] = {
        "run_key": run_key,
        "step": step,
        "credentials_block": credentials_block,
        "callback_url": callback_url,
        "create_rate_limit": create_rate_limit,
    }
    wait_args: dict[str, Any] = {
        "credentials_block": credentials_block,
        "timeout": timeout,
        "poll_interval": poll_interval,
    }
    submitted: SubmittedJob | None = None
    try:
        async with job_slot(jobs_limit):
            state = await submit_kling_job(request, return_state=True, **submit_args)
            submitted = await state.aresult()
            try:
                finished = await wait_for_kling_job(submitted, **wait_args)
            except JobFailed:
                # Only a *failed* job is resubmitted: an undocumented status (UnknownJobStatus) may still turn
                # into a success, so that job is reported, never paid for twice.
                if not state.is_completed() or state.name != "Cached":
                    raise  # created and failed in this run: paying again is the user's decision
                # The remembered job failed in an earlier attempt (a flow retry or a re-run with this run key):
                # the step still has to be made, so submit it again, once.
                get_run_logger().warning(
                    "job %s of step %r had failed earlier; submitting the step again", submitted.job_id, step
                )
                submitted = await submit_kling_job.with_options(refresh_cache=True)(request, **submit_args)
                finished = await wait_for_kling_job(submitted, **wait_args)
        return await store_kling_video(finished, storage=storage or StorageSpec(), credentials_block=credentials_block)
    except ShortAPIError as exc:
        if submitted is not None:
            exc.submitted = submitted  # the job exists and was billed: keep what it cost on the error
        raise


def _model_helper(model: type[KlingRequest]) -> Any:
    """A ``generate_video`` front for one model: request fields as keyword arguments, validated at the call."""

    async def generate(
        *, run_key: str, step: str = "clip", storage: StorageSpec | None = None, **fields: Any
    ) -> StoredVideo:
        options = {k: fields.pop(k) for k in _GENERATE_OPTIONS if k in fields}
        return await generate_video(model(**fields), run_key=run_key, step=step, storage=storage, **options)

    name = model.model_id.split("/", 1)[1].replace("-", "_").replace(".", "").replace("/", "_")
    generate.__name__ = generate.__qualname__ = name
    generate.__doc__ = (
        f"Generate one ``{model.model_id}`` clip in a flow: submit, wait, store (see ``generate_video``).\n\n"
        f"Request fields are those of :class:`~kling_prefect.models.{model.__name__}`; also accepts "
        f"{', '.join(_GENERATE_OPTIONS)}.\n\n"
        "Examples:\n"
        "    ```python\n"
        "    @flow\n"
        "    async def daily():\n"
        f"        return await {name}(prompt='A lighthouse at dawn', run_key='daily-1')\n"
        "    ```\n"
    )
    return generate


_GENERATE_OPTIONS = ("credentials_block", "timeout", "poll_interval", "callback_url", "jobs_limit", "create_rate_limit")

kling_o1_text_to_video = _model_helper(KlingO1TextToVideo)
kling_o3_text_to_video = _model_helper(KlingO3TextToVideo)
kling_o1_image_to_video = _model_helper(KlingO1ImageToVideo)
kling_30_text_to_video = _model_helper(Kling30TextToVideo)
kling_26_text_to_video = _model_helper(Kling26TextToVideo)
