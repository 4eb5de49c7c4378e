"""The callback relay and workers hearing it on Prefect's event stream.

In-process first (the relay as an ASGI app, the stream faked), then real processes over loopback: a relay
subprocess publishing to the session's Prefect server, the emulator POSTing callbacks to it, and waits in this
process woken through the server's event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from kling_prefect.callback_relay import (
    CALLBACK_HEARTBEAT,
    CALLBACK_RECEIVED,
    MAX_BODY,
    PROBE_ANSWER,
    PROBE_PATH,
    CallbackRelay,
)
from kling_prefect.callback_stream import StreamCallbacks, wait_until_live
from kling_prefect.callbacks import callback_receiver
from kling_prefect.client import PollPolicy, ShortAPIClient
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.models import KlingO3TextToVideo
from kling_prefect.waiting import Doorbell, DurationModel
from tests.deploy_helpers import free_port
from tests.test_callbacks import wait

REQUEST = KlingO3TextToVideo(prompt="A lantern on a jetty", duration=3, mode="std")


def token() -> str:
    return secrets.token_urlsafe(16)


# --------------------------------------------------------------------------------------------- the relay alone


class Published(list[tuple[str, dict[str, str], list[dict[str, str]], dict[str, Any]]]):
    def __call__(self, event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict) -> None:
        self.append((event, resource, related, payload))


@pytest.fixture
def relay() -> tuple[CallbackRelay, Published, httpx.AsyncClient]:
    published = Published()
    app = CallbackRelay(published, heartbeat_seconds=0)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay")
    return app, published, client


async def test_a_callback_is_published_with_its_token_as_the_resource(relay) -> None:
    app, published, client = relay
    ours = token()
    answer = await client.post(f"/hooks/kling/{ours}", json={"job_id": "job-123", "status": 2})
    assert answer.status_code == 200 and answer.json() == {"code": 0}
    [(event, resource, related, payload)] = published
    assert event == CALLBACK_RECEIVED
    assert resource == {"prefect.resource.id": f"kling.callback.{ours}", "kling.callback.token": ours}
    # The body's job id is kept as a claim for readers, never as the resource a worker acts on.
    assert related == [{"prefect.resource.id": "kling.job.job-123", "prefect.resource.role": "claimed-job"}]
    assert payload == {"relay": app.instance}
    # An empty body (the vendor's format is not documented) and an ill-shaped claimed id are fine: no claim.
    assert (await client.post(f"/hooks/kling/{ours}")).status_code == 200
    assert (await client.post(f"/{ours}", json={"job_id": "../../etc"})).status_code == 200
    assert [p[2] for p in published[1:]] == [[], []]


async def test_a_form_or_plain_text_callback_is_published_too(relay) -> None:
    """The vendor documents no callback format: the common ones are taken; only JSON's claimed id is read."""
    _, published, client = relay
    form = {"content": b"job_id=job-9&status=2", "headers": {"content-type": "application/x-www-form-urlencoded"}}
    assert (await client.post(f"/hooks/kling/{token()}", **form)).status_code == 200
    text = {"content": b"job job-9 done", "headers": {"content-type": "text/plain; charset=utf-8"}}
    assert (await client.post(f"/hooks/kling/{token()}", **text)).status_code == 200
    assert [p[2] for p in published] == [
        [{"prefect.resource.id": "kling.job.job-9", "prefect.resource.role": "claimed-job"}],
        [],
    ]


async def test_probe_and_health_answer_without_publishing(relay) -> None:
    app, published, client = relay
    probe = await client.get(f"/hooks/kling/{PROBE_PATH}")
    assert probe.status_code == 200 and probe.json() == PROBE_ANSWER
    assert (await client.get("/healthz")).status_code == 200
    assert published == [] and app.counts["probes"] == 1


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/hooks/kling/not-a-token", {"json": {}}, 404),
        ("/hooks/kling/" + "a" * 23, {"json": {}}, 404),
        (
            "/hooks/kling/TOKEN",
            {"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "application/json"}},
            413,
        ),
        ("/hooks/kling/TOKEN", {"content": b"<xml/>", "headers": {"content-type": "text/xml"}}, 415),
        ("/hooks/kling/TOKEN", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ],
    ids=["bad-token", "long-token", "oversized", "content-type", "not-json"],
)
async def test_what_the_relay_refuses_publishes_nothing(relay, path, kwargs, status) -> None:
    app, published, client = relay
    answer = await client.post(path.replace("TOKEN", token()), **kwargs)
    assert answer.status_code == status
    assert published == [] and app.counts["refused"] == 1


