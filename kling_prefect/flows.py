"""Ready flows: one clip, a chain of continuations joined into one video, and a batch of prompts.

Every flow validates all its requests and checks ``max_cost_usd`` against the estimate **before** creating
any job, takes a ``run_key`` (a re-run with the same key resumes the jobs already created; by default the
flow run id, so Prefect flow retries resume too), stores outputs locally or in S3 (``s3_bucket_block``), and
leaves a summary, a table, links and thumbnails as artifacts.

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
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from kling_prefect import media
from kling_prefect.artifacts import ClipRecord, publish_run_artifacts, totals
from kling_prefect.batchfile import BatchItem, load_batch_items
from kling_prefect.exceptions import BudgetExceeded, ShortAPIError
from kling_prefect.models import KlingO1ImageToVideo, KlingRequest, request_model_for
from kling_prefect.pricing import estimate_cost
from kling_prefect.storage import StorageSpec, StoredObject, safe_name
from kling_prefect.tasks import StoredVideo, generate_video

DEFAULT_MODEL = "kling-o3"
# Stands in for the previous clip's last frame when estimating and validating a chain before it runs.
PLACEHOLDER_FRAME = "https://placeholder.invalid/previous-clip-last-frame.png"


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
    """A validated request for ``model`` (short name or full id); unset arguments keep the model's defaults."""
    fields: dict[str, Any] = {"prompt": prompt, **(options or {})}
    for name, value in (("duration", duration), ("aspect_ratio", aspect_ratio), ("mode", mode)):
        if value is not None:
            fields[name] = value
    return request_model_for(model).model_validate(fields)


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
    are the same either way.
    """
    if not prompts:
        raise ValueError("prompts: give at least one prompt")
    first = build_request(model, prompts[0], duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    if isinstance(first, KlingO1ImageToVideo):
        raise ValueError(f"model: {model!r} is image-to-video; the first clip needs a text-to-video model")
    return (
        [first]
        + [
            KlingO1ImageToVideo(
                action="frame",
                prompt=text,
                images=[PLACEHOLDER_FRAME],
                duration=continuation_duration,  # type: ignore[arg-type]
                mode=continuation_mode,  # type: ignore[arg-type]
            )
            for text in prompts[1:]
        ]
    )


def check_budget(requests: list[KlingRequest], max_cost_usd: float | Decimal | None) -> Decimal:
    """Raise :class:`BudgetExceeded` (creating nothing) when the estimate is over the budget; return the estimate."""
    total = sum((estimate_cost(r) for r in requests), Decimal(0))
    if max_cost_usd is not None:
        budget = Decimal(str(max_cost_usd))
        if total > budget:
            raise BudgetExceeded(
                f"estimated ${total:.3f} for {len(requests)} job(s) exceeds max_cost_usd ${budget:.2f} by "
                f"${total - budget:.3f}; nothing was created"
            )
    return total


def resolve_run_key(run_key: str | None) -> str:
    """The explicit key, else this flow run's id (stable across Prefect flow retries)."""
    key = run_key or flow_run.get_id() or "local"
    return safe_name(str(key), max_length=64)


def storage_for(run_key: str, output_dir: str | None, s3_bucket_block: str | None, s3_prefix: str) -> StorageSpec:
    directory = output_dir or str(Path("kling-output") / run_key)
    prefix = "/".join(p for p in (s3_prefix.strip("/"), run_key) if p)
    return StorageSpec(directory=directory, s3_bucket_block=s3_bucket_block, prefix=prefix)


