"""Callbacks over real sockets: the receiver's HTTP listener, the emulator POSTing to it, waits woken by it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import pytest

from kling_prefect.callbacks import CallbackReceiver, callback_receiver, check_public_url, parse_listen
from kling_prefect.client import PollPolicy, ShortAPIClient, SyncShortAPIClient
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import JobFailed
from kling_prefect.models import KlingO3TextToVideo
from kling_prefect.waiting import Doorbell, DurationModel, JobKind

REQUEST = KlingO3TextToVideo(prompt="A paper boat on a puddle", duration=3, mode="std")
KIND = JobKind.of(REQUEST)


@pytest.fixture
def receiver():
    started = CallbackReceiver("http://127.0.0.1:{port}/hooks/kling").start()
    yield started
    started.close()


def options(base: dict, **policy: float) -> dict:
    # Scaled like the emulator (jobs of ~0.2-0.5 s): the fallback query comes 30x min_interval apart.
    return {**base, "poll": PollPolicy.scaled(0.02, **policy)}


async def wait(client: ShortAPIClient, created, durations: DurationModel, timeout: float = 60.0):
    return await client.wait_for_job(
        created.job_id,
        timeout=timeout,
        started_at=created.created_at,
        kind=KIND,
        durations=durations,
        callback_url=created.callback_url,
    )


async def settled(emulator, condition, within: float = 10.0):
    """The emulator's stats once ``condition`` holds (or after ``within`` seconds)."""
    deadline = time.monotonic() + within
    stats = emulator.stats()
    while not condition(stats) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        stats = emulator.stats()
    return stats


# --------------------------------------------------------------------------------------------- the listener


def test_a_callback_rings_the_doorbell_of_its_job_only(receiver) -> None:
    first, second = receiver.new_url(), receiver.new_url()
    assert first.startswith("http://127.0.0.1:") and "/hooks/kling/" in first and first != second
    ours, other = Doorbell(), Doorbell()
    with receiver.subscribe(first, ours) as owned, receiver.subscribe(second, other):
        assert owned
        answer = httpx.post(first, json={"job_id": "whatever", "status": 2})
        assert answer.status_code == 200 and answer.json() == {"code": 0}
        assert ours.take_hint() and not other.take_hint()
    # The payload is not trusted or needed: any method, any body, a query string the vendor may add.
    assert httpx.get(second + "?attempt=2").status_code == 200
    assert receiver.stats()["received"] == 2


def test_unknown_tokens_and_foreign_urls_ring_nothing(receiver) -> None:
    answer = httpx.post(f"{receiver.public_url}/not-a-token", content=b"{}")
    assert answer.status_code == 404
    assert receiver.stats()["unknown"] == 1 and receiver.stats()["received"] == 0
    with receiver.subscribe("http://elsewhere.example/hook/abc", Doorbell()) as owned:
        assert not owned
    assert receiver.token_of(receiver.public_url + "/a/b") is None


def test_a_hint_that_came_before_the_wait_subscribed_is_not_lost(receiver) -> None:
    url = receiver.new_url()
    assert httpx.post(url, json={}).status_code == 200
    doorbell = Doorbell()
    with receiver.subscribe(url, doorbell):
        assert doorbell.take_hint()


def test_an_oversized_body_is_answered_without_being_read(receiver) -> None:
    url = receiver.new_url()
    doorbell = Doorbell()
    path = url.split(str(receiver.port), 1)[1]
    with receiver.subscribe(url, doorbell), socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{{}}".encode())
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        assert doorbell.take_hint()


def test_an_ipv6_listener_works() -> None:
    try:
        receiver = CallbackReceiver("http://[::1]:{port}/v6", "[::1]:0").start()
    except OSError as exc:  # no IPv6 on this machine
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        url, doorbell = receiver.new_url(), Doorbell()
        with receiver.subscribe(url, doorbell):
            assert httpx.post(url).status_code == 200
            assert doorbell.take_hint()
    finally:
        receiver.close()


def test_a_receiver_that_cannot_work_is_off_with_a_warning(caplog) -> None:
    with socket.socket() as closed:  # a port nobody listens on: the self-test POST cannot arrive
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    with pytest.raises(RuntimeError, match="not reachable"):
        CallbackReceiver(f"http://127.0.0.1:{dead_port}/x").start()
    with caplog.at_level(logging.WARNING, logger="kling_prefect.callbacks"):
        assert callback_receiver(f"http://127.0.0.1:{dead_port}/cb") is None
    assert "callbacks are off" in caplog.text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert callback_receiver("http://127.0.0.1:{port}/busy", f"127.0.0.1:{port}") is None