async def test_a_body_without_a_length_is_cut_at_the_limit(relay) -> None:
    _, published, client = relay

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024

    answer = await client.post(f"/hooks/kling/{token()}", content=chunks())
    assert answer.status_code == 413 and published == []


async def test_a_flood_is_answered_429_and_publishes_nothing_past_the_rate(caplog) -> None:
    caplog.set_level(logging.INFO, logger="kling_prefect.callback_relay")
    published = Published()
    app = CallbackRelay(published, heartbeat_seconds=0, max_per_second=5)  # a burst of 10, then 5 a second
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        answers = [await client.post(f"/hooks/kling/{token()}", json={"job_id": "j"}) for _ in range(30)]
        statuses = [answer.status_code for answer in answers]
        assert statuses.count(200) in (10, 11) and statuses[:10] == [200] * 10  # 11: a refill during the burst
        assert statuses[-1] == 429 and answers[-1].headers["retry-after"] == "1"
        assert len(published) == statuses.count(200) and app.counts["flooded"] == statuses.count(429)
        await asyncio.sleep(0.45)  # two callbacks' worth refilled
        assert (await client.post(f"/hooks/kling/{token()}")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes and health are not rationed
    # One log line a second for a flood, not one a refused request.
    flood_lines = [r.getMessage() for r in caplog.records if "too many callbacks" in r.getMessage()]
    assert len(flood_lines) == 1 and "refused so far" in flood_lines[0]
    with pytest.raises(ValueError, match="max_per_second"):
        CallbackRelay(published, max_per_second=0)


async def test_other_methods_are_refused(relay) -> None:
    _, published, client = relay
    assert (await client.delete(f"/hooks/kling/{token()}")).status_code == 405
    assert (await client.get(f"/hooks/kling/{token()}")).status_code == 404
    assert published == []


def test_a_relay_served_from_a_thread_of_this_process(caplog) -> None:
    """The entry point for a Prefect ``serve`` process: the relay over real HTTP, its heartbeat on its lifespan."""
    from kling_prefect.callback_relay import serve_in_thread

    caplog.set_level(logging.INFO, logger="kling_prefect.callback_relay")
    published = Published()
    port = free_port()
    with serve_in_thread("127.0.0.1", port, relay=CallbackRelay(published, heartbeat_seconds=0.1)):
        ours = token()
        answer = httpx.post(f"http://127.0.0.1:{port}/hooks/kling/{ours}", json={"job_id": "j-1"}, timeout=10)
        assert answer.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert until(lambda: [p[0] for p in published].count(CALLBACK_HEARTBEAT) >= 2)
    assert (CALLBACK_RECEIVED, {"prefect.resource.id": f"kling.callback.{ours}", "kling.callback.token": ours}) in [
        (event, resource) for event, resource, _, _ in published
    ]
    beats = len(published)
    time.sleep(0.3)
    assert len(published) == beats  # stopped: no more heartbeats
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert f"POST /hooks/kling/{ours[:4]}... 200 published" in caplog.text  # one line a request, token cut


# --------------------------------------------------------------------------------------------- a stream, faked


@dataclass
class Event:
    event: str
    resource: dict[str, str] = field(default_factory=dict)
    occurred: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    payload: dict[str, Any] = field(default_factory=dict)


class FakeStream:
    """Subscriptions whose events the test pushes; ``drop()`` ends the current one."""

    def __init__(self) -> None:
        self.opened = 0
        self.queue: asyncio.Queue[Event | None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[FakeStream]:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.opened += 1
        yield self

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Event:
        assert self.queue is not None
        event = await self.queue.get()
        if event is None:
            raise ConnectionError("dropped")
        return event

    def push(self, event: Event | None) -> None:
        deadline = time.monotonic() + 5
        while self.loop is None or self.queue is None:
            assert time.monotonic() < deadline, "never subscribed"
            time.sleep(0.01)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def callback(self, url: str) -> None:
        ours = url.rsplit("/", 1)[-1]
        self.push(
            Event(CALLBACK_RECEIVED, {"prefect.resource.id": f"kling.callback.{ours}", "kling.callback.token": ours})
        )


@pytest.fixture
def faked() -> Iterator[tuple[StreamCallbacks, FakeStream]]:
    stream = FakeStream()
    callbacks = StreamCallbacks("https://hooks.example/kling", probe=False, stale_after=0.3, subscriber=stream).start()
    yield callbacks, stream
    callbacks.close()


def until(condition: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_a_streamed_callback_rings_its_wait_only_and_the_stream_must_be_live(faked) -> None:
    callbacks, stream = faked
    assert not callbacks.trusted  # nothing heard yet: waits poll on the full schedule
    stream.push(Event(CALLBACK_HEARTBEAT))
    assert until(lambda: callbacks.trusted)
    first, second = callbacks.new_url(), callbacks.new_url()
    assert first.startswith("https://hooks.example/kling/")
    ours, other = Doorbell(), Doorbell()
    with callbacks.subscribe(first, ours), callbacks.subscribe(second, other):
        stream.callback(first)
        assert until(lambda: callbacks.stats()["received"] == 1)
        assert ours.take_hint() and not other.take_hint()
        stream.callback(f"https://hooks.example/kling/{token()}")  # another worker's job
        assert until(lambda: callbacks.stats()["unknown"] == 1)
        assert not other.take_hint()


def test_a_callback_before_its_wait_is_kept_for_it(faked) -> None:
    callbacks, stream = faked
    issued = callbacks.new_url()
    foreign = f"https://hooks.example/kling/{token()}"  # a job another process created, resumed here
    stream.callback(issued)
    stream.callback(foreign)
    assert until(lambda: callbacks.stats()["events"] == 2)
    for url in (issued, foreign):
        doorbell = Doorbell()
        with callbacks.subscribe(url, doorbell):
            assert doorbell.take_hint()


def test_a_dropped_or_quiet_stream_is_not_trusted_and_is_subscribed_again(faked) -> None:
    callbacks, stream = faked
    stream.push(Event(CALLBACK_HEARTBEAT))
    assert until(lambda: callbacks.trusted)
    doorbell = Doorbell()
    with callbacks.subscribe(callbacks.new_url(), doorbell):
        stream.push(None)  # the connection drops
        assert until(lambda: not callbacks.trusted)
        assert doorbell._rung  # the wait was told to re-plan (back to the full schedule)
        assert until(lambda: stream.opened == 2)  # and the stream is opened again
        stream.push(Event(CALLBACK_HEARTBEAT))
        assert until(lambda: callbacks.trusted)
        # Quiet for stale_after (the relay died, or the socket hangs): not trusted, subscribed again.
        assert until(lambda: not callbacks.trusted and stream.opened == 3)


def test_a_relay_that_beats_slower_is_given_three_of_its_beats(faked) -> None:
    callbacks, stream = faked
    stream.push(Event(CALLBACK_HEARTBEAT, payload={"interval_seconds": 2}))
    assert until(lambda: callbacks.trusted)
    time.sleep(1.0)  # past stale_after (0.3 s), within three of the relay's beats (6 s)
    assert callbacks.trusted and callbacks.stats()["subscriptions"] == 1


def test_replayed_events_neither_ring_twice_nor_make_a_dead_relay_look_alive(faked) -> None:
    callbacks, stream = faked
    old = datetime.now(UTC) - timedelta(seconds=50)
    stream.push(Event(CALLBACK_HEARTBEAT, occurred=old))  # the backfill of a relay that has since died
    url = callbacks.new_url()
    ours = url.rsplit("/", 1)[-1]
    callback = Event(CALLBACK_RECEIVED, {"kling.callback.token": ours}, occurred=old)
    doorbell = Doorbell()
    with callbacks.subscribe(url, doorbell):
        stream.push(callback)
        assert until(lambda: callbacks.stats()["received"] == 1)  # an old callback still wakes its wait
        assert doorbell.take_hint()
        assert not callbacks.trusted  # nothing recent was heard
        stream.push(callback)  # the same event again, as a new subscription replays it
        stream.push(Event(CALLBACK_HEARTBEAT))
        assert until(lambda: callbacks.stats()["events"] == 3)
        assert not doorbell.take_hint() and callbacks.stats()["received"] == 1
    assert callbacks.stats()["events"] == 3


def test_the_relay_mode_needs_a_relay_that_answers_the_probe(caplog) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    assert callback_receiver(f"http://127.0.0.1:{port}/hooks", mode="relay") is None
    assert "not reachable" in caplog.text
    with pytest.raises(ValueError, match="callback_mode"):
        ShortAPICredentials(api_key="sk-x", callback_mode="both")
    env = {"SHORTAPI_KEY": "sk-x", "SHORTAPI_CALLBACK_URL": "https://h.example/k", "SHORTAPI_CALLBACK_MODE": "Relay"}
    assert ShortAPICredentials.from_env(env).callback_mode == "relay"
    with pytest.raises(ValueError, match="SHORTAPI_CALLBACK_MODE"):
        ShortAPICredentials.from_env({**env, "SHORTAPI_CALLBACK_MODE": "x"})


def test_the_serve_command_checks_its_input(capsys) -> None:
    from kling_prefect.cli import main
    from kling_prefect.cli.errors import EXIT_USAGE

    assert main(["callbacks", "serve", "--listen", "nowhere"]) == EXIT_USAGE
    assert "--listen: expected host:port" in capsys.readouterr().err
    assert main(["callbacks", "serve", "--heartbeat", "-1"]) == EXIT_USAGE
    assert "--heartbeat" in capsys.readouterr().err
    assert main(["callbacks", "serve", "--max-per-second", "0"]) == EXIT_USAGE
    assert "--max-per-second: must be from 1 to 100000" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- real processes


@contextlib.contextmanager
def relay_process(port: int, heartbeat: float = 0.5) -> Iterator[subprocess.Popen[bytes]]:
    """``kling-prefect callbacks serve`` in a subprocess, publishing to this session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [
        sys.executable,
        "-c",
        "import sys; from kling_prefect.cli import main; sys.exit(main())",
        "callbacks",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    process = subprocess.Popen([*command, "--heartbeat", str(heartbeat)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


async def wait_all(
    callbacks: StreamCallbacks, emulator: Any, options: dict, jobs: int, timeout: float = 20, **policy: float
) -> list:
    settings = {**options, "poll": PollPolicy.scaled(0.02, **policy)}
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=callbacks, **settings) as client:
        durations = DurationModel()
        created = await asyncio.gather(*(client.create_job(REQUEST) for _ in range(jobs)))
        return await asyncio.gather(*(wait(client, c, durations, timeout) for c in created))


async def each_wait_woken_once(callbacks: StreamCallbacks, emulator: Any, options: dict, jobs: int) -> list:
    """``jobs`` jobs, each wait woken by its callback: one query a job, every callback confirmed."""
    # A 30 s fallback: a wait whose callback was not heard would time out (20 s), not pass slowly.
    done = await wait_all(callbacks, emulator, options, jobs, callback_fallback=30.0)
    assert all(job.state == "succeeded" for job in done)
    stats = emulator.stats()
    assert stats.callbacks_sent == jobs and stats.callbacks_failed == 0
    assert stats.queries == jobs  # one query a job: the one its callback triggered
    counts = callbacks.stats()
    assert counts["confirmed"] == jobs and counts["missed"] == 0 and counts["outstanding"] == 0
    return done


async def test_a_relay_process_wakes_each_wait_through_the_event_stream(
    prefect_server, emulator, fast_client_options
) -> None:
    port = free_port()
    with relay_process(port):
        callbacks = StreamCallbacks(f"http://127.0.0.1:{port}/hooks/kling", stale_after=5).start()
        try:
            assert await asyncio.to_thread(wait_until_live, callbacks, 30)
            jobs = await each_wait_woken_once(callbacks, emulator, fast_client_options, 12)

            # Forged: a token of the right shape nobody issued, and an oversized body. Nothing wakes.
            doorbell, url = Doorbell(), callbacks.new_url()
            with callbacks.subscribe(url, doorbell):
                async with httpx.AsyncClient() as http:
                    stranger = f"http://127.0.0.1:{port}/hooks/kling/{token()}"
                    forged = await http.post(stranger, json={"job_id": jobs[0].job_id})
                    assert forged.status_code == 200  # published: the relay cannot tell; no worker issued it
                    # The right token with an oversized body: refused unread, nothing published.
                    big = b"{" + b" " * MAX_BODY + b"}"
                    answer = await http.post(url, content=big, headers={"content-type": "application/json"})
                    assert answer.status_code == 413
                assert await asyncio.to_thread(until, lambda: callbacks.stats()["unknown"] == 1, 10)
                await asyncio.sleep(0.5)
                assert not doorbell.take_hint()
                assert callbacks.stats()["received"] == 12
            assert emulator.stats().queries == 12  # nothing forged caused a query
        finally:
            callbacks.close()


async def test_when_the_relay_dies_waits_poll_and_every_job_ends(
    prefect_server, emulator, fast_client_options, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="kling_prefect.callbacks")
    port = free_port()
    with relay_process(port) as process:
        callbacks = StreamCallbacks(f"http://127.0.0.1:{port}/hooks/kling", stale_after=1.5).start()
        try:
            assert await asyncio.to_thread(wait_until_live, callbacks, 30)
            process.terminate()
            process.wait(timeout=10)
            # Heartbeats stop: within stale_after the waits no longer expect callbacks.
            assert await asyncio.to_thread(until, lambda: not callbacks.trusted, 10)
            # A fallback of 60 s: only the full poll schedule can end these waits within their 20 s timeout.
            jobs = await wait_all(callbacks, emulator, fast_client_options, 8, callback_fallback=60.0)
            assert all(job.state == "succeeded" for job in jobs)
            assert emulator.stats().callbacks_sent == 0
            # It kept subscribing again, and the relay's replayed heartbeats never made it trusted again.
            assert callbacks.stats()["subscriptions"] >= 2 and not callbacks.trusted
            assert "hearing callbacks" not in caplog.text.split("not heard", 1)[-1]
        finally:
            callbacks.close()


WORKER = """
import asyncio, json, sys
from kling_prefect.callback_stream import StreamCallbacks, wait_until_live
from kling_prefect.client import PollPolicy, ShortAPIClient
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.models import KlingO3TextToVideo

async def main(count):
    credentials = ShortAPICredentials.from_env()  # SHORTAPI_CALLBACK_MODE=relay: no listener of its own
    callbacks = credentials.callback_receiver()
    assert isinstance(callbacks, StreamCallbacks), callbacks
    assert await asyncio.to_thread(wait_until_live, callbacks, 30), "the stream never came live"
    poll = PollPolicy.scaled(0.02, callback_fallback=30.0)
    request = KlingO3TextToVideo(prompt="A lantern on a jetty", duration=3, mode="std")
    async with ShortAPIClient(**credentials.client_options(), poll=poll, callbacks=callbacks) as client:
        created = await asyncio.gather(*(client.create_job(request) for _ in range(count)))
        jobs = await asyncio.gather(*(client.wait_for_job(c, timeout=20) for c in created))
    print(json.dumps({"jobs": [job.job_id for job in jobs], "stats": callbacks.stats()}))

asyncio.run(main(int(sys.argv[1])))
"""


async def test_two_worker_processes_share_one_relay(prefect_server, emulator) -> None:
    from prefect.settings import PREFECT_API_URL

    port = free_port()
    with relay_process(port):
        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "SHORTAPI_KEY": "sk-test-0123456789",
            "SHORTAPI_BASE_URL": emulator.base_url,
            "SHORTAPI_CALLBACK_URL": f"http://127.0.0.1:{port}/hooks/kling",
            "SHORTAPI_CALLBACK_MODE": "relay",
        }
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, "8", env=env, stdout=asyncio.subprocess.PIPE
            )
            for _ in range(2)
        ]
        outputs = [await asyncio.wait_for(worker.communicate(), 120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    stats = emulator.stats()
    assert stats.creates == 16 and stats.callbacks_sent == 16
    # Each worker heard every callback on the stream and woke only its own waits: one query a job.
    for report in reports:
        assert len(report["jobs"]) == 8
        assert report["stats"]["confirmed"] == 8 and report["stats"]["missed"] == 0
        assert all(stats.jobs[job_id].queries == 1 for job_id in report["jobs"])
    assert stats.queries == 16
