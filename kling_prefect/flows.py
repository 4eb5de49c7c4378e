"""Ready flows: one clip, a chain of continuations joined into one video, and a batch of prompts.

Every flow validates all its parameters and requests and checks ``max_cost_usd`` against the estimate
**before** creating any job, takes a ``run_key`` (a re-run with the same key resumes the jobs already created;
by default the flow run id, so Prefect flow retries resume too), stores outputs locally or in S3
(``s3_bucket_block``), and leaves a summary, a table, links and thumbnails as artifacts.

Recovery never pays twice: ``job/create`` is sent at most once per step and attempt (a refused create fails
the step); a step is tried again inside the run only by resuming the job that exists; an undocumented job
status is re-checked on the same job; and a create that may have been accepted
(:class:`~kling_prefect.exceptions.JobMayHaveBeenCreated`) is remembered in Prefect's result storage, so a
flow retry or a re-run with the same ``run_key`` refuses to submit that step again until told to with
``resubmit_uncertain=True``.

``jobs_limit`` names a Prefect global concurrency limit on jobs in flight across all workers (create it with
``kling-prefect setup``); ``create_rate_limit`` a rate limit on creates.

Secrets never travel as parameters: flows take the *name* of a ``ShortAPICredentials`` block, or read
``SHORTAPI_KEY``/``SHORTAPI_BASE_URL`` from the environment.

Examples:
    ```python
    from kling_prefect.flows import continuation

    result = continuation(["A paper boat sets sail", "It drifts into a storm", "It reaches a sunny shore"])
    result.final.uri  # 'file:///.../kling-output/<run key>/final.mp4'
    ```
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import ValidationError

from kling_prefect import media
from kling_prefect.artifacts import (
    ClipRecord,
    publish_clip_artifacts,
    publish_run_artifacts,
    safe_amount,
    totals,
)
from kling_prefect.batchfile import BatchItem, describe_validation_error, load_batch_items
from kling_prefect.client import RetryPolicy
from kling_prefect.concurrency import job_slot
from kling_prefect.exceptions import (
    BudgetExceeded,
    InvalidInput,
    JobMayHaveBeenCreated,
    ShortAPIError,
    TransientError,
    UnknownJobStatus,
)
from kling_prefect.models import KlingO1ImageToVideo, KlingRequest, request_model_for
from kling_prefect.pricing import estimate_cost
from kling_prefect.storage import StorageSpec, StoredObject, safe_name
from kling_prefect.tasks import (
    StoredVideo,
    SubmittedJob,
    generate_video,
    load_credentials,
    note_key,
    read_note,
    store_kling_video,
    uncertain_create_key,
    wait_for_kling_job,
    write_note,
)

DEFAULT_MODEL = "kling-o3"
# Stands in for the previous clip's last frame when estimating and validating a chain before it runs.
PLACEHOLDER_FRAME = "https://placeholder.invalid/previous-clip-last-frame.png"
RUN_KEY_MAX = 64
MIN_POLL_INTERVAL = 0.01  # seconds; anything shorter is a hot loop against the vendor
MAX_POLL_INTERVAL = 3600.0
MAX_CONCURRENCY = 1000
#: Tries of one step when it fails transiently (429, 5xx, resets) in a way that cannot create a second job.
STEP_ATTEMPTS = 5
#: Re-checks of a job that reported a status the vendor documents do not define, before giving up on it.
UNKNOWN_STATUS_RECHECKS = 3
ERROR_TEXT_LIMIT = 500


@dataclass
class RunResult:
    """What a flow run produced: one record per requested clip, the joined video for chains, the totals."""

    run_key: str
    records: list[ClipRecord]
    final: StoredObject | None = None
    summary_artifact: str | None = None
    clips: list[StoredVideo] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> list[ClipRecord]:
        return [r for r in self.records if r.status != "stored"]

    def as_dict(self) -> dict[str, Any]:
        sums = totals(self.records)
        return {
            "run_key": self.run_key,
            "final": None if self.final is None else {"uri": self.final.uri, "local_path": self.final.local_path},
            "summary_artifact": self.summary_artifact,
            "jobs": sums["jobs"],
            "stored": sums["succeeded"],
            "video_seconds": sums["video_seconds"],
            "estimated_cost_usd": str(sums["estimated_cost"]),
            "vendor_amount_usd": str(sums["vendor_amount"]),
            "clips": [
                {
                    "step": r.step,
                    "status": r.status,
                    "job_id": r.job_id,
                    "uri": r.uri,
                    "prompt": r.prompt,
                    "model": r.model,
                    "error": r.error,
                }
                for r in self.records
            ],
        }


# --------------------------------------------------------------------------------------------- validation


def check_run_key(run_key: str | None) -> str | None:
    """``run_key`` itself when it is usable as a key and a folder name; :class:`InvalidInput` otherwise.

    Keys are not silently rewritten: two different keys must never name the same jobs.
    """
    if run_key is None:
        return None
    if not isinstance(run_key, str) or not run_key or safe_name(run_key, max_length=RUN_KEY_MAX) != run_key:
        raise InvalidInput(
            "run_key",
            f"use 1 to {RUN_KEY_MAX} letters, digits, '.', '_' or '-', starting and ending with a letter or digit "
            f"(no '..'), got {_shown(run_key)}",
        )
    return run_key


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    optional: bool = False,
) -> None:
    """Raise :class:`InvalidInput` naming ``name`` unless ``value`` is a finite number within the bounds."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise InvalidInput(name, f"must be a number, got {_shown(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(name, f"must be a finite number, got {_shown(value)}")
    if minimum is not None and (number <= minimum if exclusive_minimum else number < minimum):
        raise InvalidInput(
            name, f"must be {'greater than' if exclusive_minimum else 'at least'} {minimum}, got {value}"
        )
    if maximum is not None and number > maximum:
        raise InvalidInput(name, f"must be at most {maximum}, got {value}")


def check_run_options(
    *,
    run_key: str | None,
    max_cost_usd: Any,
    poll_interval: Any,
    timeout_seconds: Any,
    output_dir: str | None,
) -> None:
    """The checks every flow makes on its common parameters, before anything else."""
    check_run_key(run_key)
    check_number("max_cost_usd", max_cost_usd, minimum=0, optional=True)
    check_number("poll_interval", poll_interval, minimum=MIN_POLL_INTERVAL, maximum=MAX_POLL_INTERVAL)
    check_number("timeout_seconds", timeout_seconds, minimum=0, exclusive_minimum=True)
    if output_dir is not None:
        if not str(output_dir).strip():
            raise InvalidInput("output_dir", "must not be empty")
        if Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise InvalidInput("output_dir", f"{output_dir} exists and is not a directory")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid_request(where: str, error: ValidationError) -> InvalidInput:
    return InvalidInput(where, describe_validation_error(error))


# --------------------------------------------------------------------------------------------- building blocks


def build_request(
    model: str,
    prompt: str,
    *,
    duration: int | str | None = None,
    aspect_ratio: str | None = None,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> KlingRequest:
    """A validated request for ``model`` (short name or full id); unset arguments keep the model's defaults.

    Raises ``KeyError`` for an unknown model, :class:`InvalidInput` when ``options`` repeats an argument, and
    pydantic's ``ValidationError`` (naming the field) for an invalid request.
    """
    model_class = model_class_for(model)
    explicit = {"prompt": prompt, "duration": duration, "aspect_ratio": aspect_ratio, "mode": mode}
    if options is not None and not isinstance(options, dict):
        raise InvalidInput("options", f"must be an object of request fields, got {_shown(options)}")
    for name in options or {}:
        if name == "model" or (name in explicit and (name == "prompt" or explicit[name] is not None)):
            raise InvalidInput("options", f"{name!r} is a parameter of its own; do not repeat it in options")
    fields: dict[str, Any] = {"prompt": prompt, **(options or {})}
    for name, value in (("duration", duration), ("aspect_ratio", aspect_ratio), ("mode", mode)):
        if value is not None:
            fields[name] = value
    return model_class.model_validate(fields)


def model_class_for(model: str) -> type[KlingRequest]:
    """The request model for a short name or full id; :class:`InvalidInput` naming ``model`` otherwise."""
    if not isinstance(model, str):
        raise InvalidInput("model", f"must be a model name, got {_shown(model)}")
    try:
        return request_model_for(model)
    except KeyError as exc:
        raise InvalidInput("model", str(exc.args[0])) from None


def plan_chain(
    model: str,
    prompts: list[str],
    *,
    duration: int | str | None = None,
    aspect_ratio: str | None = "16:9",
    mode: str | None = None,
    continuation_duration: int = 5,
    continuation_mode: str = "pro",
    options: dict[str, Any] | None = None,
) -> list[KlingRequest]:
    """The validated requests of a chain: a text-to-video clip, then one ``frame`` continuation per prompt.

    Continuations carry a placeholder image until the previous clip's last frame exists; validation and cost
    are the same either way. Errors name the parameter (``prompts[2]``, ``continuation_duration``, ...).
    """
    if not isinstance(prompts, list) or not prompts:
        raise InvalidInput("prompts", "give at least one prompt")
    for index, text in enumerate(prompts):
        if not isinstance(text, str):
            raise InvalidInput(f"prompts[{index}]", f"must be text, got {_shown(text)}")
    if continuation_duration not in (5, 10) or isinstance(continuation_duration, bool):
        raise InvalidInput(
            "continuation_duration",
            f"must be 5 or 10 (a continuation starts from one frame), got {continuation_duration!r}",
        )
    if continuation_mode not in ("std", "pro"):
        raise InvalidInput("continuation_mode", f"must be 'std' or 'pro', got {_shown(continuation_mode)}")
    if model_class_for(model) is KlingO1ImageToVideo:
        raise InvalidInput("model", f"{model!r} is image-to-video; the first clip needs a text-to-video model")
    first = build_request(model, prompts[0], duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    chain: list[KlingRequest] = [first]
    for index, text in enumerate(prompts[1:], start=1):
        try:
            chain.append(
                KlingO1ImageToVideo(
                    action="frame",
                    prompt=text,
                    images=[PLACEHOLDER_FRAME],
                    duration=continuation_duration,  # type: ignore[arg-type]
                    mode=continuation_mode,  # type: ignore[arg-type]
                )
            )
        except ValidationError as exc:
            raise _invalid_request(f"prompts[{index}]", exc) from None
    return chain


def check_budget(requests: list[KlingRequest], max_cost_usd: float | Decimal | None) -> Decimal:
    """Raise :class:`BudgetExceeded` (creating nothing) when the estimate is over the budget; return the estimate.

    The estimate covers every request of the run (a whole batch or chain), from the documented rates.
    """
    total = sum((estimate_cost(r) for r in requests), Decimal(0))
    if max_cost_usd is not None:
        check_number("max_cost_usd", max_cost_usd, minimum=0)
        budget = Decimal(str(max_cost_usd))
        if total > budget:
            raise BudgetExceeded(
                f"estimated ${total:.3f} for {len(requests)} job(s) exceeds max_cost_usd ${budget:.2f} by "
                f"${total - budget:.3f}; nothing was created"
            )
    return total


def resolve_run_key(run_key: str | None) -> str:
    """The explicit key (validated, never rewritten), else this flow run's id (stable across flow retries)."""
    if run_key is not None:
        return check_run_key(run_key) or ""
    key = flow_run.get_id() or "local"
    return safe_name(str(key), max_length=RUN_KEY_MAX)


def storage_for(run_key: str, output_dir: str | None, s3_bucket_block: str | None, s3_prefix: str) -> StorageSpec:
    directory = output_dir or str(Path("kling-output") / run_key)
    prefix = "/".join(p for p in (s3_prefix.strip("/"), run_key) if p)
    return StorageSpec(directory=directory, s3_bucket_block=s3_bucket_block, prefix=prefix)


def record_for(
    step: str, request: KlingRequest, stored: StoredVideo | None = None, error: BaseException | None = None
) -> ClipRecord:
    """One row of the run's record. Vendor-reported amounts that are not plain money are shown as unknown."""
    prompt = str(getattr(request, "prompt", "") or "")
    if stored is not None:
        job = stored.submitted
        return ClipRecord(
            step=step,
            prompt=prompt,
            model=request.model_id,
            status="stored",
            job_id=job.job_id,
            video_seconds=job.video_seconds,
            estimated_cost=job.estimated_cost,
            amount=safe_amount(job.amount),
            uri=stored.video.uri,
            url=stored.video.url,
            thumbnail_url=stored.thumbnail.url if stored.thumbnail else None,
        )
    submitted = getattr(error, "submitted", None)
    job_id = submitted.job_id if submitted is not None else getattr(error, "job_id", None)
    text = f"{type(error).__name__}: {error}" if error else None
    if text and len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "…"
    return ClipRecord(
        step=step,
        prompt=prompt,
        model=request.model_id,
        status="failed",
        job_id=job_id,
        video_seconds=request.video_seconds if job_id else 0,
        estimated_cost=estimate_cost(request) if job_id else None,
        amount=safe_amount(submitted.amount) if submitted is not None else None,
        error=text,
    )


# --------------------------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class StepOptions:
    """How every step of one run is made (shared by all its steps)."""

    run_key: str
    storage: StorageSpec
    credentials_block: str | None = None
    timeout: float = 3600.0
    poll_interval: float = 2.0
    jobs_limit: str | None = None
    create_rate_limit: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resubmit_uncertain: bool = False


def unresolved_job_key(run_key: str, step: str, request: KlingRequest) -> str:
    """Result-storage key of the note naming a step's job that last reported an undocumented status."""
    return note_key("unresolved-job", run_key, step, request)


async def make_clip(request: KlingRequest, step: str, options: StepOptions) -> StoredVideo:
    """Submit, wait and store one step (see :func:`~kling_prefect.tasks.generate_video`), recovering only in
    ways that cannot create a second job:

    - ``job/create`` is never sent twice: a create refused with 429, 5xx or an error envelope fails the step
      (the vendor's status alone does not prove nothing was charged). Once the job exists, a transient failure
      (429, 5xx, reset, timeout) resumes that job (queried and stored), never creates another. At most
      :data:`STEP_ATTEMPTS` tries, spaced by the credentials' retry policy and the server's ``Retry-After``.
    - an undocumented status (or success without a URL) is re-checked on the same job up to
      :data:`UNKNOWN_STATUS_RECHECKS` times, then raised with the raw payload; the job is noted in result
      storage, and later attempts at this step (flow retries, re-runs with the same run key) ask about that
      job again rather than submitting the step again.
    - :class:`JobMayHaveBeenCreated` is never retried; it is noted in result storage so later attempts at this
      step (flow retries, re-runs with the same run key) refuse to submit it again unless
      ``options.resubmit_uncertain``.
    """
    logger = get_run_logger()
    if not options.resubmit_uncertain:
        note = await read_note(uncertain_create_key(options.run_key, step, request))
        if note is not None:
            note = note if isinstance(note, dict) else {"message": str(note)}
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(note.get("noted_at", 0)))
            raise JobMayHaveBeenCreated(
                f"a create for step {step!r} of run {options.run_key!r} may have been accepted in an earlier "
                f"attempt (noted at {when}), so it is not submitted again. Check your ShortAPI dashboard for a job "
                "created then; if there is none, re-run with resubmit_uncertain=True (CLI: --resubmit-uncertain). "
                f"Earlier error: {str(note.get('message', ''))[:300]}"
            )
    resume: SubmittedJob | None = None
    unresolved = await read_note(unresolved_job_key(options.run_key, step, request))
    if isinstance(unresolved, SubmittedJob):
        resume = unresolved  # an earlier attempt left this job in an undocumented status: ask about it again
        logger.warning("%s: checking job %s again (its status was undocumented earlier)", step, resume.job_id)
    transient = rechecks = 0
    while True:
        try:
            if resume is None:
                return await generate_video(
                    request,
                    run_key=options.run_key,
                    step=step,
                    storage=options.storage,
                    credentials_block=options.credentials_block,
                    timeout=options.timeout,
                    poll_interval=options.poll_interval,
                    jobs_limit=options.jobs_limit,
                    create_rate_limit=options.create_rate_limit,
                )
            async with job_slot(options.jobs_limit):
                finished = await wait_for_kling_job(
                    resume,
                    credentials_block=options.credentials_block,
                    timeout=options.timeout,
                    poll_interval=options.poll_interval,
                )
            return await store_kling_video(
                finished, storage=options.storage, credentials_block=options.credentials_block
            )
        except JobMayHaveBeenCreated as exc:
            note = {"run_key": options.run_key, "step": step, "noted_at": time.time(), "message": str(exc)[:500]}
            await write_note(uncertain_create_key(options.run_key, step, request), note)
            raise
        except ShortAPIError as exc:
            if resume is not None and getattr(exc, "submitted", None) is None:
                exc.submitted = resume  # the job exists: keep it on the error for the record
            job: SubmittedJob | None = getattr(exc, "submitted", None)
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
                await anyio.sleep(options.poll_interval)
                continue
            if isinstance(exc, TransientError) and job is not None and transient + 1 < STEP_ATTEMPTS:
                transient += 1
                pause = options.retry.delay(transient - 1, getattr(exc, "retry_after", None))
                logger.warning(
                    "%s: %s; %s in %.1f s (try %d of %d)",
                    step,
                    exc,
                    f"resuming job {job.job_id}",
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
                await write_note(unresolved_job_key(options.run_key, step, request), job)
            raise


async def prepare_run(
    credentials_block: str | None,
    *,
    run_key: str | None,
    output_dir: str | None,
    s3_bucket_block: str | None,
    s3_prefix: str,
    timeout_seconds: float,
    poll_interval: float,
    jobs_limit: str | None,
    create_rate_limit: str | None,
    resubmit_uncertain: bool,
) -> StepOptions:
    """Credentials checked (a missing key fails here, before any task), run key and storage resolved."""
    credentials = await load_credentials(credentials_block)
    key = resolve_run_key(run_key)
    return StepOptions(
        run_key=key,
        storage=storage_for(key, output_dir, s3_bucket_block, s3_prefix),
        credentials_block=credentials_block,
        timeout=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        retry=credentials.retry_policy(),
        resubmit_uncertain=resubmit_uncertain,
    )


@task(name="publish-last-frame", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
async def publish_last_frame(clip: StoredVideo, storage: StorageSpec) -> str:
    """Extract the clip's last frame as PNG and return a URL the vendor can fetch.

    With S3: a presigned GET URL. Without: an inline ``data:`` URI (logged as a warning: some gateways limit
    request sizes; configure ``s3_bucket_block`` for production).
    """
    frame = clip.local_path.with_suffix(".last.png")
    await anyio.to_thread.run_sync(media.extract_last_frame, clip.local_path, frame)
    store = await storage.open()
    url = await store.public_url(frame, f"frames/{frame.name}")
    if url.startswith("data:"):
        get_run_logger().warning(
            "no S3 storage configured: passing the last frame of %s inline as a data URI (%d KB)",
            clip.submitted.step,
            len(url) // 1024,
        )
    return url


@task(name="join-clips", cache_policy=NO_CACHE)
async def join_and_store(clips: list[StoredVideo], storage: StorageSpec, name: str = "final.mp4") -> StoredObject:
    """Join clips into one MP4 (stream copy when the clips allow it) and store it."""
    target = Path(storage.directory) / name
    result = await anyio.to_thread.run_sync(media.join_clips, [c.local_path for c in clips], target)
    get_run_logger().info(
        "joined %d clips into %s (%.1f s, %s)",
        len(clips),
        target,
        result.duration_seconds,
        "stream copy" if result.remuxed else "re-encoded",
    )
    store = await storage.open()
    return await store.put(target, name)


# --------------------------------------------------------------------------------------------- flows


@flow(name="kling-text-to-video", log_prints=True)
async def text_to_video(
    prompt: str,
    model: str = DEFAULT_MODEL,
    duration: int | None = None,
    aspect_ratio: str | None = None,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    run_key: str | None = None,
    max_cost_usd: float | None = None,
    output_dir: str | None = None,
    s3_bucket_block: str | None = None,
    s3_prefix: str = "kling",
    credentials_block: str | None = None,
    poll_interval: float = 2.0,
    timeout_seconds: float = 3600.0,
    jobs_limit: str | None = None,
    create_rate_limit: str | None = None,
    resubmit_uncertain: bool = False,
) -> RunResult:
    """One prompt through any text-to-video model, stored, with its artifacts.

    ``options`` holds any further request field of the model (``sound``, ``negative_prompt``, ...).
    ``resubmit_uncertain`` submits the step even if an earlier attempt's create may have been accepted.
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    if model_class_for(model) is KlingO1ImageToVideo:
        raise InvalidInput("model", f"{model!r} is image-to-video; text_to_video needs a text-to-video model")
    request = build_request(model, prompt, duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    check_budget([request], max_cost_usd)
    run = await prepare_run(
        credentials_block,
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    records: list[ClipRecord] = []
    try:
        clip = await make_clip(request, "clip-01", run)
        records.append(record_for("clip-01", request, clip))
    except ShortAPIError as exc:
        records.append(record_for("clip-01", request, error=exc))
        await publish_run_artifacts(
            title="Kling text-to-video", run_key=run.run_key, records=records, storage=_describe(run.storage)
        )
        raise
    summary = await publish_run_artifacts(
        title="Kling text-to-video", run_key=run.run_key, records=records, storage=_describe(run.storage)
    )
    return RunResult(run_key=run.run_key, records=records, summary_artifact=summary, clips=[clip])


@flow(name="kling-continuation", log_prints=True)
async def continuation(
    prompts: list[str],
    model: str = DEFAULT_MODEL,
    duration: int | None = None,
    aspect_ratio: str = "16:9",
    mode: str | None = None,
    continuation_duration: int = 5,
    continuation_mode: str = "pro",
    options: dict[str, Any] | None = None,
    run_key: str | None = None,
    max_cost_usd: float | None = None,
    output_dir: str | None = None,
    s3_bucket_block: str | None = None,
    s3_prefix: str = "kling",
    credentials_block: str | None = None,
    poll_interval: float = 2.0,
    timeout_seconds: float = 3600.0,
    jobs_limit: str | None = None,
    create_rate_limit: str | None = None,
    resubmit_uncertain: bool = False,
) -> RunResult:
    """A text-to-video clip, then one ``kling-o1/image-to-video`` continuation per further prompt, each
    starting from the previous clip's last frame; then all clips joined into ``final.mp4``.

    Args:
        prompts: the first prompt (text-to-video with ``model``), then one per continuation.
        continuation_duration: seconds of each continuation: 5 or 10 (the vendor's rule for a single frame).
        resubmit_uncertain: submit steps even if an earlier attempt's create may have been accepted.
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    first, *continuations = plan_chain(
        model,
        prompts,
        duration=duration,
        aspect_ratio=aspect_ratio,
        mode=mode,
        continuation_duration=continuation_duration,
        continuation_mode=continuation_mode,
        options=options,
    )
    check_budget([first, *continuations], max_cost_usd)
    run = await prepare_run(
        credentials_block,
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    records: list[ClipRecord] = []
    clips: list[StoredVideo] = []
    request: KlingRequest = first
    step = "clip-01"
    try:
        clips.append(await make_clip(first, step, run))
        records.append(record_for(step, first, clips[-1]))
        for index, planned in enumerate(continuations, start=2):
            step = f"clip-{index:02d}"
            frame_url = await publish_last_frame(clips[-1], run.storage)
            request = planned.model_copy(update={"images": [frame_url]})
            request = KlingO1ImageToVideo.model_validate(request.to_args())
            clips.append(await make_clip(request, step, run))
            records.append(record_for(step, request, clips[-1]))
        final = await join_and_store(clips, run.storage) if len(clips) > 1 else clips[0].video
    except ShortAPIError as exc:
        records.append(record_for(step, request, error=exc))
        await publish_run_artifacts(
            title="Kling continuation", run_key=run.run_key, records=records, storage=_describe(run.storage)
        )
        raise
    summary = await publish_run_artifacts(
        title="Kling continuation", run_key=run.run_key, records=records, final=final, storage=_describe(run.storage)
    )
    return RunResult(run_key=run.run_key, records=records, final=final, summary_artifact=summary, clips=clips)


@flow(name="kling-batch", log_prints=True)
async def batch(
    prompts: list[str | dict[str, Any]] | None = None,
    file: str | None = None,
    model: str = DEFAULT_MODEL,
    max_concurrency: int = 4,
    run_key: str | None = None,
    max_cost_usd: float | None = None,
    output_dir: str | None = None,
    s3_bucket_block: str | None = None,
    s3_prefix: str = "kling",
    credentials_block: str | None = None,
    poll_interval: float = 2.0,
    timeout_seconds: float = 3600.0,
    jobs_limit: str | None = None,
    create_rate_limit: str | None = None,
    fail_on_error: bool = True,
    resubmit_uncertain: bool = False,
) -> RunResult:
    """Many prompts at once, at most ``max_concurrency`` jobs in flight; failures do not lose the others.

    Args:
        prompts: strings, or objects with ``prompt`` plus any request field (and optionally ``model``).
        file: a JSONL file (one such object per line) or a CSV with a ``prompt`` column, instead of ``prompts``.
        max_cost_usd: refuse the whole batch, creating nothing, when its estimate is higher.
        fail_on_error: end the flow run Failed when any item failed (after storing every success).
        resubmit_uncertain: submit items even if an earlier attempt's create may have been accepted.
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    check_number("max_concurrency", max_concurrency, minimum=1, maximum=MAX_CONCURRENCY)
    items = load_batch_items(prompts=prompts, file=file, default_model=model)
    check_budget([item.request for item in items], max_cost_usd)
    run = await prepare_run(
        credentials_block,
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    logger = get_run_logger()
    gate = asyncio.Semaphore(int(max_concurrency))

    async def one(item: BatchItem) -> tuple[ClipRecord, StoredVideo | None]:
        async with gate:
            try:
                clip = await make_clip(item.request, item.step, run)
            except Exception as exc:  # one prompt's failure must not lose the others
                logger.error("%s failed: %s", item.step, exc)
                return record_for(item.step, item.request, error=exc), None
        record = record_for(item.step, item.request, clip)
        await publish_clip_artifacts(run.run_key, record)  # now, not in a queue after the last clip
        return record, clip

    outcomes = await asyncio.gather(*(one(item) for item in items))
    records = [record for record, _ in outcomes]
    clips = [clip for _, clip in outcomes if clip is not None]
    summary = await publish_run_artifacts(
        title="Kling batch",
        run_key=run.run_key,
        records=records,
        storage=_describe(run.storage),
        clips_published=True,
    )
    result = RunResult(run_key=run.run_key, records=records, summary_artifact=summary, clips=clips)
    if fail_on_error and result.failed:
        raise RuntimeError(
            f"{len(result.failed)} of {len(records)} items failed: "
            + "; ".join(f"{r.step} ({r.error})" for r in result.failed[:5])
        )
    return result


def _describe(storage: StorageSpec) -> str:
    if storage.s3_bucket_block:
        block, prefix = storage.s3_bucket_block, storage.prefix
        return f"S3 bucket block {block!r}, prefix {prefix!r} (local copies in {storage.directory})"
    return f"local directory {Path(storage.directory).resolve()}"
