"""Prefect events of a job's life, read back through the events API of a real server, and the example automations
in deployments/automations.py firing on them: the server's own trigger and action services POST a notification to
a webhook on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.settings import PREFECT_API_URL

from kling_prefect import JobFailed
from kling_prefect.events import JOB_CREATED, JOB_FAILED, JOB_SUCCEEDED, VIDEO_STORED, job_spend
from kling_prefect.flows import text_to_video

from .helpers import LoopbackServer, answer, read_body

pytestmark = pytest.mark.usefixtures("prefect_server", "vendor_env")

REPO = Path(__file__).resolve().parents[1]
AUTOMATIONS = REPO / "deployments" / "automations.py"
FAST = {"poll_interval": 0.05, "timeout_seconds": 120}
MODERATION = "video generation failed: content moderation"


async def kling_events(flow_run_id: Any, count: int, timeout: float = 30.0) -> list[Any]:
    """The ``kling.*`` events related to a flow run, once ``count`` of them are stored (the client sends events in
    the background and the server stores them in batches)."""
    query = EventFilter(
        event=EventNameFilter(prefix=["kling."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            events = (await client.read_events(filter=query, limit=50)).events
            if len(events) >= count or time.monotonic() > deadline:
                return sorted(events, key=lambda e: e.occurred)
            await asyncio.sleep(0.2)


def roles(event: Any) -> dict[str, Any]:
    return {r.role: r for r in event.related}


async def test_job_events_name_the_job_and_relate_to_the_flow_run(tmp_path: Path) -> None:
    state = await text_to_video(
        "A lighthouse at dawn", duration=3, run_key="events-ok", output_dir=str(tmp_path), return_state=True, **FAST
    )
    assert state.is_completed() and state.message == "1 of 1 clip stored"
    result = await state.aresult()
    (record,) = result.records
    flow_run_id = state.state_details.flow_run_id

    events = await kling_events(flow_run_id, 3)
    assert [e.event for e in events] == [JOB_CREATED, JOB_SUCCEEDED, VIDEO_STORED]
    for event in events:
        assert event.resource.id == f"kling.job.{record.job_id}"
        assert event.resource["kling.model"] == "kwaivgi/kling-o3/text-to-video"
        assert event.resource["kling.step"] == "clip-01"
        assert event.resource["kling.run-key"] == "events-ok"
        assert event.payload["job_id"] == record.job_id and event.payload["run_key"] == "events-ok"
        # 3 s of kling-o3 pro without sound: $0.095 a second; the emulator reports the same amount
        assert event.payload["estimated_cost_usd"] == "0.285" and event.payload["vendor_amount_usd"] == "0.285"
        related = roles(event)
        assert related["flow-run"].id == f"prefect.flow-run.{flow_run_id}"
        assert related["flow-run"].name == "events-ok: A lighthouse at dawn"  # the run's name: key + prompt
        assert related["flow"].name == "kling-text-to-video"  # added by Prefect: automations can scope on it
    assert roles(events[0])["task-run"].name == "submit-clip-01"
    assert roles(events[1])["task-run"].name == "wait-clip-01"
    assert events[2].payload["duration_seconds"] == pytest.approx(3.0, abs=0.05)
    assert events[2].payload["uri"] == record.uri


async def test_a_failed_job_emits_its_reason_and_a_spend_sum_reads_the_created_events(emulator, tmp_path) -> None:
    # The window starts now: events are stamped by this machine's clock, and the previous test's job was created
    # well under a second ago.
    since = datetime.now(UTC)
    emulator.inject("job_failure", times=1, message=MODERATION)
    state = await text_to_video(
        "A forbidden scene", duration=5, run_key="events-fail", output_dir=str(tmp_path), return_state=True, **FAST
    )
    with pytest.raises(JobFailed):
        await state.aresult()
    events = await kling_events(state.state_details.flow_run_id, 2)
    assert [e.event for e in events] == [JOB_CREATED, JOB_FAILED]
    failed = events[1]
    assert MODERATION in failed.payload["reason"]
    assert failed.payload["estimated_cost_usd"] == "0.475"  # the failed job was created, so it may be billed

    # The spend of this test's window is this job's: summed from the events, each job once.
    spend = await job_spend(since, datetime.now(UTC))
    job_ids = {j for j in emulator.stats().jobs}
    assert job_ids == {failed.payload["job_id"]}
    assert (spend.jobs, spend.estimated_usd, spend.unreported) == (1, Decimal("0.475"), 0)
    assert spend.vendor_reported_usd == Decimal("0.475")
    # The same from the command line, as a scheduled budget check: exit 1 over budget.
    over = run_script("spend", "--hours", "1", "--max-usd", "0.10", tmp_path=tmp_path)
    assert over.returncode == 1 and "over budget: " in over.stderr, (over.stdout, over.stderr)
    assert "Kling jobs created in the last 1 h: estimated $" in over.stdout
    under = run_script("spend", "--hours", "1", "--max-usd", "1000000", tmp_path=tmp_path)
    assert under.returncode == 0, under.stderr


# --------------------------------------------------------------------------------------------- automations


class WebhookSink:
    """A webhook on loopback that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self.server = LoopbackServer(self._handle)

    def _handle(self, method: str, request: BaseHTTPRequestHandler) -> None:
        body = json.loads(read_body(request) or b"{}")
        answer(request, 200, b"{}")
        with self._arrived:
            self.received.append(body)
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """What arrived once ``count`` requests did, or after ``timeout`` seconds."""

        def wait() -> list[dict[str, Any]]:
            with self._arrived:
                self._arrived.wait_for(lambda: len(self.received) >= count, timeout)
                return list(self.received)

        return await asyncio.to_thread(wait)


