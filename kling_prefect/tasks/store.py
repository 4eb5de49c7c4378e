"""Store a finished job's video at once (vendor URLs expire): download, check it decodes, keep it with pictures."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio.to_thread
from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from kling_prefect import events, media, progress
from kling_prefect.atomic import remove_stale_temporaries
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.dispatch import dispatching_task
from kling_prefect.exceptions import DownloadFailed
from kling_prefect.leases import step_lease
from kling_prefect.ledger import run_lease_directory
from kling_prefect.records import FinishedJob, StoredVideo
from kling_prefect.storage import StorageSpec, StoredObject, VideoStore, claim_key, safe_name
from kling_prefect.tasks.connect import load_credentials, open_client
from kling_prefect.tasks.wait import retry_resumable

__all__ = ["StoredVideoKey", "destination_lease", "store_kling_video"]

#: Bounds of the thumbnail stored beside each clip (``<step>.thumb.jpg``): a portrait clip's is as high as wide.
THUMBNAIL_BOX = (192, 192)
#: Bounds of the thumbnail inline in the run summary's table: small enough that 7 columns fit a 1280 px window
#: in both Prefect UIs (the classic one never wraps table cells).
SUMMARY_THUMBNAIL_BOX = (72, 40)


class StoredVideoKey(CachePolicy):
    """Cache key of :func:`store_kling_video`: one stored copy per job id, destination and key."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        finished: FinishedJob = inputs["job"]
        storage: StorageSpec | None = inputs.get("storage")
        spec = (storage or StorageSpec()).for_run(finished.submitted.run_key)
        material = json.dumps([finished.submitted.job_id, spec.model_dump(), inputs.get("key")])
        return "kling-store-" + hashlib.sha256(material.encode()).hexdigest()


def _pictures(video: Path) -> tuple[bytes, str, str]:
    """The thumbnail file's JPEG, the summary's inline thumbnail and the filmstrip (one decode of the middle
    frame for both thumbnails)."""
    stored, inline = media.thumbnails(video, [THUMBNAIL_BOX, SUMMARY_THUMBNAIL_BOX])
    return media.encode_jpeg(stored), media.jpeg_data_uri(inline), media.filmstrip_data_uri(video)


def _record(stored: StoredVideo) -> dict[str, Any]:
    """What is written beside the video: which job it is, what it cost, its pictures. No secrets."""
    job = stored.submitted
    args = {k: v for k, v in job.args.items() if k not in ("images", "elements")}  # inline images are large
    return {
        "job_id": job.job_id,
        "model": job.model,
        "run_key": job.run_key,
        "step": job.step,
        "args": args,
        "estimated_cost_usd": str(job.estimated_cost),
        "vendor_amount_usd": None if job.amount is None else str(job.amount),
        "video_seconds": job.video_seconds,
        "created_at": job.created_at,
        "stored_at": time.time(),
        "duration_seconds": stored.duration_seconds,
        "width": stored.width,
        "height": stored.height,
        "size_bytes": stored.video.size_bytes,
        "thumbnail": None if stored.thumbnail is None else asdict(stored.thumbnail),
        "thumbnail_data_uri": stored.thumbnail_data_uri,
        "filmstrip_data_uri": stored.filmstrip_data_uri,
    }


async def _already_stored(store: VideoStore, key: str, job: FinishedJob, record: dict[str, Any]) -> StoredVideo | None:
    video = await store.get(key)
    if video is None:
        return None
    thumbnail = record.get("thumbnail")
    return StoredVideo(
        submitted=job.submitted,
        video=video,
        duration_seconds=float(record.get("duration_seconds") or 0.0),
        width=int(record.get("width") or 0),
        height=int(record.get("height") or 0),
        thumbnail=StoredObject(**thumbnail) if isinstance(thumbnail, dict) else None,
        thumbnail_data_uri=record.get("thumbnail_data_uri"),
        filmstrip_data_uri=record.get("filmstrip_data_uri"),
    )


@dispatching_task(
    name="store-kling-video",
    task_run_name="store-{job.submitted.step}",
    cache_policy=StoredVideoKey(),
    persist_result=True,
    retries=3,
    retry_delay_seconds=[1, 5, 20],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_resumable,
)
async def store_kling_video(
    job: FinishedJob,
    storage: StorageSpec | None = None,
    key: str | None = None,
    credentials_block: str | None = None,
    pictures: bool = True,
) -> StoredVideo:
    """Download the result into ``storage`` (default ``kling-output/<run key>/``) as ``key`` (default
    ``<step>.mp4``), check it decodes, keep a thumbnail beside it and a record of the job (``<step>.json``).

    Never replaces another job's file: a key that holds one is left alone and the video goes under
    ``<step>.<job id>.mp4`` (see :func:`~kling_prefect.storage.claim_key`). Storing the same job again is a
    no-op: nothing is downloaded or rewritten. Attempts storing at one key at the same moment, in any process
    sharing the lease store (flow runs on several workers resuming one job), take turns under a lease on it
    (:func:`destination_lease`), so each file is written once. ``pictures`` adds small inline JPEGs (a thumbnail
    and a filmstrip) for artifacts.

    Examples:
        ```python
        stored = await store_kling_video(finished)  # kling-output/<run key>/<step>.mp4
        stored.video.uri, stored.duration_seconds
        ```
    """
    submitted = job.submitted
    spec = (storage or StorageSpec()).for_run(submitted.run_key)
    store = await spec.open(submitted.run_key)
    wanted = key or f"{safe_name(submitted.step)}.mp4"
    credentials = await load_credentials(credentials_block)
    async with destination_lease(store, wanted, credentials):
        return await _store(job, spec, store, wanted, credentials, pictures)


