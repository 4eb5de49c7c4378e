"""Ready flows: one clip, a chain of continuations joined into one video, a storyboard (a video through designed
keyframes), and a batch of prompts.

Each flow is a thin composition of :func:`~kling_prefect.tasks.generate_video`, the one path that makes a clip
(and keeps every money-safety rule): it validates all its parameters and requests and checks ``max_cost_usd``
against the estimate **before** creating any job, takes a ``run_key`` (a re-run with the same key resumes the
jobs already created and rewrites nothing; by default the flow run id, so Prefect flow retries resume too),
stores outputs locally (``kling-output/<run key>/``) or in S3 (``s3_bucket_block``), and leaves a summary, a
table and, where it opens, a link to the final video as artifacts.

The flows are async: await them in async code, or call them from plain Python with ``asyncio.run``::

    import asyncio
    from kling_prefect.flows import continuation

    result = asyncio.run(continuation(["A paper boat sets sail", "It drifts into a storm"]))

``jobs_limit`` names a Prefect global concurrency limit on jobs in flight across all workers (create it with
``kling-prefect setup``); ``create_rate_limit`` a rate limit on creates. ``timeout_seconds`` bounds each clip's
wait for its job and, separately, how long a create the vendor account refused for its concurrency is sent again
(the clip's ``busy_timeout``; each refusal made nothing, see :mod:`kling_prefect.concurrency`). Secrets never
travel as parameters: flows take the *name* of a ``ShortAPICredentials`` block, or read
``SHORTAPI_KEY``/``SHORTAPI_BASE_URL``.

Examples:
    ```python
    import asyncio
    from kling_prefect.flows import continuation

    result = asyncio.run(continuation(["A paper boat sets sail", "It drifts into a storm", "A sunny shore"]))
    result.final.uri  # 'file:///.../kling-output/<run key>/final.mp4'
    ```
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from kling_prefect import media
from kling_prefect.artifacts import (
    MAX_PICTURES,
    KeyframePicture,
    SeamPicture,
    keyframe_markdown,
    publish_run_artifacts,
)
from kling_prefect.atomic import atomic_path
from kling_prefect.batchfile import ITEM_NAMES, BatchItem, ItemNames, check_batch, iter_batch_items
from kling_prefect.exceptions import BatchInputError, InvalidInput, ShortAPIError
from kling_prefect.models import KlingO1ImageToVideo, KlingRequest
from kling_prefect.planning import (
    DEFAULT_MODEL,
    MAX_CONCURRENCY,
    RUN_KEY_MAX,
    Cast,
    CastInput,
    PlannedImage,
    build_request,
    check_budget,
    check_estimate,
    check_inline_images,
    check_number,
    check_run_key,
    check_run_options,
    model_class_for,
    plan_cast,
    plan_chain,
    plan_storyboard,
)
from kling_prefect.records import StoredVideo
from kling_prefect.runs import ClipRecord, RunIncomplete, RunResult, record_for
from kling_prefect.storage import StorageSpec, StoredObject, VideoStore, claim_key, safe_name
from kling_prefect.tasks import ClipOptions, generate_video, load_credentials
from kling_prefect.tasks.store import destination_lease

__all__ = ["RunIncomplete", "RunResult", "batch", "continuation", "storyboard", "text_to_video"]

NAME_PROMPT = 40
#: Height of a keyframe picture in a storyboard's summary (keyframe and frame side by side, a few KB of JPEG).
KEYFRAME_PICTURE_HEIGHT = 120


def _run_name() -> str:
    """Flow run names carry the run key (when given) and the first prompt, shortened."""
    parameters = flow_run.parameters or {}
    key = parameters.get("run_key") or "run"
    prompts = parameters.get("prompts") or [parameters.get("prompt") or ""]
    first = prompts[0] if isinstance(prompts, list) and prompts else ""
    if isinstance(first, dict):
        first = first.get("prompt", "")
    if not first and parameters.get("file"):
        first = Path(str(parameters["file"])).name
    text = " ".join(str(first).split())
    text = text if len(text) <= NAME_PROMPT else text[: NAME_PROMPT - 1] + "…"
    return f"{key}: {text}" if text else str(key)


# --------------------------------------------------------------------------------------------- a run's setup


@dataclass(frozen=True)
class Run:
    """How every clip of one run is made: its key, where outputs go, and the clip options."""

    run_key: str
    storage: StorageSpec
    options: ClipOptions

    def describe_storage(self) -> str:
        return self.storage.describe(self.run_key)


def resolve_run_key(run_key: str | None) -> str:
    """The explicit key (validated, never rewritten), else this flow run's id (stable across flow retries)."""
    if run_key is not None:
        return check_run_key(run_key) or ""
    key = flow_run.get_id() or "local"
    return safe_name(str(key), max_length=RUN_KEY_MAX)


