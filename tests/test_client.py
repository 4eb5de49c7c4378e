"""ShortAPIClient against the emulator over real HTTP: results, every error kind, retries, deadline, download."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import av
import httpx
import pytest

from kling_prefect import (
    AccountBusy,
    AuthenticationFailed,
    DownloadFailed,
    JobFailed,
    JobMayHaveBeenCreated,
    JobNotFound,
    JobTimedOut,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ShortAPIClient,
    ShortAPICredentials,
    SyncShortAPIClient,
    UnknownJobStatus,
    VendorUnavailable,
    estimate_cost,
)
from kling_prefect.client import RetryPolicy, interpret_response, job_from_data, parse_retry_after
from kling_prefect.client.responses import refused_create
from kling_prefect.emulator import Emulator

from .conftest import TEST_KEY

REQUEST = KlingO3TextToVideo(prompt="A red kite over dunes", duration=3, mode="std")


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_create_wait_download_happy_path(client, emulator, tmp_path) -> None:
    seen: list[str] = []
    created = await client.create_job(REQUEST)
    assert created.model == REQUEST.model_id
    assert created.estimated_cost == estimate_cost(REQUEST) == Decimal("0.213")
    assert created.amount is not None
    job = await client.wait_for_job(created.job_id, timeout=30, on_status_change=lambda j: seen.append(j.state))
    assert job.state == "succeeded" and job.video_url.startswith("http")
    assert seen[-1] == "succeeded" and len(seen) == len(set(seen))
    path = await client.download(job.video_url, tmp_path / "kite.mp4", job_id=job.job_id)
    assert frames_in(path) == 3 * 24
    assert [p.name for p in tmp_path.iterdir()] == ["kite.mp4"]  # no temporary file left behind
    stats = emulator.stats()
    assert stats.creates == 1 and stats.downloads == 1


def test_sync_twin_same_surface(emulator, fast_client_options, tmp_path) -> None:
    with SyncShortAPIClient(base_url=emulator.base_url, **fast_client_options) as client:
        created = client.create_job(KlingO1TextToVideo(prompt="Waves at night", mode="std"))
        job = client.wait_for_job(created.job_id, timeout=30)
        path = client.download(job.video_url, tmp_path / "waves.mp4")
    assert frames_in(path) == 5 * 24
    assert emulator.stats().creates == 1


async def test_async_with_credentials_block_and_env(emulator, monkeypatch) -> None:
    credentials = ShortAPICredentials(api_key=TEST_KEY, base_url=emulator.base_url)
    async with credentials.get_client() as client:
        created = await client.create_job(REQUEST)
    assert created.job_id
    monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
    monkeypatch.setenv("SHORTAPI_BASE_URL", emulator.base_url)
    async with ShortAPIClient() as client:
        assert client.base_url == emulator.base_url
        assert (await client.get_job(created.job_id)).job_id == created.job_id


async def test_auth_failure_is_typed_and_not_retried(fast_client_options) -> None:
    with Emulator(time_scale=0.005, api_key="the-right-key") as strict:
        options = {**fast_client_options, "api_key": "the-wrong-key"}
        async with ShortAPIClient(base_url=strict.base_url, **options) as client:
            with pytest.raises(AuthenticationFailed) as caught:
                await client.create_job(REQUEST)
            with pytest.raises(AuthenticationFailed):
                await client.get_job("anything")
        assert strict.stats().create_requests == 1
        assert strict.stats().creates == 0
    assert caught.value.status_code == 401
    assert "the-wrong-key" not in str(caught.value) and "the-wrong-key" not in repr(caught.value.raw)


async def test_vendor_validation_rejection_is_typed(client, emulator) -> None:
    # Bypass local validation to see what the vendor says (model_construct skips validators).
    bad = KlingO1TextToVideo.model_construct(prompt="x", mode="pro", duration="7")
    with pytest.raises(RequestRejected) as caught:
        await client.create_job(bad)
    assert "duration" in str(caught.value)
    assert isinstance(caught.value.raw, dict) and caught.value.raw.get("code")
    assert emulator.stats().create_requests == 1 and emulator.stats().creates == 0


async def test_create_is_never_retried(client, emulator) -> None:
    emulator.inject("rate_limit", endpoint="create", times=1, retry_after=0)
    with pytest.raises(RateLimited):
        await client.create_job(REQUEST)
    emulator.inject("server_error", endpoint="create", times=1, status=503)
    with pytest.raises(JobMayHaveBeenCreated):
        await client.create_job(REQUEST)
    emulator.inject("error_code", endpoint="create", times=1, code=500, message="internal error")
    with pytest.raises(VendorUnavailable):
        await client.create_job(REQUEST)
    assert emulator.stats().create_requests == 3
    assert emulator.stats().creates == 0


async def test_a_create_over_the_accounts_concurrency_is_account_busy_and_made_nothing(client, emulator) -> None:
    emulator.set_account_concurrency(1)
    first = await client.create_job(REQUEST)
    with pytest.raises(AccountBusy) as caught:
        await client.create_job(REQUEST)  # the first one still runs: the account is full
    busy = caught.value
    assert busy.status_code == 429 and busy.raw == {"code": 1303, "message": "parallel task over resource pack limit"}
    assert "parallel task over resource pack limit" in str(busy) and refused_create(busy)
    stats = emulator.stats()
    assert (stats.create_requests, stats.creates, stats.account_refusals) == (2, 1, 1)
    assert list(stats.jobs) == [first.job_id]


async def test_dropped_create_is_reported_as_maybe_created(client, emulator) -> None:
    emulator.inject("drop_after_create", endpoint="create", times=1)
    with pytest.raises(JobMayHaveBeenCreated) as caught:
        await client.create_job(REQUEST)
    assert "NOT retried" in str(caught.value) and "dashboard" in str(caught.value)
    stats = emulator.stats()
    assert stats.create_requests == 1 and stats.creates == 1  # the vendor did create (and bill) one


async def test_unreachable_vendor_on_create_says_nothing_was_created(fast_client_options) -> None:
    async with ShortAPIClient(base_url="http://127.0.0.1:9", **fast_client_options) as client:
        with pytest.raises(VendorUnavailable, match="no job was created"):
            await client.create_job(REQUEST)


async def test_query_retries_honour_retry_after(client, emulator) -> None:
    created = await client.create_job(REQUEST)
    emulator.inject("rate_limit", endpoint="query", times=2, retry_after=0.25)
    began = time.monotonic()
    job = await client.get_job(created.job_id)
    waited = time.monotonic() - began
    assert job.job_id == created.job_id
    assert emulator.stats().queries == 3
    assert waited >= 0.5  # two Retry-After pauses of 0.25 s were honoured (a lower bound, not a speed claim)


@pytest.mark.parametrize(
    ("fault", "params"),
    [
        ("server_error", {"status": 502}),
        ("server_error", {"status": 503}),
        ("malformed_json", {}),
        ("reset", {}),
        ("error_code", {"code": 500}),
        # longer than the 2 s read timeout, twice: seconds of waiting, outside the fast selection
        pytest.param("slow", {"delay": 3.0}, marks=pytest.mark.slow),
    ],
)
async def test_transient_query_faults_are_retried(client, emulator, fault, params) -> None:
    created = await client.create_job(REQUEST)
    emulator.inject(fault, endpoint="query", times=2, **params)
    job = await client.wait_for_job(created.job_id, timeout=60)
    assert job.state == "succeeded"


async def test_query_retries_are_bounded(client, emulator) -> None:
    created = await client.create_job(REQUEST)
    emulator.inject("server_error", endpoint="query", times=None, probability=1.0, status=502)
    with pytest.raises(VendorUnavailable) as caught:
        await client.get_job(created.job_id)
    assert caught.value.job_id == created.job_id
    assert "<html" in caught.value.raw.lower()
    assert emulator.stats().queries == client.retry.max_attempts


async def test_failed_job_raises_with_vendor_message(client, emulator) -> None:
    emulator.inject("job_failure", times=1, message="video generation failed: content moderation")
    created = await client.create_job(REQUEST)
    with pytest.raises(JobFailed, match="content moderation") as caught:
        await client.wait_for_job(created.job_id, timeout=30)
    assert caught.value.job_id == created.job_id
    assert caught.value.raw["status"] == 3


async def test_unknown_status_is_terminal_and_keeps_payload(client, emulator) -> None:
    created = await client.create_job(REQUEST)
    emulator.inject("unknown_status", endpoint="query", times=1, status=7)
    with pytest.raises(UnknownJobStatus) as caught:
        await client.wait_for_job(created.job_id, timeout=30)
    assert caught.value.job_id == created.job_id
    assert caught.value.status == 7 and caught.value.raw["status"] == 7
    assert emulator.stats().queries == 1  # terminal: no further polling


async def test_deadline_raises_timed_out_and_wait_can_resume(client) -> None:
    created = await client.create_job(KlingO3TextToVideo(prompt="long one", duration=15))
    with pytest.raises(JobTimedOut) as caught:
        await client.wait_for_job(created.job_id, timeout=0.05)
    assert caught.value.job_id == created.job_id
    job = await client.wait_for_job(caught.value.job_id, timeout=60)
    assert job.state == "succeeded"


async def test_unknown_job_is_not_found(client) -> None:
    with pytest.raises(JobNotFound) as caught:
        await client.get_job("no-such-job")
    assert caught.value.job_id == "no-such-job"


async def test_callback_url_is_passed_through(client, emulator) -> None:
    created = await client.create_job(REQUEST, callback_url="http://127.0.0.1:9/hook")
    assert emulator.stats().jobs[created.job_id].callback_url == "http://127.0.0.1:9/hook"


async def test_download_survives_truncation_and_leaves_no_partial_file(client, emulator, tmp_path) -> None:
    created = await client.create_job(REQUEST)
    job = await client.wait_for_job(created.job_id, timeout=30)
    emulator.inject("truncate", endpoint="download", times=1)
    path = await client.download(job.video_url, tmp_path / "out.mp4", job_id=job.job_id)
    assert frames_in(path) == 3 * 24
    assert emulator.stats().downloads == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


async def test_download_cap_and_scheme(client, tmp_path) -> None:
    created = await client.create_job(REQUEST)
    job = await client.wait_for_job(created.job_id, timeout=30)
    with pytest.raises(DownloadFailed, match="cap"):
        await client.download(job.video_url, tmp_path / "big.mp4", max_bytes=1000, job_id=job.job_id)
    for url in ("file:///etc/passwd", "ftp://example.com/x.mp4"):
        with pytest.raises(DownloadFailed, match="refusing"):
            await client.download(url, tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


async def test_expired_result_url(fast_client_options, tmp_path) -> None:
    with Emulator(time_scale=0.005, result_ttl=10) as short_lived:  # URLs live 0.05 s
        async with ShortAPIClient(base_url=short_lived.base_url, **fast_client_options) as client:
            created = await client.create_job(REQUEST)
            job = await client.wait_for_job(created.job_id, timeout=30)
            await asyncio.sleep(0.2)
            with pytest.raises(ResultExpired) as caught:
                await client.download(job.video_url, tmp_path / "late.mp4", job_id=job.job_id)
    assert caught.value.job_id == job.job_id and caught.value.status_code == 403
    assert not (tmp_path / "late.mp4").exists()


async def test_key_never_in_reprs_or_errors(emulator, fast_client_options) -> None:
    canary = "sk-canary-7f3e9b1d"
    async with ShortAPIClient(base_url=emulator.base_url, **{**fast_client_options, "api_key": canary}) as client:
        assert canary not in repr(client)
        with pytest.raises(JobNotFound) as caught:
            await client.get_job("missing")
    credentials = ShortAPICredentials(api_key=canary)
    for text in (repr(credentials), str(credentials), repr(caught.value), str(caught.value), repr(caught.value.raw)):
        assert canary not in text
    assert canary not in repr(SyncShortAPIClient(api_key=canary))


# -- the one place responses become results: pure checks on responses a server rarely produces


def _response(status: int, body: str | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=body.encode() if isinstance(body, str) else body, headers=headers)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, '{"code": 1001, "message": "invalid api key"}', AuthenticationFailed),
        (200, '{"code": 4003, "info": "duration must be 5 or 10"}', RequestRejected),
        (200, '{"code": 1, "msg": "Too many requests"}', RateLimited),
        (200, '{"code": 0}', VendorUnavailable),
        (200, "<html><body>Gateway</body></html>", VendorUnavailable),
        (404, "<html>not here</html>", RequestRejected),
        (401, "", AuthenticationFailed),
        (500, '{"code": 0, "data": {}}', VendorUnavailable),
        (400, '{"code": 0, "data": {}}', RequestRejected),
    ],
)
def test_interpret_response_classifies(status, body, error) -> None:
    with pytest.raises(error):
        interpret_response(_response(status, body), operation="job/query")


BUSY = '{"code": 1303, "message": "parallel task over resource pack limit"}'


@pytest.mark.parametrize(
    ("status", "body", "create", "error"),
    [
        (429, BUSY, True, AccountBusy),  # Kling's answer to a create over the account's concurrency
        (200, BUSY, False, AccountBusy),  # the code says it, whatever the HTTP status or operation
        (400, '{"code": 1, "message": "Too many running tasks, retry later"}', True, AccountBusy),
        (200, '{"code": 9, "msg": "concurrent job limit reached: your token allows 2"}', True, AccountBusy),
        (429, '{"code": 429, "message": "slow down"}', True, AccountBusy),  # a create's 429: its account slot
        (429, '{"code": 429, "message": "slow down"}', False, RateLimited),  # a query holds no slot: a rate
        (429, '{"code": 429, "message": "too many requests"}', True, RateLimited),  # the request rate, said
        (429, '{"code": 1302, "message": "API request too fast"}', True, RateLimited),
        (429, "<html><body>429 Too Many Requests</body></html>", True, RateLimited),  # not the vendor's envelope
    ],
)
def test_limits_are_told_apart_and_only_envelopes_are_refused_creates(status, body, create, error) -> None:
    with pytest.raises(RateLimited) as caught:
        interpret_response(_response(status, body, {"Retry-After": "2"}), operation="job/create", create=create)
    assert type(caught.value) is error
    assert caught.value.retry_after == 2
    assert refused_create(caught.value) is body.startswith("{")  # an HTML 429 page's create is not sent again
    assert not refused_create(VendorUnavailable("job/create: HTTP 502 with an HTML page", status_code=502))


def test_interpret_response_accepts_string_code_and_reads_retry_after() -> None:
    assert interpret_response(_response(200, '{"code": "0", "data": {"job_id": "j"}}'), operation="x") == {
        "job_id": "j"
    }
    with pytest.raises(RateLimited) as caught:
        interpret_response(_response(429, "slow down", {"Retry-After": "7"}), operation="x")
    assert caught.value.retry_after == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_job_states_and_result_shapes() -> None:
    assert job_from_data("j", {"status": 0}).state == "queued"
    assert job_from_data("j", {"status": "1"}).state == "processing"
    done = job_from_data("j", {"status": 2, "result": {"videos": [{"url": "https://x/a.mp4"}]}})
    assert done.video_url == "https://x/a.mp4" and done.is_terminal
    assert job_from_data("j", {"status": 2, "result": {"images": [{"url": "https://x/b"}]}}).video_urls == (
        "https://x/b",
    )
    assert job_from_data("j", {"status": 3, "error": "boom"}).error == "boom"
    assert job_from_data("j", {"status": None}).state == "unknown"
    assert job_from_data("j", {"status": 9}).state == "unknown"


def test_backoff_is_capped_jittered_and_respects_retry_after() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=8, max_retry_after=60)
    delays = [policy.delay(n) for n in range(10) for _ in range(20)]
    assert max(delays) <= 8 and len(set(delays)) > 50
    assert policy.delay(0, retry_after=5) >= 5
    assert policy.delay(0, retry_after=1000) <= 60


async def test_a_created_job_carries_what_its_wait_plans_by(client, emulator) -> None:
    from kling_prefect.waiting import DurationModel, JobKind

    created = await client.create_job(REQUEST)
    assert created.kind == JobKind.of(REQUEST) and created.created_at > 0
    model = DurationModel()
    job = await client.wait_for_job(created, timeout=30, durations=model)
    assert job.state == "succeeded"
    # the created job's kind and creation time were used: its duration was learned under that kind
    assert model.learned(created.kind) is not None and model.known_kinds() == [created.kind]


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("0.475", Decimal("0.475")), (1, Decimal(1)), ("NaN", None), ("-1", None), ("1e999999999", None), (True, None)],
)
def test_vendor_amount_is_parsed_only_when_plausible(amount, expected) -> None:
    from kling_prefect.client import parse_amount

    assert parse_amount(amount) == expected