def test_settings_are_checked_without_echoing_urls() -> None:
    assert parse_listen("0.0.0.0:8787") == ("0.0.0.0", 8787)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8787", "host:port", "h:70000"):
        with pytest.raises(ValueError, match="callback_listen"):
            parse_listen(bad)
    for bad in ("ftp://user:pw@host/x", "https://user:pw@host/x?q=1", "nohost"):
        with pytest.raises(ValueError, match="callback_url") as caught:
            check_public_url(bad)
        assert "pw" not in str(caught.value)
    env = {"SHORTAPI_KEY": "sk-x", "SHORTAPI_CALLBACK_URL": "https://hooks.example.com/kling/"}
    credentials = ShortAPICredentials.from_env({**env, "SHORTAPI_CALLBACK_LISTEN": "0.0.0.0:8787"})
    assert credentials.callback_url == "https://hooks.example.com/kling"
    assert credentials.callback_listen == "0.0.0.0:8787"
    with pytest.raises(ValueError, match="SHORTAPI_CALLBACK_LISTEN"):
        ShortAPICredentials.from_env({**env, "SHORTAPI_CALLBACK_LISTEN": "everywhere"})
    with pytest.raises(ValueError, match="SHORTAPI_CALLBACK_URL"):
        ShortAPICredentials.from_env({"SHORTAPI_KEY": "sk-x", "SHORTAPI_CALLBACK_URL": "hooks"})
    assert ShortAPICredentials(api_key="sk-x").callback_receiver() is None


# --------------------------------------------------------------------------------------------- waits


async def test_callbacks_replace_polling_each_job_queried_once(emulator, fast_client_options, receiver) -> None:
    # A 30 s fallback: any job whose callback did not wake its wait would time out, not pass slowly.
    settings = options(fast_client_options, callback_fallback=30.0)
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        durations = DurationModel()
        created = await asyncio.gather(*(client.create_job(REQUEST) for _ in range(12)))
        jobs = await asyncio.gather(*(wait(client, c, durations, timeout=20) for c in created))
    assert all(job.state == "succeeded" for job in jobs)
    # The emulator counts a callback once our answer reached it, which may be just after the waits ended.
    stats = await settled(emulator, lambda s: s.callbacks_sent == 12)
    assert stats.callbacks_sent == 12 and stats.callbacks_failed == 0
    assert [stats.jobs[c.job_id].callback_url for c in created] == [c.callback_url for c in created]
    # The callback says "query now"; the query says "done": one query per job.
    assert stats.queries == 12 and all(stats.jobs[c.job_id].queries == 1 for c in created)
    counts = receiver.stats()
    assert counts["confirmed"] == 12 and counts["missed"] == 0 and counts["trusted"]
    assert counts["outstanding"] == 0  # tokens are forgotten when their jobs end
    assert durations.estimate(KIND) is not None  # callbacks still teach the duration model


async def test_polling_alone_costs_more_queries_on_the_same_jobs(emulator, fast_client_options, receiver) -> None:
    # Polling that may not sleep past 0.04 s must look several times at each 0.2-0.5 s job; a callback once.
    settings = options(fast_client_options, max_skip=0.04)
    counts = {}
    for name, callbacks in (("polling", None), ("callbacks", receiver)):
        emulator.reset_stats()
        async with ShortAPIClient(base_url=emulator.base_url, callbacks=callbacks, **settings) as client:
            durations = DurationModel()
            created = await asyncio.gather(*(client.create_job(REQUEST) for _ in range(10)))
            await asyncio.gather(*(wait(client, c, durations) for c in created))
        counts[name] = emulator.stats().queries
    assert counts["callbacks"] < counts["polling"]


async def test_lost_callbacks_are_caught_by_fallback_queries_then_trust_ends(
    emulator, fast_client_options, receiver, caplog
) -> None:
    emulator.inject("lost_callback", endpoint="callback", times=None)
    settings = options(fast_client_options, callback_fallback=0.3)
    with caplog.at_level(logging.WARNING, logger="kling_prefect.callbacks"):
        async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
            durations = DurationModel()
            created = await asyncio.gather(*(client.create_job(REQUEST) for _ in range(8)))
            jobs = await asyncio.gather(*(wait(client, c, durations) for c in created))
    assert all(job.state == "succeeded" for job in jobs)
    stats = emulator.stats()
    assert stats.callbacks_sent == 0 and stats.callbacks_lost == 8
    counts = receiver.stats()
    assert counts["missed"] == 8 and not counts["trusted"]
    assert "back to polling" in caplog.text