async def prepare_run(
    *,
    run_key: str | None,
    output_dir: str | None,
    s3_bucket_block: str | None,
    s3_prefix: str,
    credentials_block: str | None,
    timeout_seconds: float,
    poll_interval: float,
    jobs_limit: str | None,
    create_rate_limit: str | None,
    resubmit_uncertain: bool,
) -> Run:
    """Credentials checked (a missing key fails here, before any task), run key and storage resolved."""
    await load_credentials(credentials_block)
    key = resolve_run_key(run_key)
    prefix = "/".join(p for p in (s3_prefix.strip("/"), safe_name(key)) if p)
    storage = StorageSpec(directory=output_dir, s3_bucket_block=s3_bucket_block, prefix=prefix)
    options: ClipOptions = {
        "storage": storage,
        "credentials_block": credentials_block,
        "timeout": timeout_seconds,
        "poll_interval": poll_interval,
        "jobs_limit": jobs_limit,
        "create_rate_limit": create_rate_limit,
        "resubmit_uncertain": resubmit_uncertain,
    }
    return Run(run_key=key, storage=storage, options=options)


# --------------------------------------------------------------------------------------------- building blocks


async def hand_to_vendor(storage: StorageSpec, run_key: str, local_file: Path, key: str, what: str) -> str:
    """A URL the vendor can fetch ``local_file`` from: with S3 a presigned GET of it stored under ``key``;
    without, an inline ``data:`` URI (logged as a warning: some gateways limit request sizes; configure
    ``s3_bucket_block`` for production). Every image a flow hands to the vendor goes this way."""
    store = await storage.open(run_key)
    url = await store.public_url(local_file, key)
    if url.startswith("data:"):
        get_run_logger().warning(
            "no S3 storage configured: passing %s inline as a data URI (%d KB)", what, len(url) // 1024
        )
    return url


@task(name="publish-last-frame", task_run_name="last-frame-{clip.submitted.step}", cache_policy=NO_CACHE, retries=2)
async def publish_last_frame(clip: StoredVideo, storage: StorageSpec) -> str:
    """Extract the clip's last frame as PNG and return a URL the vendor can fetch (see :func:`hand_to_vendor`)."""
    frame = clip.local_path.with_suffix(".last.png")
    await anyio.to_thread.run_sync(media.extract_last_frame, clip.local_path, frame)
    return await hand_to_vendor(
        storage, clip.submitted.run_key, frame, f"frames/{frame.name}", f"the last frame of {clip.submitted.step}"
    )


def input_copy(storage: StorageSpec, run_key: str, image: PlannedImage) -> Path:
    """Where a run keeps its copy of an input image: ``<run folder>/inputs/<name>-<digest>.<ext>``."""
    return storage.work_directory(run_key) / "inputs" / image.file_name