def record_for(
    step: str, request: KlingRequest, stored: StoredVideo | None = None, error: BaseException | None = None
) -> ClipRecord:
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
            amount=job.amount,
            uri=stored.video.uri,
            url=stored.video.url,
            thumbnail_url=stored.thumbnail.url if stored.thumbnail else None,
        )
    submitted = getattr(error, "submitted", None)
    job_id = submitted.job_id if submitted is not None else getattr(error, "job_id", None)
    return ClipRecord(
        step=step,
        prompt=prompt,
        model=request.model_id,
        status="failed",
        job_id=job_id,
        video_seconds=request.video_seconds if job_id else 0,
        estimated_cost=estimate_cost(request) if job_id else None,
        amount=submitted.amount if submitted is not None else None,
        error=f"{type(error).__name__}: {error}" if error else None,
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
) -> RunResult:
    """One prompt through any text-to-video model, stored, with its artifacts.

    ``options`` holds any further request field of the model (``sound``, ``negative_prompt``, ...).
    """
    request = build_request(model, prompt, duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    check_budget([request], max_cost_usd)
    key = resolve_run_key(run_key)
    storage = storage_for(key, output_dir, s3_bucket_block, s3_prefix)
    records: list[ClipRecord] = []
    try:
        clip = await generate_video(
            request,
            run_key=key,
            step="clip-01",
            storage=storage,
            credentials_block=credentials_block,
            timeout=timeout_seconds,
            poll_interval=poll_interval,
            jobs_limit=jobs_limit,
            create_rate_limit=create_rate_limit,
        )
        records.append(record_for("clip-01", request, clip))
    except ShortAPIError as exc:
        records.append(record_for("clip-01", request, error=exc))
        await publish_run_artifacts(
            title="Kling text-to-video", run_key=key, records=records, storage=storage.directory
        )
        raise
    summary = await publish_run_artifacts(
        title="Kling text-to-video", run_key=key, records=records, storage=_describe(storage)
    )
    return RunResult(run_key=key, records=records, summary_artifact=summary, clips=[clip])


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
) -> RunResult:
    """A text-to-video clip, then one ``kling-o1/image-to-video`` continuation per further prompt, each
    starting from the previous clip's last frame; then all clips joined into ``final.mp4``.

    Args:
        prompts: the first prompt (text-to-video with ``model``), then one per continuation.
        continuation_duration: seconds of each continuation: 5 or 10 (the vendor's rule for a single frame).
    """
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
    key = resolve_run_key(run_key)
    storage = storage_for(key, output_dir, s3_bucket_block, s3_prefix)
    common: dict[str, Any] = {
        "run_key": key,
        "storage": storage,
        "credentials_block": credentials_block,
        "timeout": timeout_seconds,
        "poll_interval": poll_interval,
        "jobs_limit": jobs_limit,
        "create_rate_limit": create_rate_limit,
    }
    records: list[ClipRecord] = []
    clips: list[StoredVideo] = []
    request: KlingRequest = first
    step = "clip-01"
    try:
        clips.append(await generate_video(first, step=step, **common))
        records.append(record_for(step, first, clips[-1]))
        for index, planned in enumerate(continuations, start=2):
            step = f"clip-{index:02d}"
            frame_url = await publish_last_frame(clips[-1], storage)
            request = planned.model_copy(update={"images": [frame_url]})
            request = KlingO1ImageToVideo.model_validate(request.to_args())
            clips.append(await generate_video(request, step=step, **common))
            records.append(record_for(step, request, clips[-1]))
        final = await join_and_store(clips, storage) if len(clips) > 1 else clips[0].video
    except ShortAPIError as exc:
        records.append(record_for(step, request, error=exc))
        await publish_run_artifacts(
            title="Kling continuation", run_key=key, records=records, storage=_describe(storage)
        )
        raise
    summary = await publish_run_artifacts(
        title="Kling continuation", run_key=key, records=records, final=final, storage=_describe(storage)
    )
    return RunResult(run_key=key, records=records, final=final, summary_artifact=summary, clips=clips)


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
) -> RunResult:
    """Many prompts at once, at most ``max_concurrency`` jobs in flight; failures do not lose the others.

    Args:
        prompts: strings, or objects with ``prompt`` plus any request field (and optionally ``model``).
        file: a JSONL file (one such object per line) or a CSV with a ``prompt`` column, instead of ``prompts``.
        fail_on_error: end the flow run Failed when any item failed (after storing every success).
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency: must be at least 1, got {max_concurrency}")
    items = load_batch_items(prompts=prompts, file=file, default_model=model)
    check_budget([item.request for item in items], max_cost_usd)
    key = resolve_run_key(run_key)
    storage = storage_for(key, output_dir, s3_bucket_block, s3_prefix)
    logger = get_run_logger()
    gate = asyncio.Semaphore(max_concurrency)

    async def one(item: BatchItem) -> tuple[ClipRecord, StoredVideo | None]:
        async with gate:
            try:
                clip = await generate_video(
                    item.request,
                    run_key=key,
                    step=item.step,
                    storage=storage,
                    credentials_block=credentials_block,
                    timeout=timeout_seconds,
                    poll_interval=poll_interval,
                    jobs_limit=jobs_limit,
                    create_rate_limit=create_rate_limit,
                )
            except Exception as exc:  # one prompt's failure must not lose the others
                logger.error("%s failed: %s", item.step, exc)
                return record_for(item.step, item.request, error=exc), None
            return record_for(item.step, item.request, clip), clip

    outcomes = await asyncio.gather(*(one(item) for item in items))
    records = [record for record, _ in outcomes]
    clips = [clip for _, clip in outcomes if clip is not None]
    summary = await publish_run_artifacts(title="Kling batch", run_key=key, records=records, storage=_describe(storage))
    result = RunResult(run_key=key, records=records, summary_artifact=summary, clips=clips)
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
