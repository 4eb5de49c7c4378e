"""Callbacks through a Prefect Cloud webhook: the template, the workers' side, and the whole path offline.

Prefect Cloud cannot be reached here. What it does with a request is documented (a Jinja2 template over the
request's ``method``, ``headers`` (no ``Authorization``) and ``body``, parsed as JSON for ``application/json``,
as a form for ``application/x-www-form-urlencoded``, as JSON if it parses otherwise, else a string; the output
must be a JSON event), so the tests render :data:`WEBHOOK_TEMPLATE` that way in Jinja2's sandbox, check every
result is an event Prefect accepts, and then stand in for the webhook over real HTTP: the emulator's callbacks
go to it, it publishes the rendered events to the session's Prefect server, and waits hear them on its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jinja2.sandbox
import pytest

from kling_prefect.callback_relay import CALLBACK_RECEIVED
from kling_prefect.callback_webhook import WEBHOOK_TEMPLATE, WebhookCallbacks
from kling_prefect.callbacks import CALLBACK_MODES, callback_receiver
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.waiting import Doorbell
from tests.deploy_helpers import free_port
from tests.helpers import captured_lines
from tests.test_callback_relay import Event, FakeStream, each_wait_woken_once, until

WEBHOOK_URL = "https://api.prefect.cloud/hooks/AERylZ_uewzpDx-8fcweHQ"


def render(body: Any, headers: dict[str, str] | None = None, method: str = "POST") -> dict[str, Any]:
    """What Prefect Cloud makes of a request, as its documentation describes: the template's JSON output."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment()
    text = environment.from_string(WEBHOOK_TEMPLATE).render(method=method, headers=headers or {}, body=body)
    return json.loads(text)


