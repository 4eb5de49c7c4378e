"""Prefect events for a job's life, to automate on (alerts on failures, spend dashboards).

| event | when | payload (besides job id, model, step, run key, seconds, costs) |
|---|---|---|
| ``kling.job.created`` | the vendor accepted a create (a resumed job is not created again) | - |
| ``kling.job.succeeded`` | the job ended with a video | ``waited_seconds`` |
| ``kling.job.failed`` | the job ended failed or in an undocumented status | ``reason`` (the vendor's) |
| ``kling.video.stored`` | the clip is in the user's storage | ``uri``, ``size_bytes``, ``duration_seconds`` |

The resource is the job: ``prefect.resource.id`` ``kling.job.<job id>``, with ``kling.model``, ``kling.step``,
``kling.run-key`` labels. The flow run and task run that did it are related resources, and Prefect adds the
flow, the deployment and the tags, so the events show on the flow run's page and automations can filter on the
flow or deployment. Every payload has ``job_id``, ``model``, ``step``, ``run_key``, ``video_seconds``,
``estimated_cost_usd`` and ``vendor_amount_usd`` (strings of USD; the vendor's amount ``None`` when it reported
none).

Examples:
    What the jobs created in the last day cost, from the events (``deployments/automations.py spend``)::

        import asyncio
        from datetime import datetime, timedelta, timezone
        from kling_prefect.events import job_spend

        spend = asyncio.run(job_spend(datetime.now(timezone.utc) - timedelta(days=1)))
        spend.jobs, spend.estimated_usd, spend.vendor_reported_usd  # (12, Decimal('6.270'), Decimal('6.270'))

    An alert on failed jobs: ``python deployments/automations.py failed-jobs --notify slack-webhook/alerts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from kling_prefect.client.responses import parse_amount
from kling_prefect.records import SubmittedJob

__all__ = [
    "JOB_CREATED",
    "JOB_FAILED",
    "JOB_SUCCEEDED",
    "VIDEO_STORED",
    "JobSpend",
    "emit_job_event",
    "job_resource_id",
    "job_spend",
]

JOB_CREATED = "kling.job.created"
JOB_SUCCEEDED = "kling.job.succeeded"
JOB_FAILED = "kling.job.failed"
VIDEO_STORED = "kling.video.stored"

_log = logging.getLogger("kling_prefect.events")


def job_resource_id(job_id: str) -> str:
    return f"kling.job.{job_id}"


def _related() -> list[dict[str, str]]:
    related = []
    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        flow_run = flow_context.flow_run
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.name,
            }
        )
    task_context = TaskRunContext.get()
    if task_context is not None:
        task_run = task_context.task_run
        related.append(
            {
                "prefect.resource.id": f"prefect.task-run.{task_run.id}",
                "prefect.resource.role": "task-run",
                "prefect.resource.name": task_run.name,
            }
        )
    return related


def emit_job_event(event: str, job: SubmittedJob, **payload: Any) -> None:
    """Emit ``event`` about ``job`` (never raises: an event is a notification, never a reason to fail a paid job)."""
    amount = parse_amount(job.amount)
    try:
        emit_event(
            event=event,
            resource={
                "prefect.resource.id": job_resource_id(job.job_id),
                "prefect.resource.name": f"{job.step} ({job.job_id})",
                "kling.model": job.model,
                "kling.step": job.step,
                "kling.run-key": job.run_key,
            },
            related=_related(),
            payload={
                "job_id": job.job_id,
                "model": job.model,
                "step": job.step,
                "run_key": job.run_key,
                "video_seconds": job.video_seconds,
                "estimated_cost_usd": str(job.estimated_cost),
                "vendor_amount_usd": None if amount is None else str(amount),
                **payload,
            },
        )
    except Exception as exc:
        _log.warning("could not emit %s for job %s: %s", event, job.job_id, exc)


@dataclass(frozen=True)
class JobSpend:
    """What the jobs created in a time window cost, from their ``kling.job.created`` events.

    ``vendor_reported_usd`` sums the amounts the vendor reported; ``unreported`` jobs had none (their estimate is
    in ``estimated_usd`` like every job's).
    """

    jobs: int
    estimated_usd: Decimal
    vendor_reported_usd: Decimal
    unreported: int


async def job_spend(since: datetime, until: datetime | None = None) -> JobSpend:
    """Sum the ``kling.job.created`` events between ``since`` and ``until`` (default: now) from the Prefect API.

    Each job counts once (by its resource id), however often its event was delivered. The server keeps events
    for a limited time (``PREFECT_EVENTS_RETENTION_PERIOD``, 7 days by default).
    """
    window: dict[str, datetime] = {"since": since} if until is None else {"since": since, "until": until}
    occurred = EventOccurredFilter.model_validate(window)  # Prefect's own datetime type, from a plain datetime
    query = EventFilter(occurred=occurred, event=EventNameFilter(name=[JOB_CREATED]))
    seen: dict[str, tuple[Decimal, Decimal | None]] = {}
    async with get_client() as client:
        page = await client.read_events(filter=query, limit=50)
        while True:
            for event in page.events:
                payload = event.payload
                estimated = parse_amount(payload.get("estimated_cost_usd")) or Decimal(0)
                seen[event.resource.id] = (estimated, parse_amount(payload.get("vendor_amount_usd")))
            if page.next_page is None:
                break
            page = await client.read_events_page(str(page.next_page))
    amounts = list(seen.values())
    return JobSpend(
        jobs=len(amounts),
        estimated_usd=sum((estimated for estimated, _ in amounts), Decimal(0)),
        vendor_reported_usd=sum((vendor for _, vendor in amounts if vendor is not None), Decimal(0)),
        unreported=sum(1 for _, vendor in amounts if vendor is None),
    )