async def test_a_failed_job_counts_its_callback_and_forgets_its_token(emulator, fast_client_options, receiver) -> None:
    emulator.inject("job_failure", times=1, message="generation failed: moderation")
    settings = options(fast_client_options, callback_fallback=30.0)
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        created = await client.create_job(REQUEST)
        with pytest.raises(JobFailed, match="moderation") as caught:
            await wait(client, created, DurationModel(), timeout=20)
    assert caught.value.job_id == created.job_id
    assert emulator.stats().jobs[created.job_id].queries == 1
    counts = receiver.stats()
    assert counts["confirmed"] == 1 and counts["outstanding"] == 0


async def test_a_wait_started_after_the_callback_queries_at_once(emulator, fast_client_options, receiver) -> None:
    settings = options(fast_client_options, callback_fallback=30.0)
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        created = await client.create_job(REQUEST)
        await settled(emulator, lambda s: s.callbacks_sent == 1, within=20)
        durations = DurationModel()
        job = await wait(client, created, durations, timeout=10)
    assert job.state == "succeeded"
    assert emulator.stats().jobs[created.job_id].queries == 1
    # Had the wait missed the earlier callback, its one query would have come at the 10 s deadline, and a
    # completion known only to lie between 0 and 10 s teaches the model nothing (too wide to keep).
    assert durations.estimate(KIND) is not None


async def test_while_callbacks_are_trusted_a_wait_does_not_poll_on_its_own(
    emulator, fast_client_options, receiver
) -> None:
    # The callback is lost and the fallback is 30 s away: the only query is the one at the wait's deadline
    # (polling on the cold schedule would have queried at 0.02, 0.04, 0.08 ... s).
    emulator.inject("lost_callback", endpoint="callback", times=1)
    settings = options(fast_client_options, callback_fallback=30.0)
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        created = await client.create_job(REQUEST)
        job = await wait(client, created, DurationModel(), timeout=1.5)
    assert job.state == "succeeded"
    assert emulator.stats().jobs[created.job_id].queries == 1
    assert receiver.stats()["missed"] == 1


async def test_a_callback_whose_query_failed_is_still_acted_on(emulator, fast_client_options, receiver) -> None:
    # Right after the callback the vendor's query fails 12 times: the client's whole retry budget (6) twice.
    settings = options(fast_client_options, callback_fallback=30.0)
    async with ShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        created = await client.create_job(REQUEST)
        await settled(emulator, lambda s: s.callbacks_sent == 1, within=20)
        emulator.inject("server_error", endpoint="query", times=12)
        # Were the callback forgotten after its failed query, the next query would be the fallback's (30 s
        # away) or the deadline's, which would meet the remaining failures and raise JobTimedOut.
        job = await wait(client, created, DurationModel(), timeout=10)
    assert job.state == "succeeded"
    stats = emulator.stats()
    assert stats.queries == 13 and stats.jobs[created.job_id].queries == 1  # 12 failed, then the owed query


def test_the_sync_client_uses_callbacks_too(emulator, fast_client_options, receiver) -> None:
    settings = options(fast_client_options, callback_fallback=30.0)
    with SyncShortAPIClient(base_url=emulator.base_url, callbacks=receiver, **settings) as client:
        created = client.create_job(REQUEST)
        assert created.callback_url and receiver.token_of(created.callback_url)
        job = client.wait_for_job(
            created.job_id, timeout=20, started_at=created.created_at, kind=KIND, callback_url=created.callback_url
        )
    assert job.state == "succeeded"
    assert emulator.stats().jobs[created.job_id].queries == 1


# --------------------------------------------------------------------------------------------- flows


@pytest.mark.usefixtures("prefect_server")
async def test_the_batch_flow_uses_callbacks_from_the_environment(vendor_env, monkeypatch, tmp_path) -> None:
    from kling_prefect.flows import batch

    monkeypatch.setenv("SHORTAPI_CALLBACK_URL", "http://127.0.0.1:{port}/flow-hooks")
    items = [{"prompt": f"harbour at dusk {i}", "duration": 3, "mode": "std"} for i in range(5)]
    result = await batch(
        prompts=items, run_key="callbacks-batch", output_dir=str(tmp_path), poll_interval=0.05, timeout_seconds=60
    )
    assert [r.status for r in result.records] == ["stored"] * 5
    receiver = callback_receiver("http://127.0.0.1:{port}/flow-hooks")
    assert receiver is not None and receiver.trusted
    stats = await settled(vendor_env, lambda s: s.callbacks_sent == 5)
    assert stats.callbacks_sent == 5
    for job in stats.jobs.values():
        assert receiver.token_of(job.callback_url)  # every create carried one of the receiver's URLs
        # The callback's query, plus at most one fallback query (every 1.5 s here) that raced it.
        assert job.queries <= 2