@asynccontextmanager
async def destination_lease(store: VideoStore, key: str, credentials: ShortAPICredentials) -> AsyncIterator[None]:
    """Hold the lease on ``key`` in ``store`` (:mod:`kling_prefect.leases`, the credentials' ``lease_url``) while
    a file is claimed there and written: an attempt storing there at the same time, in any process sharing the
    lease store, waits, then finds what this one stored (:func:`~kling_prefect.storage.claim_key`). Without it,
    two attempts could both find the key free and both write it: the same clip twice (on S3, two versions), or
    one job's clip over another's."""
    lease_url = credentials.lease_url_value()
    place = hashlib.sha256(f"{store.description}|{key}".encode()).hexdigest()
    logger = get_run_logger()

    def waiting() -> None:
        logger.info("%s: another attempt is storing a file there; waiting for it", key)

    async with step_lease(
        f"kling-store-lease-{place}",
        lease_url=lease_url,
        directory=run_lease_directory(lease_url),
        lease_seconds=credentials.lease_seconds,
        on_wait=waiting,
    ):
        yield


async def _store(
    job: FinishedJob,
    spec: StorageSpec,
    store: VideoStore,
    wanted: str,
    credentials: ShortAPICredentials,
    pictures: bool,
) -> StoredVideo:
    """The body of :func:`store_kling_video`, under the lease on ``wanted``."""
    logger = get_run_logger()
    submitted = job.submitted
    chosen, record = await claim_key(store, wanted, submitted.job_id)
    if record is not None:
        existing = await _already_stored(store, chosen, job, record)
        if existing is not None:
            logger.info("job %s is stored already as %s: nothing rewritten", submitted.job_id, existing.video.uri)
            progress.emit(progress.ProgressEvent(submitted.run_key, submitted.step, "stored", 1.0, submitted.job_id))
            return existing
    downloads = spec.work_directory(submitted.run_key) / ".downloads"
    local = downloads / f"{safe_name(submitted.job_id)}.mp4"
    remove_stale_temporaries(local)  # left by a process killed mid-download
    progress.emit(progress.ProgressEvent(submitted.run_key, submitted.step, "downloading", 1.0, submitted.job_id))
    client = await open_client(None, credentials=credentials)
    async with client:
        await client.download(job.video_urls[0], local, job_id=submitted.job_id)
    decodable = await anyio.to_thread.run_sync(media.is_decodable_mp4, local)
    if not decodable or local.stat().st_size == 0:
        local.unlink(missing_ok=True)
        raise DownloadFailed("the downloaded result is not a decodable MP4 video", job_id=submitted.job_id)
    info = await anyio.to_thread.run_sync(media.probe, local)
    thumbnail_uri = filmstrip_uri = thumbnail_jpeg = None
    if pictures:
        thumbnail_jpeg, thumbnail_uri, filmstrip_uri = await anyio.to_thread.run_sync(_pictures, local)
    stored_video = await store.put(local, chosen, move=True)
    thumbnail = None
    if thumbnail_jpeg:
        thumb_file = downloads / f"{safe_name(submitted.job_id)}.thumb.jpg"
        thumb_file.write_bytes(thumbnail_jpeg)
        thumbnail = await store.put(thumb_file, chosen.rsplit(".", 1)[0] + ".thumb.jpg", move=True)
    stored = StoredVideo(
        submitted=submitted,
        video=stored_video,
        duration_seconds=info.duration_seconds,
        width=info.width,
        height=info.height,
        thumbnail=thumbnail,
        thumbnail_data_uri=thumbnail_uri,
        filmstrip_data_uri=filmstrip_uri,
    )
    await store.write_record(chosen, _record(stored))
    logger.info(
        "stored job %s as %s (%d bytes, %.1f s)",
        submitted.job_id,
        stored_video.uri,
        stored_video.size_bytes,
        info.duration_seconds,
    )
    events.emit_job_event(
        events.VIDEO_STORED,
        submitted,
        uri=stored_video.uri,
        size_bytes=stored_video.size_bytes,
        duration_seconds=info.duration_seconds,
    )
    progress.emit(
        progress.ProgressEvent(submitted.run_key, submitted.step, "stored", 1.0, submitted.job_id, stored_video.uri)
    )
    return stored
