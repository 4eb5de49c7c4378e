"""Prefect tasks that make Kling clips, for your own flows.

- :func:`generate_video`: the one path that makes a clip (submit -> wait -> store, with every money-safety
  rule); what the bundled flows and the per-model helpers call.
- One typed helper per model: :func:`kling_o1_text_to_video`, :func:`kling_o3_text_to_video`,
  :func:`kling_o1_image_to_video`, :func:`kling_30_text_to_video`, :func:`kling_26_text_to_video`.
- The three tasks it is made of, for flows that need the pieces: :func:`submit_kling_job` (the only call that
  costs money: cached on run key + step + request, never retried), :func:`wait_for_kling_job` (async, never
  cached, a progress artifact), :func:`store_kling_video` (download at once, check, store, never overwrite).

Tasks take the *name* of a credentials block (or read ``SHORTAPI_KEY``), never the key.

Examples:
    ```python
    from prefect import flow
    from kling_prefect import KlingO3TextToVideo
    from kling_prefect.tasks import generate_video, kling_26_text_to_video

    @flow
    async def my_clips():
        a = await generate_video(KlingO3TextToVideo(prompt="Rain on a tin roof"), run_key="rain-1", step="rain")
        b = await kling_26_text_to_video(prompt="A train at dusk", cfg_scale=0.5, run_key="rain-1", step="train")
        return a.video.uri, b.video.uri
    ```
"""

from kling_prefect.records import FinishedJob, StoredVideo, SubmittedJob
from kling_prefect.tasks.clip import STEP_ATTEMPTS, UNKNOWN_STATUS_RECHECKS, ClipOptions, generate_video
from kling_prefect.tasks.connect import load_credentials, open_client
from kling_prefect.tasks.per_model import (
    kling_26_text_to_video,
    kling_30_text_to_video,
    kling_o1_image_to_video,
    kling_o1_text_to_video,
    kling_o3_text_to_video,
)
from kling_prefect.tasks.store import store_kling_video
from kling_prefect.tasks.submit import JobSubmissionKey, submit_kling_job
from kling_prefect.tasks.wait import wait_for_kling_job

__all__ = [
    "STEP_ATTEMPTS",
    "UNKNOWN_STATUS_RECHECKS",
    "ClipOptions",
    "FinishedJob",
    "JobSubmissionKey",
    "StoredVideo",
    "SubmittedJob",
    "generate_video",
    "kling_26_text_to_video",
    "kling_30_text_to_video",
    "kling_o1_image_to_video",
    "kling_o1_text_to_video",
    "kling_o3_text_to_video",
    "load_credentials",
    "open_client",
    "store_kling_video",
    "submit_kling_job",
    "wait_for_kling_job",
]
