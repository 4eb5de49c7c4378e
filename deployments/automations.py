"""Prefect automations on kling-prefect's events: an alert on every failed job, and spend alerts.

Run from anywhere with ``PREFECT_API_URL`` pointing at your server (or Prefect Cloud). Alerts go through a saved
Prefect notification block (Slack, Teams, email, a custom webhook, ...), named ``<block type slug>/<block name>``
as ``prefect block ls`` shows it::

    python deployments/automations.py failed-jobs --notify slack-webhook/kling-alerts
    python deployments/automations.py spend-alert --notify slack-webhook/kling-alerts --jobs 40 --hours 24
    python deployments/automations.py spend --hours 24 --max-usd 25    # exits 1 when over: schedule it

``failed-jobs`` and ``spend-alert`` create (or update, by name) an automation on the server; from then on the
server itself reacts to the events the package emits (``kling.job.failed``, ``kling.job.created``), whatever
worker or machine ran the job. ``--flow NAME`` limits an automation to the runs of one flow
(``kling-batch``, or your own flow that calls ``generate_video``). ``spend`` sums the estimated and
vendor-reported cost in the ``kling.job.created`` events of a time window.

Examples:
    ```python
    import asyncio
    from automations import failed_job_alert

    automation_id = asyncio.run(failed_job_alert("slack-webhook/kling-alerts"))
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from kling_prefect.events import JOB_CREATED, JOB_FAILED, job_spend
from kling_prefect.pricing import format_usd

FAILED_JOB_AUTOMATION = "kling-job-failed"
SPEND_AUTOMATION = "kling-job-spend"

# Jinja, rendered by the server when the automation fires: `event` is the triggering event, `flow_run` the flow
# run related to it (the package relates every job event to its flow run).
FAILED_JOB_SUBJECT = "Kling job failed: {{ event.payload.step }} of run {{ event.payload.run_key }}"
FAILED_JOB_BODY = """\
Kling job {{ event.payload.job_id }} ({{ event.payload.model }}) failed at the vendor.
Reason: {{ event.payload.reason }}
Step {{ event.payload.step }} of run {{ event.payload.run_key }}; \
estimated cost {{ event.payload.estimated_cost_usd }} USD, vendor-reported {{ event.payload.vendor_amount_usd }} USD.
{% if flow_run %}Flow run: {{ flow_run.name }} {{ flow_run|ui_url }}{% endif %}"""

SPEND_SUBJECT = "Kling spend: {{ firing.trigger.threshold }} or more jobs created"
SPEND_BODY = """\
{{ events|length }} Kling jobs were created within {{ firing.trigger.within }}; the last one:
job {{ event.payload.job_id }} ({{ event.payload.model }}, {{ event.payload.video_seconds }} s), estimated \
{{ event.payload.estimated_cost_usd }} USD, run {{ event.payload.run_key }}.
Check the spend: python deployments/automations.py spend --hours 24"""


async def notification_block_id(notify: str) -> UUID:
    """The id of a saved notification block named ``<block type slug>/<block name>`` (``slack-webhook/alerts``)."""
    slug, _, name = notify.partition("/")
    if not slug or not name:
        raise SystemExit(
            f"--notify {notify!r}: give the block as <block type slug>/<block name>, e.g. slack-webhook/kling-alerts "
            "(see `prefect block ls`)"
        )
    async with get_client() as client:
        document = await client.read_block_document_by_name(name=name, block_type_slug=slug, include_secrets=False)
    return document.id


def _job_trigger(event: str, flow: str | None, threshold: int = 1, within: timedelta = timedelta(0)) -> EventTrigger:
    related: dict[str, Any] = {}
    if flow:
        related = {"prefect.resource.role": "flow", "prefect.resource.name": flow}
    return EventTrigger(
        expect={event},
        match={"prefect.resource.id": "kling.job.*"},
        match_related=related,
        posture=Posture.Reactive,
        threshold=threshold,
        within=within,
    )


async def upsert(automation: AutomationCore) -> UUID:
    """Create the automation, or replace the one with the same name: running a setup script twice is harmless."""
    async with get_client() as client:
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                await client.delete_automation(duplicate.id)
            return existing[0].id
        return await client.create_automation(automation)


async def failed_job_alert(notify: str, flow: str | None = None, name: str = FAILED_JOB_AUTOMATION) -> UUID:
    """An automation that sends a notification for every ``kling.job.failed`` event (one per failed job)."""
    block = await notification_block_id(notify)
    scope = f" of flow {flow}" if flow else ""
    return await upsert(
        AutomationCore(
            name=name,
            description=f"Notify {notify} when a Kling job{scope} fails at the vendor (event {JOB_FAILED}).",
            trigger=_job_trigger(JOB_FAILED, flow),
            actions=[SendNotification(block_document_id=block, subject=FAILED_JOB_SUBJECT, body=FAILED_JOB_BODY)],
        )
    )


async def spend_alert(
    notify: str, jobs: int, hours: float, flow: str | None = None, name: str = SPEND_AUTOMATION
) -> UUID:
    """An automation that sends a notification when ``jobs`` Kling jobs were created within ``hours``.

    Event triggers count events; they do not add up payloads. Choose ``jobs`` as your budget divided by a job's
    typical cost (a 5 s kling-o3 pro clip is estimated at $0.475): 40 jobs of that kind are about $19. For the
    exact sum, schedule :func:`job_spend` (the ``spend`` command).
    """
    if jobs < 1 or hours <= 0:
        raise SystemExit(f"--jobs {jobs} --hours {hours}: need at least 1 job within more than 0 hours")
    block = await notification_block_id(notify)
    scope = f" of flow {flow}" if flow else ""
    return await upsert(
        AutomationCore(
            name=name,
            description=f"Notify {notify} when {jobs} Kling jobs{scope} were created within {hours:g} h "
            f"(events {JOB_CREATED}).",
            trigger=_job_trigger(JOB_CREATED, flow, threshold=jobs, within=timedelta(hours=hours)),
            actions=[SendNotification(block_document_id=block, subject=SPEND_SUBJECT, body=SPEND_BODY)],
        )
    )


async def spend_report(hours: float, max_usd: Decimal | None) -> int:
    """Print what the jobs created in the last ``hours`` cost; 1 when it is over ``max_usd``, else 0."""
    if hours <= 0 or (max_usd is not None and not max_usd >= 0):
        raise SystemExit(f"--hours {hours:g} --max-usd {max_usd}: need a window of more than 0 hours, a budget >= 0")
    since = datetime.now(UTC) - timedelta(hours=hours)
    spend = await job_spend(since)
    # The vendor's amount where it reported one; jobs without an amount count at their estimate.
    unreported_note = f", {spend.unreported} without a vendor amount" if spend.unreported else ""
    print(
        f"{spend.jobs} Kling jobs created in the last {hours:g} h: estimated {format_usd(spend.estimated_usd)}, "
        f"vendor-reported {format_usd(spend.vendor_reported_usd)}{unreported_note}"
    )
    spent = max(spend.vendor_reported_usd, spend.estimated_usd if spend.unreported else Decimal(0))
    if max_usd is not None and spent > max_usd:
        print(f"over budget: {format_usd(spent)} > --max-usd {format_usd(max_usd)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    failed = commands.add_parser("failed-jobs", help="notify on every failed job (automation on kling.job.failed)")
    failed.add_argument("--notify", required=True, help="notification block: <block type slug>/<block name>")
    failed.add_argument("--flow", help="only jobs of this flow (its name, e.g. kling-batch)")
    failed.add_argument("--name", default=FAILED_JOB_AUTOMATION, help="automation name (default: %(default)s)")
    rate = commands.add_parser("spend-alert", help="notify when N jobs were created within H hours")
    rate.add_argument("--notify", required=True, help="notification block: <block type slug>/<block name>")
    rate.add_argument("--jobs", type=int, required=True, help="jobs created within --hours that trigger it")
    rate.add_argument("--hours", type=float, default=24.0, help="the window (default: %(default)s)")
    rate.add_argument("--flow", help="only jobs of this flow (its name, e.g. kling-batch)")
    rate.add_argument("--name", default=SPEND_AUTOMATION, help="automation name (default: %(default)s)")
    spend = commands.add_parser("spend", help="print what the jobs of the last hours cost (from the events)")
    spend.add_argument("--hours", type=float, default=24.0, help="the window (default: %(default)s)")
    spend.add_argument("--max-usd", type=Decimal, help="exit 1 when the spend is higher")
    args = parser.parse_args(argv)
    if args.command == "failed-jobs":
        automation = asyncio.run(failed_job_alert(args.notify, args.flow, args.name))
        print(f"automation {args.name!r} ({automation}): notifies {args.notify} of every failed Kling job")
        return 0
    if args.command == "spend-alert":
        automation = asyncio.run(spend_alert(args.notify, args.jobs, args.hours, args.flow, args.name))
        print(
            f"automation {args.name!r} ({automation}): notifies {args.notify} at {args.jobs} jobs in {args.hours:g} h"
        )
        return 0
    return asyncio.run(spend_report(args.hours, args.max_usd))


if __name__ == "__main__":
    sys.exit(main())
