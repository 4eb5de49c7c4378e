"""The account's concurrency limit is respected, not fatal (issue 18, part 2).

Kling runs at most N jobs of an account at once and refuses a create over that with HTTP 429, code 1303: a
refusal that made nothing, so the step sends it again after a pause, and the process learns the limit
(:class:`~kling_prefect.concurrency.AccountLimiter`). Against the emulator's account rule over real HTTP; each
test that teaches a limit has an emulator of its own (a limiter is per API root and key, so the session
emulator's account is never taught a limit another test would inherit).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from kling_prefect import AccountBusy, JobMayHaveBeenCreated, KlingO3TextToVideo, SyncShortAPIClient, media
from kling_prefect.concurrency import AccountLimiter, account_limiter, learned_account_limit
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.emulator import Emulator
from kling_prefect.tasks import generate_video

from .conftest import TEST_KEY
from .helpers import mp4s, run_cli

FAST = {"poll_interval": 0.05, "timeout": 60.0}
OCCUPIER = "Occupier"
#: Small pauses between refused creates (the emulator runs jobs ~200x faster than the vendor).
FAST_RETRY_ENV = {
    "SHORTAPI_READ_TIMEOUT": "1.0",
    "SHORTAPI_RETRY_BASE_DELAY": "0.02",
    "SHORTAPI_RETRY_MAX_DELAY": "0.1",
}


async def turns() -> None:
    """Let every ready task of this loop run (no wall clock: a waiter still waiting after this is blocked)."""
    for _ in range(20):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------------------------- the limiter itself


async def test_a_refusal_lowers_the_limit_to_the_jobs_the_account_was_running() -> None:
    limiter = AccountLimiter()
    for _ in range(4):  # nothing refused yet: no limit, four creates go out at once
        await limiter.acquire()
    assert limiter.limit is None and limiter.in_flight == 4
    limiter.accepted()
    limiter.accepted()
    assert limiter.refused() == 2  # the third create came back refused while two jobs ran
    limiter.release()
    limiter.refused()  # so did the fourth
    limiter.release()
    assert (limiter.limit, limiter.in_flight) == (2, 2)
    report = limiter.report()
    assert report is not None and (report.accepted_at_once, report.limit, report.refusals) == (2, 2, 2)
    assert "accepted 2 jobs at once" in report.describe() and "--max-concurrency 2" in report.describe()
    assert "--jobs-limit 2" in report.describe()

    waiting = asyncio.ensure_future(limiter.acquire())
    await turns()
    assert not waiting.done()  # two jobs run: a third create waits
    limiter.release(job=True)  # one ended
    await asyncio.wait_for(waiting, 10)
    assert limiter.in_flight == 2


async def test_answers_that_crossed_the_refusal_raise_the_limit_again() -> None:
    limiter = AccountLimiter()
    for _ in range(3):
        await limiter.acquire()
    assert limiter.refused() == 1  # refused before either accepted answer arrived: nothing known to run
    limiter.release()
    limiter.accepted()  # both were out when the refusal came back: the account took two at once
    limiter.accepted()
    assert limiter.limit == 2
    report = limiter.report()
    assert report is not None and report.accepted_at_once == 2


async def test_the_limit_is_probed_upward_slowly_and_more_slowly_after_a_refused_probe() -> None:
    limiter = AccountLimiter(patience=2)
    await limiter.acquire()
    await limiter.acquire()
    limiter.accepted()
    limiter.refused()  # the account takes one at a time
    limiter.release()
    assert limiter.limit == 1

    async def one_job() -> None:  # a create accepted with the limit full, then its job ends
        await limiter.acquire()
        limiter.accepted()
        limiter.release(job=True)

    limiter.release(job=True)
    await one_job()
    assert limiter.limit == 1
    await one_job()
    assert limiter.limit == 2  # 2 x 1 accepted creates without a refusal: one more is tried
    await limiter.acquire()
    limiter.accepted()
    await limiter.acquire()
    limiter.refused()  # the probe is refused: back to 1, and the next probe waits twice as long
    limiter.release()
    limiter.release(job=True)
    assert limiter.limit == 1
    for _ in range(3):
        await one_job()
    assert limiter.limit == 1
    await one_job()
    assert limiter.limit == 2


async def test_a_create_accepted_with_the_limit_not_full_does_not_probe() -> None:
    limiter = AccountLimiter(patience=1)
    await limiter.acquire()
    await limiter.acquire()
    limiter.accepted()
    limiter.accepted()
    await limiter.acquire()
    limiter.refused()
    limiter.release()
    limiter.release(job=True)
    limiter.release(job=True)
    assert limiter.limit == 2
    for _ in range(5):  # one job at a time: the limit of 2 is never in use, so nothing says 3 would pass
        await limiter.acquire()
        limiter.accepted()
        limiter.release(job=True)
    assert limiter.limit == 2


async def test_slots_are_shared_by_event_loops_in_other_threads_and_cancelled_waits_leak_none() -> None:
    limiter = AccountLimiter()
    await limiter.acquire()
    limiter.accepted()
    await limiter.acquire()
    limiter.refused()
    limiter.release()
    assert limiter.limit == 1
    got = threading.Event()
    thread = threading.Thread(target=lambda: (asyncio.run(limiter.acquire()), got.set()), daemon=True)
    thread.start()  # a sync flow's loop runs in a thread of its own
    cancelled = asyncio.ensure_future(limiter.acquire())
    await turns()
    assert not got.is_set() and not cancelled.done()
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    limiter.release(job=True)  # the job ended: the other thread's waiter gets the slot
    thread.join(10)
    assert got.is_set() and limiter.in_flight == 1  # the cancelled wait holds nothing
    limiter.release()
    await asyncio.wait_for(limiter.acquire(), 10)


def test_the_learned_limit_is_told_once_per_run() -> None:
    limiter = AccountLimiter()
    assert limiter.tell_once("run-1") is None  # nothing refused: nothing to say
    limiter.take()
    limiter.accepted()
    limiter.take()
    limiter.refused()
    assert limiter.tell_once("run-1") is not None
    assert limiter.tell_once("run-1") is None
    assert limiter.tell_once("run-2") is not None
    zero = AccountLimiter()
    zero.take()
    zero.refused()
    report = zero.report()
    assert report is not None and report.accepted_at_once == 0 and zero.limit == 1
    assert "other work on the same key" in report.describe()


def test_each_account_has_its_limiter() -> None:
    a = ShortAPICredentials(api_key="sk-a", base_url="http://127.0.0.1:1")
    b = ShortAPICredentials(api_key="sk-b", base_url="http://127.0.0.1:1")
    assert account_limiter(a) is account_limiter(ShortAPICredentials(api_key="sk-a", base_url="http://127.0.0.1:1/"))
    assert account_limiter(a) is not account_limiter(b)
    assert learned_account_limit(a) is None


def test_a_step_that_gave_up_on_a_busy_account_says_so_on_one_line() -> None:
    from kling_prefect.cli.errors import Context, explain

    busy = AccountBusy("job/create refused: parallel task over resource pack limit (HTTP 429, code 1303)")
    line = explain(busy, Context(run_key="rk-1", api_url="https://api.shortapi.ai", step="clip-02")).line()
    assert line.startswith("clip-02: the ShortAPI account at https://api.shortapi.ai kept refusing the create")
    assert "nothing was created" in line and "--max-concurrency" in line and "--run-key rk-1" in line


# --------------------------------------------------------------------------------------------- in a user's flow


@pytest.fixture
def busy_vendor(prefect_server, monkeypatch) -> Iterator[Emulator]:
    """An emulator of this test's own whose account runs one job at once, in the environment flows read. Jobs
    take 0.3 s; an occupier's (see :func:`occupy_now`) 2 s."""

    def job_time(model: str, args: Any) -> float:
        return 400.0 if str(args.get("prompt", "")).startswith(OCCUPIER) else 60.0

    with Emulator(time_scale=0.005, seed=5, job_time=job_time, account_concurrency=1) as emu:
        monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
        monkeypatch.setenv("SHORTAPI_BASE_URL", emu.base_url)
        for name, value in FAST_RETRY_ENV.items():
            monkeypatch.setenv(name, value)
        yield emu
        account_limiter(ShortAPICredentials.from_env()).reset()