def run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python deployments/automations.py ARGS`` as a user runs it, against the test session's server."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(tmp_path / "script-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    return subprocess.run(
        [sys.executable, str(AUTOMATIONS), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture
def sink():
    webhook = WebhookSink()
    yield webhook
    webhook.server.close()


async def test_the_example_automations_fire_on_a_failed_job(emulator, sink, tmp_path) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    await CustomWebhookNotificationBlock(
        name="kling test sink",
        url=f"{sink.server.base_url}/notify",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,  # the sink is on loopback
    ).save("kling-test-sink", overwrite=True)

    made = [
        run_script("failed-jobs", "--notify", "custom-webhook/kling-test-sink", "--flow", "kling-text-to-video",
                   tmp_path=tmp_path),
        # one created job is enough to fire it here; a real one counts dozens
        run_script("spend-alert", "--notify", "custom-webhook/kling-test-sink", "--jobs", "1", "--hours", "1",
                   tmp_path=tmp_path),
    ]  # fmt: skip
    assert [m.returncode for m in made] == [0, 0], [m.stderr[-2000:] for m in made]
    again = run_script("failed-jobs", "--notify", "custom-webhook/kling-test-sink", tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    async with get_client() as client:
        automations = {a.name: a for a in await client.read_automations()}
        try:
            assert len([a for a in await client.read_automations() if a.name == "kling-job-failed"]) == 1  # upserted
            failed_alert = automations["kling-job-failed"]
            assert failed_alert.trigger.expect == {JOB_FAILED}
            spend_alert = automations["kling-job-spend"]
            assert spend_alert.trigger.expect == {JOB_CREATED} and spend_alert.trigger.threshold == 1

            emulator.inject("job_failure", times=1, message=MODERATION)
            state = await text_to_video(
                "A storm at sea", duration=3, run_key="alerted", output_dir=str(tmp_path), return_state=True, **FAST
            )
            assert state.is_failed()
            (job_id,) = emulator.stats().jobs

            received = await sink.wait_for(2)
            by_subject = {r["subject"].split(":")[0]: r for r in received}
            assert set(by_subject) == {"Kling job failed", "Kling spend"}, received
            failure = by_subject["Kling job failed"]
            assert failure["subject"] == "Kling job failed: clip-01 of run alerted"
            assert job_id in failure["body"] and MODERATION in failure["body"]
            assert "Flow run: alerted: A storm at sea" in failure["body"]  # the related flow run, resolved
            assert job_id in by_subject["Kling spend"]["body"]
        finally:
            for automation in automations.values():
                await client.delete_automation(automation.id)
