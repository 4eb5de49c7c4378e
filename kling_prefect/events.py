"""Prefect events for a job's life, to automate on (alerts on failures, spend dashboards).

| event | when | payload |
|---|---|---|
| ``kling.job.created`` | the vendor accepted a create | estimated and vendor-reported cost, seconds of video |
| ``kling.job.succeeded`` | the job ended with a video | seconds waited |
| ``kling.job.failed`` | the job ended failed or in an undocumented status | the vendor's reason |
| ``kling.video.stored`` | the clip is in the user's storage | where, size, duration |

The resource is the job: ``prefect.resource.id`` ``kling.job.<job id>``, with ``kling.model``, ``kling.step``,
``kling.run-key`` labels; the flow run and task run that did it are related resources, so the events show on
the flow run's page and automations can filter on the flow or deployment. Amounts are strings of USD.

Examples:
    A spend alert: an automation with a trigger on ``kling.job.created`` events (``expect``), counting, or a
    script that sums ``payload.estimated_cost_usd`` over ``POST /api/events/filter`` for a day.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event

from kling_prefect.client.responses import parse_amount
from kling_prefect.records import SubmittedJob

__all__ = ["JOB_CREATED", "JOB_FAILED", "JOB_SUCCEEDED", "VIDEO_STORED", "emit_job_event", "job_resource_id"]

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