def clip_request(n: int) -> KlingO3TextToVideo:
    return KlingO3TextToVideo(prompt=f"A lantern on a quiet lake, take {n}", duration=3, mode="std")


@flow
async def four_at_once(run_key: str) -> list[str]:
    """What a user writes: four clips at once with the one clip path."""
    clips = await asyncio.gather(
        *(generate_video(clip_request(n), run_key=run_key, step=f"shot-{n}", **FAST) for n in range(4))
    )
    return [str(clip.local_path) for clip in clips]


async def flow_run_logs(flow_run_id: object) -> list[str]:
    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return [log.message for log in logs]


async def test_four_clips_at_once_on_an_account_of_one_are_all_made_paying_four(
    busy_vendor, tmp_path, monkeypatch
) -> None:
    emu = busy_vendor
    monkeypatch.chdir(tmp_path)
    state = await four_at_once("rk-account-of-one", return_state=True)
    paths = [Path(p) for p in await state.aresult()]
    stats = emu.stats()
    assert all(media.is_decodable_mp4(p) for p in paths) and len(set(paths)) == 4
    assert stats.creates == 4 and len(stats.jobs) == 4  # each clip paid once
    assert stats.account_refusals > 0 and stats.create_requests == 4 + stats.account_refusals
    assert stats.max_in_flight == 1
    report = account_limiter(ShortAPICredentials.from_env()).report()
    assert report is not None and report.accepted_at_once == 1 and report.refusals == stats.account_refusals
    assert learned_account_limit() in (1, 2)  # what it accepted, or one probe above it not refused yet

    told = [m for m in await flow_run_logs(state.state_details.flow_run_id) if "at once on this account" in m]
    print(f"creates {stats.creates}, refused {stats.account_refusals}, told: {told}")  # shown by `pytest -rP`
    assert len(told) == 1, told  # once per run, in the run's own log
    assert told[0].startswith("ShortAPI accepted 1 job at once on this account and refused more")
    assert "--max-concurrency 1" in told[0] and "kling-prefect setup --jobs-limit 1" in told[0]