def parse_body(content: bytes, content_type: str) -> Any:
    """A request body as Prefect Cloud's templates see it (its documented "best effort")."""
    text = content.decode("utf-8", "replace")
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(text))
    try:
        return json.loads(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------------------------- the template


@pytest.mark.parametrize(
    ("body", "job_id", "status"),
    [
        ({"job_id": "j-1", "status": 2}, "j-1", 2),  # what the bundled emulator sends
        ({"code": 0, "data": {"task_id": "t-9", "status": "succeeded"}}, "t-9", "succeeded"),
        ({"id": 12345}, "12345", None),
        ({"job_id": 'a"}, "event": "x'}, 'a"}, "event": "x', None),  # no injection: it stays one string
        ({"job_id": "x" * 129}, "", None),
        ({"job_id": ["a"], "status": {"nested": 1}}, "", None),
        ({}, "", None),
        ([1, 2], "", None),
        ("not json at all", "", None),
    ],
    ids=["emulator", "data-task-id", "integer-id", "quotes", "too-long", "not-strings", "empty", "list", "text"],
)
def test_the_template_makes_one_valid_event_of_any_body(body: Any, job_id: str, status: Any) -> None:
    from prefect.events import Event as PrefectEvent

    rendered = render(body, {"Content-Type": "application/json"})
    assert rendered["event"] == CALLBACK_RECEIVED
    assert rendered["resource"] == {"prefect.resource.id": f"kling.job.{job_id or 'unknown'}", "kling.job.id": job_id}
    assert rendered["payload"] == {"via": "prefect-cloud-webhook", "status": status}
    # Prefect Cloud fills in id and occurred; the rest must be an event Prefect accepts as it is.
    event = PrefectEvent.model_validate(rendered)
    assert event.resource.id == f"kling.job.{job_id or 'unknown'}"


def test_a_form_posted_body_works_too() -> None:
    body = parse_body(b"job_id=job-7&status=2", "application/x-www-form-urlencoded")
    assert render(body)["resource"]["kling.job.id"] == "job-7"


def test_the_cli_prints_the_template(capsys) -> None:
    from kling_prefect.cli import main

    assert main(["callbacks", "webhook-template"]) == 0
    assert capsys.readouterr().out == WEBHOOK_TEMPLATE


# --------------------------------------------------------------------------------------------- a worker's side


def job_event(job_id: str, **resource: str) -> Event:
    return Event(CALLBACK_RECEIVED, {"prefect.resource.id": f"kling.job.{job_id}", "kling.job.id": job_id, **resource})


@pytest.fixture
def faked() -> Iterator[tuple[WebhookCallbacks, FakeStream]]:
    stream = FakeStream()
    callbacks = WebhookCallbacks(WEBHOOK_URL, subscriber=stream).start()
    yield callbacks, stream
    callbacks.close()


def test_a_job_is_woken_by_the_event_naming_it_and_by_nothing_else(faked) -> None:
    callbacks, stream = faked
    # No heartbeats come from a webhook: the stream is live once subscribed, and quiet does not end it.
    assert until(lambda: callbacks.trusted)
    time.sleep(0.5)
    assert callbacks.trusted and callbacks.stats()["subscriptions"] == 1
    assert callbacks.new_url() == WEBHOOK_URL == callbacks.new_url()  # one URL for every job
    ours, other = Doorbell(), Doorbell()
    with (
        callbacks.subscribe(WEBHOOK_URL, ours, "job-a") as a,
        callbacks.subscribe(WEBHOOK_URL, other, "job-b") as b,
        callbacks.subscribe("https://elsewhere.example/hook", Doorbell(), "job-c") as c,
    ):
        assert (a, b, c) == (True, True, False)
        stream.push(job_event("job-a"))
        assert until(lambda: callbacks.stats()["received"] == 1)
        assert ours.take_hint() and not other.take_hint()
        # A relay's event (known by its token) and an id of the wrong shape wake nothing here.
        stream.push(job_event("job-b", **{"kling.callback.token": "t" * 22}))
        stream.push(job_event("../job-b"))
        stream.push(job_event(""))
        assert until(lambda: callbacks.stats()["events"] == 4)
        time.sleep(0.1)
        assert not other.take_hint() and callbacks.stats()["received"] == 1
    callbacks.job_ended(WEBHOOK_URL, "job-a")
    assert callbacks.stats()["confirmed"] == 1


def test_a_callback_before_its_wait_began_is_kept_for_it(faked) -> None:
    callbacks, stream = faked
    stream.push(job_event("job-early"))  # the job ended before its create's answer reached the wait
    assert until(lambda: callbacks.stats()["unknown"] == 1)
    doorbell = Doorbell()
    with callbacks.subscribe(WEBHOOK_URL, doorbell, "job-early"):
        assert doorbell.take_hint()


def test_a_dropped_stream_is_not_trusted_until_subscribed_again(faked) -> None:
    callbacks, stream = faked
    assert until(lambda: callbacks.trusted)
    doorbell = Doorbell()
    with callbacks.subscribe(WEBHOOK_URL, doorbell, "job-a"):
        stream.push(None)
        assert until(lambda: stream.opened == 2)
        assert doorbell._rung  # told to re-plan when the stream dropped
        assert until(lambda: callbacks.trusted)


def test_the_webhook_url_is_not_shown_whole_and_the_mode_is_chosen_by_a_setting(caplog) -> None:
    callbacks = WebhookCallbacks(WEBHOOK_URL, subscriber=FakeStream())
    assert "AERylZ_uewzpDx" not in repr(callbacks) and callbacks.shown_url.endswith("/AERy...")
    assert "webhook" in CALLBACK_MODES
    env = {"SHORTAPI_KEY": "sk-x", "SHORTAPI_CALLBACK_URL": WEBHOOK_URL, "SHORTAPI_CALLBACK_MODE": "webhook"}
    assert ShortAPICredentials.from_env(env).callback_mode == "webhook"
    assert callback_receiver("https://hooks.example/k-{port}", mode="webhook") is None  # a port has no place here
    assert "a relay's or a webhook's URL has no {port}" in caplog.text


# --------------------------------------------------------------------------------------------- the whole path


class WebhookStandIn:
    """What a Prefect Cloud webhook does with a request (see the module documentation), as an ASGI app."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        from prefect.events import emit_event

        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"] if k.lower() != b"authorization"}
        body = parse_body(b"".join(chunks), headers.get("content-type", ""))
        rendered = render(body, headers, scope["method"])
        emit_event(event=rendered["event"], resource=rendered["resource"], payload=rendered["payload"])
        self.requests += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def webhook_stand_in(port: int) -> Iterator[WebhookStandIn]:
    import uvicorn

    app = WebhookStandIn()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert until(lambda: server.started, 20), "the webhook stand-in did not start"
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def test_the_emulators_callbacks_through_the_template_wake_each_wait_once(
    prefect_server, emulator, fast_client_options
) -> None:
    port = free_port()
    with webhook_stand_in(port) as webhook:
        url = f"http://127.0.0.1:{port}/hooks/AERylZ_uewzpDx-8fcweHQ"
        callbacks = callback_receiver(url, mode="webhook")
        assert isinstance(callbacks, WebhookCallbacks)
        try:
            assert await asyncio.to_thread(until, lambda: callbacks.live, 30)
            await each_wait_woken_once(callbacks, emulator, fast_client_options, 12)
            assert webhook.requests == 12  # every callback went through the template

            # Forged: a POST naming a job nobody here waits for, and one naming nothing. No query follows.
            async with httpx.AsyncClient() as http:
                assert (await http.post(url, json={"job_id": "job-nobody-waits-for"})).status_code == 204
                xml = await http.post(url, content=b"<xml/>", headers={"content-type": "text/xml"})
                assert xml.status_code == 204
            assert await asyncio.to_thread(until, lambda: callbacks.stats()["unknown"] == 1, 10)
            await asyncio.sleep(0.5)
            assert emulator.stats().queries == 12 and callbacks.stats()["received"] == 12
        finally:
            callbacks.close()


async def test_a_users_flow_hears_its_jobs_through_the_webhook(
    prefect_server, vendor_env, monkeypatch, tmp_path
) -> None:
    """The reusable tasks in a user's own flow, configured by the environment only (webhook mode)."""
    from prefect import flow

    from kling_prefect import StorageSpec
    from kling_prefect.models import KlingO3TextToVideo
    from kling_prefect.tasks import generate_video

    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/flow-webhook"
    monkeypatch.setenv("SHORTAPI_CALLBACK_URL", url)
    monkeypatch.setenv("SHORTAPI_CALLBACK_MODE", "webhook")

    storage = StorageSpec(directory=str(tmp_path))

    @flow
    async def my_clips() -> list[str]:
        requests = [KlingO3TextToVideo(prompt=f"A harbour at dusk {i}", duration=3, mode="std") for i in range(3)]
        clips = await asyncio.gather(
            *(
                generate_video(r, run_key="webhook-flow", step=f"clip-{i}", storage=storage, timeout=60)
                for i, r in enumerate(requests)
            )
        )
        return [str(clip.local_path) for clip in clips]

    with captured_lines("prefect.task_runs") as lines, webhook_stand_in(port) as webhook:
        paths = await my_clips()
    # The run log says how callbacks are heard, and shows the webhook's URL only by its start.
    said = f"hearing the vendor's callbacks to http://127.0.0.1:{port}/hooks/flow... on Prefect's event stream"
    assert said in lines and not any(url in line for line in lines)
    receiver = callback_receiver(url, mode="webhook")
    try:
        assert isinstance(receiver, WebhookCallbacks)
        assert len(paths) == 3 and all(Path(p).stat().st_size > 0 for p in paths)
        stats = vendor_env.stats()
        assert webhook.requests == 3 and {job.callback_url for job in stats.jobs.values()} == {url}
        # Each wait was woken by its job's callback: heard before its job was seen ended, none missed.
        counts = receiver.stats()
        assert counts["confirmed"] == 3 and counts["missed"] == 0
    finally:
        receiver.close()
