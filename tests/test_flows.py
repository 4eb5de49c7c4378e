"""The flows on a real Prefect server (one per session) against the emulator over HTTP, storing locally and
to S3 (moto's server on loopback), checked on decoded pixels and on the artifacts Prefect holds."""

from __future__ import annotations

import itertools
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from kling_prefect import BudgetExceeded, JobFailed, RunIncomplete, media
from kling_prefect.flows import batch, continuation, text_to_video

from .helpers import artifacts_of, mean_abs_diff, task_runs_of

pytestmark = pytest.mark.usefixtures("prefect_server", "vendor_env")

FAST = {"poll_interval": 0.05, "timeout_seconds": 120}


def url_lifetime(url: str) -> float:
    """Seconds a presigned URL stays valid (SigV4 ``X-Amz-Expires`` or SigV2 ``Expires`` timestamp)."""
    query = parse_qs(urlsplit(url).query)
    if "X-Amz-Expires" in query:
        return float(query["X-Amz-Expires"][0])
    return float(query["Expires"][0]) - time.time()


def prompts_created(emulator) -> list[str]:
    return [job.args.get("prompt", "") for job in emulator.stats().jobs.values()]


def inject_when_created(emulator, count: int, fault: str, **params: Any) -> threading.Thread:
    """Inject ``fault`` as soon as the emulator has created ``count`` jobs (a failure in a *later* step)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while emulator.stats().creates < count and time.monotonic() < deadline:
            time.sleep(0.005)
        emulator.inject(fault, **params)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


async def test_continuation_joins_clips_with_continuous_seams(emulator, tmp_path) -> None:
    prompts = ["A paper boat on a canal", "It drifts under a bridge", "It reaches the harbour"]
    state = await continuation(
        prompts, duration=3, run_key="seams", output_dir=str(tmp_path), return_state=True, **FAST
    )
    assert state.is_completed() and state.message == "3 of 3 clips stored"  # the run's state says what it made
    result = await state.aresult()

    clips = [Path(c.video.local_path) for c in result.clips]
    assert [c.name for c in clips] == ["clip-01.mp4", "clip-02.mp4", "clip-03.mp4"]
    for previous, following in itertools.pairwise(clips):
        seam = mean_abs_diff(media.read_frame(previous, "last"), media.read_frame(following, "first"))
        within = mean_abs_diff(media.read_frame(previous, "first"), media.read_frame(previous, "last"))
        assert seam < 4, (previous.name, seam)
        assert within > 4 * seam  # the check can fail: clips do move

    final = Path(result.final.local_path)
    assert final == tmp_path / "final.mp4"
    info = media.probe(final)
    assert info.frame_count == sum(media.probe(c).frame_count for c in clips) == (3 + 5 + 5) * 24
    boundary = media.probe(clips[0]).frame_count
    assert mean_abs_diff(media.read_frame(final, boundary - 1), media.read_frame(final, boundary)) < 4

    stats = emulator.stats()
    assert stats.creates == 3
    i2v = [j for j in stats.jobs.values() if j.model.endswith("image-to-video")]
    assert len(i2v) == 2 and all(j.args["images"][0].startswith("data:image/png;base64,") for j in i2v)

    # The run's artifacts: a summary and a table (no link: a local final video does not open from the UI),
    # and one progress artifact per job.
    artifacts = await artifacts_of(state)
    flow_level = {k for k, a in artifacts.items() if a.type != "progress"}
    assert flow_level == {"kling-continuation-summary", "kling-continuation-clips"}
    summary = artifacts["kling-continuation-summary"].data
    assert "3 of 3 clips stored" in summary and "3 created in this run, 0 resumed" in summary
    assert "final video" in summary and "$1.285" in summary  # 3 s O3 pro (0.285) + 2 x 5 s o1 i2v pro (0.5)
    assert "file://" not in summary  # the UI shows no file:// picture or link: paths are text
    # a thumbnail per clip, a filmstrip per clip, a seam strip per join: inline JPEGs
    assert summary.count("](data:image/jpeg;base64,") == 3 + 3 + 2
    table = artifacts["kling-continuation-clips"].data
    assert all(record.job_id in table for record in result.records) and "clip-03" in table
    progress = {k: a for k, a in artifacts.items() if a.type == "progress"}
    # one per job, keyed per flow and step: a daily run adds versions of the same keys
    assert set(progress) == {f"kling-continuation-progress-clip-0{n}" for n in (1, 2, 3)}
    assert all(float(a.data) == 100.0 and "succeeded" in (a.description or "") for a in progress.values())


async def test_continuation_to_s3_through_prefect_aws(emulator, s3_bucket_block, tmp_path) -> None:
    block, endpoint, bucket = s3_bucket_block
    state = await continuation(
        ["A kite over dunes", "The kite dives to the sea"],
        duration=3,
        run_key="s3-run",
        output_dir=str(tmp_path),
        s3_bucket_block=block,
        s3_prefix="kling",
        return_state=True,
        **FAST,
    )
    result = await state.aresult()
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    expected = {
        "clip-01.mp4",
        "clip-01.json",
        "clip-02.mp4",
        "final.mp4",
        "clip-01.thumb.jpg",
        "frames/clip-01.last.png",
    }
    assert {f"kling/s3-run/{k}" for k in expected} <= keys
    assert result.final.uri == f"s3://{bucket}/kling/s3-run/final.mp4"

    # The vendor (emulator) fetched the frame through a presigned URL on the S3 endpoint, and used it.
    i2v = next(j for j in emulator.stats().jobs.values() if j.model.endswith("image-to-video"))
    frame_url = i2v.args["images"][0]
    assert frame_url.startswith(endpoint) and "Signature" in frame_url
    # Frames live an hour (the vendor fetches them at once); links in the run's artifacts live a week.
    assert 3500 <= url_lifetime(frame_url) <= 3600
    assert 7 * 24 * 3600 - 100 <= url_lifetime(result.final.url) <= 7 * 24 * 3600
    s3.download_file(bucket, "kling/s3-run/final.mp4", str(tmp_path / "from-s3.mp4"))
    assert media.probe(tmp_path / "from-s3.mp4").frame_count == (3 + 5) * 24
    first_of_second = media.read_frame(tmp_path / "clip-02.mp4", "first")
    assert mean_abs_diff(media.read_frame(tmp_path / "clip-01.mp4", "last"), first_of_second) < 4

    # In S3 the outputs have links a browser opens: the summary links every clip and the final video, and a link
    # artifact points at the final video. The links work (a plain GET, as a browser sends it).
    artifacts = await artifacts_of(state)
    assert {k for k, a in artifacts.items() if a.type != "progress"} == {
        "kling-continuation-summary",
        "kling-continuation-clips",
        "kling-continuation-final",
    }
    summary = artifacts["kling-continuation-summary"].data
    assert f"- final video: [final.mp4]({result.final.url})" in summary
    for clip in result.clips:
        assert f"[{clip.step}.mp4]({clip.video.url})" in summary
    assert artifacts["kling-continuation-final"].data == f"[final video of s3-run]({result.final.url})"
    assert "file:" not in summary + artifacts["kling-continuation-clips"].data
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(result.final.url)
    assert response.status_code == 200 and response.content == (tmp_path / "from-s3.mp4").read_bytes()


async def test_flow_retry_after_a_later_failure_pays_only_for_the_failed_step(emulator, tmp_path) -> None:
    prompts = ["Step one: a seed", "Step two: a sprout", "Step three: a tree"]
    # The second job (step two) fails at the vendor; Prefect retries the flow run.
    watcher = inject_when_created(emulator, 1, "job_failure", times=1, message="generation failed: moderation")
    state = await continuation.with_options(retries=1, retry_delay_seconds=0)(
        prompts, duration=3, run_key="retry", output_dir=str(tmp_path), return_state=True, **FAST
    )
    watcher.join()
    assert state.is_completed(), state
    created = prompts_created(emulator)
    assert created.count("Step one: a seed") == 1  # resumed, not paid again
    assert created.count("Step two: a sprout") == 2  # the failed job, then one new job on the retry
    assert created.count("Step three: a tree") == 1
    assert media.probe(tmp_path / "final.mp4").frame_count == (3 + 5 + 5) * 24

    # A new flow run with the same run key: everything is already made, nothing is created.
    before = emulator.stats().creates
    rerun = await continuation(
        prompts, duration=3, run_key="retry", output_dir=str(tmp_path), return_state=True, **FAST
    )
    again = await rerun.aresult()
    assert emulator.stats().creates == before
    assert again.records[0].job_id == next(
        j for j, rec in emulator.stats().jobs.items() if rec.args.get("prompt") == "Step one: a seed"
    )
    # Its summary says so: nothing created or paid in this run; what the resumed jobs cost was paid earlier.
    summary = (await artifacts_of(rerun))["kling-continuation-summary"].data
    assert "- jobs: 0 created in this run, 3 resumed from earlier runs\n" in summary
    assert "- paid in this run: vendor-reported $0.00, estimated $0.00 for 0 new jobs\n" in summary
    assert "- paid earlier: vendor-reported $1.285 for 3 resumed jobs (not paid again)\n" in summary
    assert "- video stored: 13 s in 3 clips\n" in summary


async def test_failed_job_fails_the_flow_with_vendor_message_and_job_id(emulator, tmp_path) -> None:
    emulator.inject("job_failure", times=1, message="generation failed: content moderation")
    state = await text_to_video(
        "A forbidden scene", run_key="fails", output_dir=str(tmp_path), return_state=True, **FAST
    )
    assert state.is_failed()
    with pytest.raises(JobFailed, match="content moderation") as caught:
        await state.aresult()
    assert caught.value.job_id in emulator.stats().jobs
    artifacts = await artifacts_of(state)
    summary = artifacts["kling-text-to-video-summary"].data
    assert "0 of 1 clip stored" in summary and "failed at the vendor: generation failed: content moderation" in summary
    assert caught.value.job_id in artifacts["kling-text-to-video-clips"].data
    # the job is over: a full bar that says it failed, not one left at 10% as if still running
    progress = artifacts["kling-text-to-video-progress-clip-01"]
    assert (progress.description or "").startswith("clip-01 FAILED at the vendor: generation failed: content mod")
    assert float(progress.data) == 100


async def test_budget_is_checked_before_anything_is_created(emulator, tmp_path) -> None:
    with pytest.raises(BudgetExceeded, match=r"exceeds max_cost_usd \$1.00 by \$0.475"):
        await continuation(["a", "b", "c"], max_cost_usd=1.0, output_dir=str(tmp_path), **FAST)
    with pytest.raises(BudgetExceeded):
        await batch(prompts=["x"] * 10, max_cost_usd=4.0, output_dir=str(tmp_path), **FAST)
    assert emulator.stats().requests == 0


async def test_batch_keeps_successes_when_some_fail_and_bounds_concurrency(emulator, tmp_path) -> None:
    emulator.inject("job_failure", times=1, message="generation failed: moderation")
    items = [{"prompt": f"scene {i}", "duration": 3, "mode": "std"} for i in range(6)]
    result = await batch(
        prompts=items, max_concurrency=2, run_key="batch", output_dir=str(tmp_path), fail_on_error=False, **FAST
    )
    assert len(result.records) == 6
    assert sum(r.status == "stored" for r in result.records) == 5
    failed = result.failed[0]
    assert "moderation" in (failed.error or "") and failed.job_id in emulator.stats().jobs
    for record in result.records:
        if record.status == "stored":
            assert media.is_decodable_mp4(Path(record.uri.removeprefix("file://")))
    stats = emulator.stats()
    assert stats.creates == 6 and stats.max_in_flight <= 2
    assert sum(r.amount or Decimal(0) for r in result.records) == Decimal("0.213") * 6


async def test_batch_fails_the_run_after_storing_the_others(emulator, tmp_path) -> None:
    emulator.inject("job_failure", times=1)
    state = await batch(
        prompts=["one", "two", "three"], run_key="batch-fail", output_dir=str(tmp_path), return_state=True, **FAST
    )
    assert state.is_failed()
    assert len(list(tmp_path.glob("item-*.mp4"))) == 2
    # The run says what happened in its state message; the result (every record) is on the error.
    assert state.message.startswith("2 of 3 clips stored; item-")
    assert "failed at the vendor" in state.message
    with pytest.raises(RunIncomplete) as caught:
        await state.aresult()
    assert [r.status for r in caught.value.result.records].count("stored") == 2
    artifacts = await artifacts_of(state)
    assert {k for k, a in artifacts.items() if a.type != "progress"} == {"kling-batch-summary", "kling-batch-clips"}
    assert artifacts["kling-batch-summary"].data.startswith("# Kling batch: 2 of 3 clips stored")


async def test_a_batch_file_that_grows_while_it_runs_never_spends_past_what_was_checked(emulator, tmp_path) -> None:
    # The file is read as workers take its items: lines added after the check must not be made (nor paid for).
    file = tmp_path / "prompts.jsonl"
    file.write_text('{"prompt": "one", "duration": 3}\n{"prompt": "two", "duration": 3}\n')

    def grow() -> None:
        deadline = time.monotonic() + 60
        while emulator.stats().creates < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        with file.open("a") as handle:
            handle.write('{"prompt": "three", "duration": 3}\n{"prompt": "four", "duration": 3}\n')

    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    state = await batch(
        file=str(file), max_concurrency=1, run_key="grows", output_dir=str(tmp_path / "out"), return_state=True, **FAST
    )
    grower.join()
    assert state.is_failed()
    assert (
        state.message.startswith("2 of 2 clips stored; stopped: ") and "line 3 is beyond the 2 items" in state.message
    )
    assert prompts_created(emulator) == ["one", "two"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == ["item-0001.mp4", "item-0002.mp4"]
    with pytest.raises(RunIncomplete) as caught:
        await state.aresult()
    assert [r.status for r in caught.value.result.records] == ["stored", "stored"]


async def test_store_task_retries_after_the_clients_own_retries_are_exhausted(emulator, tmp_path) -> None:
    # Seven truncated downloads: the client gives up after its 6 attempts, the store task retries once more.
    emulator.inject("truncate", endpoint="download", times=7)
    state = await text_to_video(
        "A clock tower", duration=3, run_key="store-retry", output_dir=str(tmp_path), return_state=True, **FAST
    )
    assert state.is_completed(), state
    assert emulator.stats().downloads == 8 and emulator.stats().creates == 1
    assert media.probe(tmp_path / "clip-01.mp4").frame_count == 3 * 24
    runs = await task_runs_of(state)
    store = next(r for r in runs if r.name == "store-clip-01")
    assert store.run_count == 2


async def test_user_flow_retry_never_pays_again_for_a_job_in_an_undocumented_status(emulator, tmp_path) -> None:
    """generate_video used directly: a cached job that answered an undocumented status may still succeed, so a
    flow retry must not submit the step again (only a *failed* job is resubmitted)."""
    from prefect import flow

    from kling_prefect import KlingO3TextToVideo
    from kling_prefect.storage import StorageSpec
    from kling_prefect.tasks import generate_video

    @flow(retries=2, retry_delay_seconds=0)
    async def user_flow() -> str:
        clip = await generate_video(
            KlingO3TextToVideo(prompt="Undocumented status", duration=3),
            run_key="unknown-status",
            storage=StorageSpec(directory=str(tmp_path)),
            poll_interval=0.05,
        )
        return clip.video.uri

    # Attempt 1 sees status 9 on its new job; attempt 2 (submission cached) sees it again on the same job;
    # attempt 3 finds the job done.
    emulator.inject("unknown_status", endpoint="query", times=2, status=9)
    state = await user_flow(return_state=True)
    assert state.is_completed(), state
    assert emulator.stats().creates == 1  # every retry resumed the same job
    assert media.probe(tmp_path / "clip.mp4").frame_count == 3 * 24