OCCUPIER_REQUEST = KlingO3TextToVideo(prompt=f"{OCCUPIER}: another worker's job", duration=3, mode="std")


def occupy_now() -> str:
    """Another job on the account (another worker's), made just now: the account's one slot is taken for 2 s."""
    with SyncShortAPIClient(TEST_KEY, os.environ["SHORTAPI_BASE_URL"]) as client:
        while True:
            try:
                return client.create_job(OCCUPIER_REQUEST).job_id
            except AccountBusy:  # an earlier occupier still runs
                time.sleep(0.05)


@flow
def one_clip_sync(run_key: str, busy_timeout: float | None = None) -> str:
    """A sync flow (the clip path runs on Prefect's own loop thread) on an account another job has just filled."""
    occupy_now()
    options = {} if busy_timeout is None else {"busy_timeout": busy_timeout}
    return str(generate_video(clip_request(9), run_key=run_key, **FAST, **options).local_path)


def test_a_sync_flow_waits_for_a_full_account_and_a_step_past_busy_timeout_can_be_sent_again(
    busy_vendor, tmp_path, monkeypatch
) -> None:
    emu = busy_vendor
    monkeypatch.chdir(tmp_path)
    path = Path(one_clip_sync("rk-sync-busy"))  # refused while the other job runs, then sent again
    stats = emu.stats()
    assert media.is_decodable_mp4(path) and stats.creates == 2 and stats.account_refusals >= 1

    # busy_timeout=0: the first refusal fails the step, and the ledger says it made nothing ...
    failed = one_clip_sync("rk-sync-gave-up", busy_timeout=0.0, return_state=True)
    with pytest.raises(AccountBusy, match="busy_timeout"):
        failed.result()
    before = emu.stats()
    assert before.creates == 3
    # ... so a re-run with the same run key sends it (no JobMayHaveBeenCreated), once the account has room.
    again = Path(one_clip_sync("rk-sync-gave-up"))
    after = emu.stats()
    assert media.is_decodable_mp4(again) and after.creates == 5  # 3 occupiers, 2 clips
    assert after.create_requests - after.account_refusals == 5  # every accepted create is a clip or an occupier