@task(name="publish-images", task_run_name="publish-{what}", cache_policy=NO_CACHE, retries=2)
async def publish_images(
    images: list[PlannedImage], storage: StorageSpec, run_key: str, what: str = "inputs"
) -> dict[str, str]:
    """Keep a copy of each input image with the run's outputs and say how the vendor gets it, by parameter.

    A URL given by the user is passed on as it is; a local file goes the way of every frame a flow hands over
    (:func:`hand_to_vendor`: presigned S3 URL, or inline). Copies are named by content, so a re-run hands
    over the same references (nothing is paid again) and a changed image is a new request.
    """
    references: dict[str, str] = {}
    for image in images:
        copy = input_copy(storage, run_key, image)
        if not copy.is_file() or copy.read_bytes() != image.data:
            with atomic_path(copy) as temporary:
                temporary.write_bytes(image.data)
        if image.is_url:
            references[image.field] = image.source
        else:
            key = f"inputs/{copy.name}"
            references[image.field] = await hand_to_vendor(storage, run_key, copy, key, f"{image.field} {image.shown}")
    return references


@task(name="join-clips", task_run_name="join-{name}", cache_policy=NO_CACHE)
async def join_and_store(
    clips: list[StoredVideo],
    storage: StorageSpec,
    run_key: str,
    name: str = "final.mp4",
    credentials_block: str | None = None,
) -> StoredObject:
    """Join clips into one MP4 (stream copy when the clips allow it) and store it. Joining the same clips again
    rewrites nothing; another join never replaces this one (see :func:`~kling_prefect.storage.claim_key`), and
    two joins storing at ``name`` at once take turns under its lease (the credentials' ``lease_url``), as
    clips do (:func:`~kling_prefect.tasks.store.destination_lease`)."""
    store = await storage.open(run_key)
    credentials = await load_credentials(credentials_block)
    async with destination_lease(store, name, credentials):
        return await _join_and_store(clips, storage, store, run_key, name)


async def _join_and_store(
    clips: list[StoredVideo], storage: StorageSpec, store: VideoStore, run_key: str, name: str
) -> StoredObject:
    logger = get_run_logger()
    owner = "join-" + hashlib.sha256("|".join(c.job_id for c in clips).encode()).hexdigest()[:16]
    key, record = await claim_key(store, name, owner)
    if record is not None:
        existing = await store.get(key)
        if existing is not None:
            logger.info("these %d clips are joined already as %s: nothing rewritten", len(clips), existing.uri)
            return existing
    target = storage.work_directory(run_key) / ".downloads" / f"{owner}.mp4"
    result = await anyio.to_thread.run_sync(media.join_clips, [c.local_path for c in clips], target)
    stored = await store.put(target, key, move=True)
    await store.write_record(
        key, {"job_id": owner, "clips": [c.job_id for c in clips], "seconds": result.duration_seconds}
    )
    logger.info(
        "joined %d clips into %s (%.1f s, %s)",
        len(clips),
        stored.uri,
        result.duration_seconds,
        "stream copy" if result.remuxed else "re-encoded",
    )
    return stored


async def seam_pictures(clips: list[StoredVideo]) -> list[SeamPicture]:
    """For each join of a chain, the last frame of one clip beside the first frame of the next, inline."""
    seams = []
    for left, right in itertools.pairwise(clips):
        strip = await anyio.to_thread.run_sync(media.seam_strip, left.local_path, right.local_path)
        uri = media.jpeg_data_uri(strip)
        seams.append(SeamPicture(left.step, right.step, uri))
    return seams


def keyframe_pictures(
    final: Path, keyframes: Sequence[tuple[str, Path]], starts: Sequence[float]
) -> tuple[list[KeyframePicture], list[float]]:
    """Each keyframe (its name as given, its local copy) beside the frame of ``final`` at its point, with their
    mean absolute difference; and the differences between consecutive keyframes, the scale to read them on.

    ``starts`` are the times the clips begin in ``final``: keyframe k belongs at the start of clip k (the
    frame there is the first of clip k; the one before, the last of clip k-1, shows the same keyframe); the
    last keyframe is the true last frame.
    """
    pictures: list[KeyframePicture] = []
    neighbours: list[float] = []
    previous = None
    duration = media.probe(final).duration_seconds
    for index, ((name, path), seconds) in enumerate(zip(keyframes, [*starts, math.inf], strict=True), start=1):
        keyframe = media.load_image(path).rgb
        frame = media.frame_at(final, seconds)
        if previous is not None:
            neighbours.append(media.mean_abs_diff(keyframe, previous))
        previous = keyframe
        strip = media.side_by_side([keyframe, frame], height=KEYFRAME_PICTURE_HEIGHT)
        pictures.append(
            KeyframePicture(
                index=index,
                source=name,
                seconds=min(seconds, duration),
                difference=media.mean_abs_diff(frame, keyframe),
                data_uri=media.jpeg_data_uri(strip),
            )
        )
    return pictures, neighbours


