"""The deployments of ``deployments/prefect.yaml``, served from one long-running process: no work pool needed.

    export PREFECT_API_URL=http://127.0.0.1:4200/api   # a running `prefect server start` (or Prefect Cloud)
    export SHORTAPI_KEY=...                            # or save a ShortAPICredentials block (see README)
    kling-prefect setup --jobs-limit 5                 # once: block types and the shared jobs-in-flight limit
    python deployments/serve.py                        # from the repository root (the storyboard's keyframes)

The process registers the four deployments with their schedules and runs every scheduled or triggered run
itself (each in a subprocess), until stopped with Ctrl-C. Names, schedules, parameters, tags and concurrency
limits are the same as in prefect.yaml (a test keeps them in step). Several `serve` processes, workers and
ad-hoc runs may run at once: the global limit `kling-jobs-in-flight` bounds their jobs in flight together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval
from prefect.types.entrypoint import EntrypointType

from kling_prefect.concurrency import DEFAULT_JOBS_LIMIT
from kling_prefect.flows import batch, continuation, storyboard, text_to_video

#: Schedules run in this zone (the daily content run is at 07:00 / 07:30 Berlin time, all year round).
CONTENT_TIMEZONE = "Europe/Berlin"


def build_deployments() -> list[RunnerDeployment]:
    """The four deployments, ready for ``serve(...)`` (building them contacts no server)."""
    # Module entrypoints: the served process finds the flows wherever kling-prefect is installed.
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "version": "1"}
    daily_clip = text_to_video.to_deployment(
        name="daily-clip",
        description="One Kling clip every morning at 07:00 Europe/Berlin, stored with its artifacts.",
        tags=["kling", "video", "daily"],
        schedules=[Cron("0 7 * * *", timezone=CONTENT_TIMEZONE)],
        concurrency_limit=1,
        parameters={
            "prompt": "A lighthouse at dawn, waves crashing against the rocks, cinematic, golden light",
            "model": "kling-o3",
            "duration": 5,
            "aspect_ratio": "16:9",
            "max_cost_usd": 2.0,
            "jobs_limit": DEFAULT_JOBS_LIMIT,
        },
        **common,
    )
    daily_story = continuation.to_deployment(
        name="daily-story",
        description="A three-clip story every weekday at 07:30 Europe/Berlin, joined into final.mp4.",
        tags=["kling", "video", "daily", "continuation"],
        schedules=[Cron("30 7 * * 1-5", timezone=CONTENT_TIMEZONE)],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters={
            "prompts": [
                "A paper boat is set on a calm canal at sunrise",
                "The paper boat drifts under an old stone bridge",
                "The paper boat glides into a sunny harbour",
            ],
            "model": "kling-o3",
            "duration": 5,
            "aspect_ratio": "16:9",
            "continuation_duration": 5,
            "max_cost_usd": 5.0,
            "jobs_limit": DEFAULT_JOBS_LIMIT,
        },
        **common,
    )
    weekly_storyboard = storyboard.to_deployment(
        name="weekly-storyboard",
        description="A video through three keyframes every Monday at 08:00 Europe/Berlin, joined into final.mp4.",
        tags=["kling", "video", "storyboard"],
        schedules=[Cron("0 8 * * 1", timezone=CONTENT_TIMEZONE)],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters={
            # relative to the working directory: run serve.py from the repository root
            "keyframes": [
                "deployments/keyframes/01-dawn.png",
                "deployments/keyframes/02-noon.png",
                "deployments/keyframes/03-dusk.png",
            ],
            "prompts": [
                "The sun climbs over the green hills, the sky brightens to a clear blue",
                "The sun sinks behind the hills, the sky turns deep red and violet",
            ],
            "duration": 5,
            "mode": "pro",
            "max_cost_usd": 2.0,
            "jobs_limit": DEFAULT_JOBS_LIMIT,
        },
        **common,
    )
    batch_every_6h = batch.to_deployment(
        name="batch-every-6h",
        description=(
            "A batch of prompts every 6 hours, at most max_concurrency jobs per run, all runs within the jobs limit."
        ),
        tags=["kling", "video", "batch"],
        schedules=[
            Interval(
                timedelta(hours=6),
                anchor_date=datetime(2026, 1, 1, 2, 0, tzinfo=UTC),
                timezone="UTC",
            )
        ],
        parameters={
            "prompts": [
                "A red fox runs through fresh snow, slow motion",
                "Rain on a neon-lit street at night, reflections",
                "A hot air balloon rises over green hills at sunrise",
            ],
            "model": "kling-o3",
            "max_concurrency": 4,
            "max_cost_usd": 10.0,
            "jobs_limit": DEFAULT_JOBS_LIMIT,
            "fail_on_error": True,
        },
        **common,
    )
    return [daily_clip, daily_story, weekly_storyboard, batch_every_6h]


if __name__ == "__main__":
    serve(*build_deployments())