async def test_clips_under_a_jobs_limit_never_wait_on_each_other_for_the_account(
    busy_vendor, tmp_path, monkeypatch
) -> None:
    """A jobs limit of 1 and a full account: the clip holding the jobs slot is refused and pauses; the other
    waits for the jobs slot holding nothing of the account's, so the first one gets its account slot back."""
    from kling_prefect.concurrency import setup_limits

    emu = busy_vendor
    monkeypatch.chdir(tmp_path)
    await setup_limits("kling-account-test-jobs", 1)

    @flow
    async def two(run_key: str) -> list[str]:
        await asyncio.to_thread(occupy_now)
        clips = await asyncio.gather(
            *(
                generate_video(clip_request(n), run_key=run_key, step=f"shot-{n}", jobs_limit="kling-account-test-jobs",
                               **FAST)
                for n in (1, 2)
            )
        )  # fmt: skip
        return [str(clip.local_path) for clip in clips]

    paths = await asyncio.wait_for(two("rk-jobs-limit-busy"), 120)  # a deadlock would never end
    stats = emu.stats()
    assert len(paths) == 2 and all(media.is_decodable_mp4(Path(p)) for p in paths)
    assert stats.creates == 3 and stats.account_refusals >= 1


@pytest.mark.parametrize(("fault", "params"), [("server_error", {"status": 503}), ("slow", {"delay": 1.6})])
async def test_a_create_of_unknown_outcome_is_still_never_sent_again(
    busy_vendor, tmp_path, monkeypatch, fault, params
) -> None:
    """A 5xx page or a timeout is not a refusal: the create may have been accepted, even on a busy account."""
    emu = busy_vendor
    monkeypatch.chdir(tmp_path)
    emu.inject(fault, endpoint="create", times=1, **params)

    @flow
    async def one(run_key: str) -> str:
        return str((await generate_video(clip_request(5), run_key=run_key, **FAST)).local_path)

    state = await one(f"rk-unknown-{fault}", return_state=True)
    with pytest.raises(JobMayHaveBeenCreated):
        await state.aresult()
    again = await one(f"rk-unknown-{fault}", return_state=True)
    with pytest.raises(JobMayHaveBeenCreated, match="not submitted again"):
        await again.aresult()
    assert emu.stats().create_requests == 1


# --------------------------------------------------------------------------------------------- the CLI


def test_a_batch_wider_than_the_account_stores_every_clip_paying_each_once(prefect_server, tmp_path) -> None:
    """The issue's case: 6 prompts, --max-concurrency 4, an account that runs 2 at once."""
    from prefect.settings import PREFECT_API_URL

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"A wide batch, scene {i}", "duration": 3}) + "\n" for i in range(6))
    )
    with Emulator(time_scale=0.005, seed=3, timing_jitter=0.1, account_concurrency=2) as emu:
        env = {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "SHORTAPI_KEY": TEST_KEY,
            "SHORTAPI_BASE_URL": emu.base_url,
            **FAST_RETRY_ENV,
        }
        out = tmp_path / "out"
        done = run_cli(
            "batch", str(prompts), "--max-concurrency", "4", "--out", str(out), "--poll-interval", "0.05", "--json",
            env=env,
        )  # fmt: skip
        stats = emu.stats()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [c["status"] for c in result["clips"]] == ["stored"] * 6
    assert len(mp4s(out)) == 6
    assert stats.creates == 6 and len(stats.jobs) == 6  # exactly one create billed per prompt
    assert stats.account_refusals > 0 and stats.max_in_flight <= 2
    (limits,) = result["account_limits"]
    assert limits["accepted_at_once"] == 2 and limits["refusals"] == stats.account_refusals
    lines = done.stderr.splitlines()
    print(f"creates {stats.creates}, refused {stats.account_refusals}, stderr ends: {lines[-2:]}")  # `pytest -rP`
    told = [line for line in lines if line.startswith("ShortAPI accepted 2 jobs at once on this account")]
    assert len(told) == 1, done.stderr[-3000:]
    assert "--max-concurrency 2" in told[0] and "--jobs-limit kling-jobs-in-flight" in told[0]
    assert lines[-1].startswith("6 stored, 0 failed") and lines[-2] == told[0]  # just before the summary line
    # The run's summary artifact in the UI says it too.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from kling_prefect.artifacts import escape

    async def summary() -> str:  # this run's (every batch run writes a summary under the same key)
        async with get_client() as client:
            artifacts = ArtifactFilter(
                key=ArtifactFilterKey(any_=[result["summary_artifact"]]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]]),
            )
            (found,) = await client.read_artifacts(artifact_filter=artifacts)
            return str(found.data)

    assert f"- account limit: {escape(told[0])}" in asyncio.run(summary())