async def _finish(
    flow_name: str,
    title: str,
    result: RunResult,
    run: Run,
    seams: list[SeamPicture] | None = None,
    extra: Sequence[str] = (),
) -> None:
    """Publish the run's artifacts. A Prefect API that fails now only costs the report: the clips are stored."""
    try:
        result.summary_artifact = await publish_run_artifacts(
            flow=flow_name, title=title, result=result, storage=run.describe_storage(), seams=seams or (), extra=extra
        )
    except Exception as exc:
        get_run_logger().warning("the run's artifacts were not published (%s: %s)", type(exc).__name__, exc)


# --------------------------------------------------------------------------------------------- flows


@flow(name="kling-text-to-video", flow_run_name=_run_name, log_prints=True)
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
) -> State[RunResult] | RunResult:
    """One prompt through any text-to-video model, stored, with its artifacts.

    Args:
        prompt: the text prompt.
        model: ``kling-o1``, ``kling-o3`` (default), ``kling-3.0``, ``kling-2.6`` or a full model id.
        options: any further request field of the model (``sound``, ``negative_prompt``, ...).
        resubmit_uncertain: submit the step even if an earlier attempt's create may have been accepted.
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
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        credentials_block=credentials_block,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    result = RunResult(run_key=run.run_key, records=[])
    try:
        clip = await generate_video.aio(request, run_key=run.run_key, step="clip-01", **run.options)
    except ShortAPIError as exc:
        result.records.append(record_for("clip-01", request, error=exc))
        await _finish("text-to-video", "Kling text-to-video", result, run)
        raise
    result.records.append(record_for("clip-01", request, clip))
    result.clips.append(clip)
    await _finish("text-to-video", "Kling text-to-video", result, run)
    return Completed(message=result.describe(), data=result)  # the run's state says what it made


@flow(name="kling-continuation", flow_run_name=_run_name, log_prints=True)
async def continuation(
    prompts: list[str],
    model: str = DEFAULT_MODEL,
    duration: int | None = None,
    aspect_ratio: str = "16:9",
    mode: str | None = None,
    continuation_duration: int = 5,
    continuation_mode: str = "pro",
    options: dict[str, Any] | None = None,
    cast: CastInput | None = None,
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
) -> State[RunResult] | RunResult:
    """A text-to-video clip, then one ``kling-o1/image-to-video`` continuation per further prompt, each
    starting from the previous clip's last frame; then all clips joined into ``final.mp4``.

    Args:
        prompts: the first prompt (text-to-video with ``model``), then one per continuation.
        continuation_duration: seconds of each continuation: 5 or 10 (the vendor's rule for a single frame).
        cast: subjects that stay the same (see :func:`storyboard`): up to 6, added to every continuation as
            ``elements``, so its prompt can name ``[@element1]``. The first clip is text-to-video, which takes
            no elements: it is made without the cast (describe the subject in words there).
        resubmit_uncertain: submit steps even if an earlier attempt's create may have been accepted.
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    checked_cast: Cast = await anyio.to_thread.run_sync(plan_cast, cast)  # images read (URLs fetched) once
    first, *continuations = plan_chain(
        model,
        prompts,
        duration=duration,
        aspect_ratio=aspect_ratio,
        mode=mode,
        continuation_duration=continuation_duration,
        continuation_mode=continuation_mode,
        options=options,
        cast=checked_cast,
    )
    check_inline_images(checked_cast.images, s3_bucket_block)
    check_budget([first, *continuations], max_cost_usd)
    run = await prepare_run(
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        credentials_block=credentials_block,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    result = RunResult(run_key=run.run_key, records=[])
    elements: dict[str, Any] = {}
    if checked_cast.members:
        references = await publish_images(list(checked_cast.images), run.storage, run.run_key, "cast")
        elements["elements"] = checked_cast.elements(references)
        get_run_logger().info("the cast (%d) joins from clip-02 on: clip-01 is text-to-video", len(checked_cast))
    request: KlingRequest = first
    step = "clip-01"
    try:
        result.clips.append(await generate_video.aio(first, run_key=run.run_key, step=step, **run.options))
        result.records.append(record_for(step, first, result.clips[-1]))
        for index, continuation_request in enumerate(continuations, start=2):
            step = f"clip-{index:02d}"
            frame_url = await publish_last_frame(result.clips[-1], run.storage)
            request = KlingO1ImageToVideo.model_validate(
                {**continuation_request.to_args(), "images": [frame_url], **elements}
            )
            result.clips.append(await generate_video.aio(request, run_key=run.run_key, step=step, **run.options))
            result.records.append(record_for(step, request, result.clips[-1]))
        if len(result.clips) > 1:
            result.final = await join_and_store(
                result.clips, run.storage, run.run_key, credentials_block=run.options["credentials_block"]
            )
        else:
            result.final = result.clips[0].video
    except ShortAPIError as exc:
        result.records.append(record_for(step, request, error=exc))
        await _finish("continuation", "Kling continuation", result, run, await seam_pictures(result.clips))
        raise
    await _finish("continuation", "Kling continuation", result, run, await seam_pictures(result.clips))
    return Completed(message=result.describe(), data=result)


@flow(name="kling-storyboard", flow_run_name=_run_name, log_prints=True)
async def storyboard(
    keyframes: list[str],
    prompts: list[str],
    duration: int = 5,
    mode: str = "pro",
    cast: CastInput | None = None,
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
    resubmit_uncertain: bool = False,
) -> State[RunResult] | RunResult:
    """A video through designed keyframes: clip k goes from keyframe k to keyframe k+1, then all are joined.

    Each clip is a ``kling-o1/image-to-video`` job with ``action: "frame"`` and ``images`` = [keyframe k,
    keyframe k+1]; the clips do not depend on each other, so up to ``max_concurrency`` are made at the same
    time (and within ``jobs_limit``). Then ``final.mp4`` joins them, and the summary shows each keyframe beside
    the final video at its point, with their difference.

    A clip that fails does not lose the others: they are stored, and the run ends **Failed** with a message
    such as ``1 of 2 clips stored; clip-02 failed at the vendor: content moderation`` (awaiting the flow then
    raises :class:`~kling_prefect.runs.RunIncomplete`, whose ``result`` has every record). A re-run with the
    same ``run_key`` resumes the stored clips and makes only the missing ones.

    Every keyframe and cast image is read (a URL fetched) and decoded before any job is created: a missing
    file, something that is not a PNG, JPEG or WebP, or keyframes of different aspect ratios are refused
    with one line naming the parameter. A run keeps a copy of its images under ``inputs/`` and hands local
    ones to the vendor as presigned S3 URLs (or inline, with a warning, without S3); URLs are passed as given.

    Args:
        keyframes: N >= 2 local image files or http(s) URLs, one aspect ratio; the video takes their shape.
        prompts: N - 1 prompts: prompt k describes the motion from keyframe k to keyframe k+1.
        duration: seconds of each clip, 3 to 10.
        mode: ``std`` or ``pro``.
        cast: subjects that stay the same, up to 5 (2 keyframes + elements <= 7), each added to every clip as an
            ``element``: ``{"frontal_image": "hero.png", "reference_images": ["hero-side.png"]}`` or just the
            frontal image. A prompt names the first as ``[@element1]``.
        max_concurrency: clips in the making at once, at most.
        resubmit_uncertain: submit clips even if an earlier attempt's create may have been accepted.

    Examples:
        ```python
        import asyncio
        from kling_prefect.flows import storyboard

        result = asyncio.run(
            storyboard(["dawn.png", "noon.png", "dusk.png"], ["The sun climbs", "The sun sets"], max_cost_usd=2)
        )
        result.final.uri  # 'file:///.../kling-output/<run key>/final.mp4'
        ```
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    check_number("max_concurrency", max_concurrency, minimum=1, maximum=MAX_CONCURRENCY)
    plan = await anyio.to_thread.run_sync(
        functools.partial(plan_storyboard, keyframes, prompts, duration=duration, mode=mode, cast=cast)
    )
    check_inline_images(plan.images, s3_bucket_block)
    check_budget(plan.requests, max_cost_usd)
    run = await prepare_run(
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        credentials_block=credentials_block,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    references = await publish_images(list(plan.images), run.storage, run.run_key, "keyframes")
    items = [
        BatchItem(step=f"clip-{index:02d}", request=request, source=f"prompts[{index}]")
        for index, request in enumerate(plan.bind(references), start=1)
    ]
    order = {item.step: index for index, item in enumerate(items)}
    outcomes = [outcome async for outcome in _bounded(items, min(int(max_concurrency), len(items)), run)]
    outcomes.sort(key=lambda outcome: order[outcome[0].step])
    result = RunResult(run_key=run.run_key, records=[record for record, _ in outcomes])
    result.clips = [clip for _, clip in outcomes if clip is not None]
    if result.failed:  # the stored clips stay: a re-run with the same run key resumes them and makes only the rest
        await _finish("storyboard", "Kling storyboard", result, run)
        return Failed(message=result.describe(), data=RunIncomplete(result))
    result.final = await join_and_store(
        result.clips, run.storage, run.run_key, credentials_block=run.options["credentials_block"]
    )
    extra: list[str] = []
    if result.final.local_path:
        starts = list(itertools.accumulate((c.duration_seconds for c in result.clips[:-1]), initial=0.0))
        copies = [(k.label, input_copy(run.storage, run.run_key, k)) for k in plan.keyframes]
        final = Path(result.final.local_path)
        pictures, neighbours = await anyio.to_thread.run_sync(keyframe_pictures, final, copies, starts)
        for picture in pictures:
            get_run_logger().info(
                "keyframe %d (%s) vs the final video at %.2f s: mean absolute difference %.1f",
                picture.index,
                picture.source,
                picture.seconds,
                picture.difference,
            )
        extra = keyframe_markdown(pictures, neighbours)
    await _finish("storyboard", "Kling storyboard", result, run, extra=extra)
    return Completed(message=result.describe(), data=result)


async def _bounded(
    items: Iterable[BatchItem], limit: int, run: Run
) -> AsyncIterator[tuple[ClipRecord, StoredVideo | None]]:
    """Make the items' clips, at most ``limit`` at once, yielding each record as its clip ends.

    Workers pull items from one iterator, so a batch holds ``limit`` clips in flight, not one coroutine per item.
    An input that turns bad while the batch runs (a file read as workers take its items) stops the taking of new
    items; the clips in flight end and are yielded, then its :class:`BatchInputError` is raised.
    """
    queue: asyncio.Queue[tuple[ClipRecord, StoredVideo | None] | None] = asyncio.Queue()
    source = iter(items)
    stopped: list[BatchInputError] = []
    logger = get_run_logger()

    async def worker() -> None:
        while not stopped:
            try:
                item = next(source)  # shared iterator: each item is taken by one worker
            except StopIteration:
                break
            except BatchInputError as exc:
                stopped.append(exc)
                break
            try:
                clip = await generate_video.aio(item.request, run_key=run.run_key, step=item.step, **run.options)
            except Exception as exc:  # one prompt's failure must not lose the others
                logger.error("%s failed: %s", item.step, exc)
                await queue.put((record_for(item.step, item.request, error=exc), None))
                continue
            await queue.put((record_for(item.step, item.request, clip), clip))
        await queue.put(None)

    async with anyio.create_task_group() as group:
        for _ in range(limit):
            group.start_soon(worker)
        finished = 0
        while finished < limit:
            outcome = await queue.get()
            if outcome is None:
                finished += 1
                continue
            yield outcome
    if stopped:
        raise stopped[0]


@flow(name="kling-batch", flow_run_name=_run_name, log_prints=True)
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
    item_names: ItemNames = "position",
) -> State[RunResult] | RunResult:
    """Many prompts at once, at most ``max_concurrency`` jobs in flight; failures do not lose the others.

    The run ends **Failed** when any item failed, after storing every success, with a message such as
    ``2 of 3 clips stored; item-0001 failed at the vendor: content moderation`` (awaiting the flow then raises
    :class:`~kling_prefect.runs.RunIncomplete`, whose ``result`` has every record); with
    ``fail_on_error=False`` it ends Completed with the same message and returns the result.

    Args:
        prompts: strings, or objects with ``prompt`` plus any request field (and optionally ``model``).
        file: a JSONL file (one such object per line) or a CSV with a ``prompt`` column, instead of ``prompts``.
        max_cost_usd: refuse the whole batch, creating nothing, when its estimate is higher.
        resubmit_uncertain: submit items even if an earlier attempt's create may have been accepted.
        item_names: ``"position"``: each item is a step named by its place, ``item-0001``, ...; ``"content"``:
            by what it asks for, ``item-<12 hex digits>`` (a repeat in the same input ``...-2``), so flow runs
            sharing one ``run_key`` (a batch split into overlapping slices) make and store an item they both hold
            once (see :mod:`kling_prefect.batchfile`).
    """
    check_run_options(
        run_key=run_key,
        max_cost_usd=max_cost_usd,
        poll_interval=poll_interval,
        timeout_seconds=timeout_seconds,
        output_dir=output_dir,
    )
    check_number("max_concurrency", max_concurrency, minimum=1, maximum=MAX_CONCURRENCY)
    if item_names not in ITEM_NAMES:
        raise InvalidInput("item_names", f"must be one of {', '.join(map(repr, ITEM_NAMES))}, got {item_names!r}")
    # Every item checked and the whole batch priced before anything is created, holding one item at a time;
    # then the items are read again as workers take them: memory follows max_concurrency, not the batch's length.
    planned = check_batch(prompts=prompts, file=file, default_model=model)
    check_estimate(planned.estimated_cost, planned.items, max_cost_usd)
    run = await prepare_run(
        run_key=run_key,
        output_dir=output_dir,
        s3_bucket_block=s3_bucket_block,
        s3_prefix=s3_prefix,
        credentials_block=credentials_block,
        timeout_seconds=timeout_seconds,
        poll_interval=poll_interval,
        jobs_limit=jobs_limit,
        create_rate_limit=create_rate_limit,
        resubmit_uncertain=resubmit_uncertain,
    )
    places: dict[str, int] = {}  # each item's place in the input, by step: the order of the records

    def numbered(items: Iterable[BatchItem]) -> Iterator[BatchItem]:
        for item in items:
            places[item.step] = item.number
            yield item

    items = iter_batch_items(prompts=prompts, file=file, default_model=model, checked=planned, names=item_names)
    records: list[ClipRecord] = []
    stopped: BatchInputError | None = None
    try:
        async for record, _ in _bounded(numbered(items), min(int(max_concurrency), planned.items), run):
            # A batch holds its records only, not its clips; and the summary shows the first MAX_PICTURES clips'
            # pictures, so the others' are not kept either (a thousand clips' pictures are tens of MB).
            if places[record.step] > MAX_PICTURES:
                record = replace(record, thumbnail_data_uri=None, filmstrip_data_uri=None)
            records.append(record)
    except BatchInputError as exc:  # the clips already made are stored: report them, then fail
        stopped = exc
    records.sort(key=lambda r: places[r.step])
    result = RunResult(run_key=run.run_key, records=records)
    await _finish("batch", "Kling batch", result, run)
    message = result.describe()
    if stopped is not None:
        message += f"; stopped: {stopped.problems[0]}"
        get_run_logger().error("the batch stopped taking items: %s", stopped.problems[0])
        return Failed(message=message, data=RunIncomplete(result))
    if result.failed and fail_on_error:
        return Failed(message=message, data=RunIncomplete(result))
    return Completed(message=message, data=result)
