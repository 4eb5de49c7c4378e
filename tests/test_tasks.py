"""The reusable tasks keep every promise in a user's own flow (no bundled flow involved): one create per step
across failures and re-runs, clips of different run keys never collide, nothing stored is ever replaced."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from prefect import flow

from kling_prefect import JobMayHaveBeenCreated, KlingO3TextToVideo, StorageSpec, media
from kling_prefect.tasks import generate_video, kling_o3_text_to_video

from .helpers import captured_lines, creates_by_prompt

pytestmark = [pytest.mark.usefixtures("prefect_server", "vendor_env"), pytest.mark.slow]

REQUEST = KlingO3TextToVideo(prompt="A lantern on a quiet lake", duration=3, mode="std")
FAST = {"poll_interval": 0.05, "timeout": 60.0}


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    for name, value in {"SHORTAPI_READ_TIMEOUT": "1.0", "SHORTAPI_RETRY_BASE_DELAY": "0.02"}.items():
        monkeypatch.setenv(name, value)


@flow
async def my_clip(run_key: str, resubmit_uncertain: bool = False) -> str:
    """What a user writes: one call of the one clip path."""
    clip = await generate_video(REQUEST, run_key=run_key, resubmit_uncertain=resubmit_uncertain, **FAST)
    return str(clip.local_path)


@flow
async def my_helper_clip(run_key: str, resubmit_uncertain: bool = False) -> str:
    """The same through the typed per-model helper."""
    clip = await kling_o3_text_to_video(
        prompt="A kite at dawn", duration=3, mode="std", run_key=run_key, resubmit_uncertain=resubmit_uncertain, **FAST
    )
    return str(clip.local_path)


@pytest.mark.parametrize("user_flow", [my_clip, my_helper_clip], ids=["generate_video", "helper"])
async def test_an_ambiguous_create_is_paid_once_until_the_user_says_otherwise(
    vendor_env, fast_retries, tmp_path, monkeypatch, user_flow
) -> None:
    emu = vendor_env
    monkeypatch.chdir(tmp_path)
    emu.inject("drop_after_create", times=1)  # the vendor creates (and bills) the job; its answer is lost
    first = await user_flow("rk-ambiguous", return_state=True)
    assert first.is_failed()
    with pytest.raises(JobMayHaveBeenCreated, match="may have been accepted"):
        await first.aresult()
    assert emu.stats().create_requests == 1
    for _ in range(2):  # re-runs with the same run key send nothing, and say why
        again = await user_flow("rk-ambiguous", return_state=True)
        with pytest.raises(JobMayHaveBeenCreated, match=r"not submitted again.*resubmit_uncertain=True"):
            await again.aresult()
    assert emu.stats().create_requests == 1
    path = Path(await user_flow("rk-ambiguous", resubmit_uncertain=True))  # the user checked the dashboard
    assert emu.stats().create_requests == 2 and media.is_decodable_mp4(path)
    assert path == tmp_path / "kling-output" / "rk-ambiguous" / "clip.mp4"


async def test_two_run_keys_keep_both_clips_and_a_rerun_creates_and_rewrites_nothing(
    vendor_env, tmp_path, monkeypatch
) -> None:
    emu = vendor_env
    monkeypatch.chdir(tmp_path)
    a = Path(await my_clip("rk-A"))
    b = Path(await my_clip("rk-B"))
    assert a == tmp_path / "kling-output" / "rk-A" / "clip.mp4" and b == tmp_path / "kling-output" / "rk-B" / "clip.mp4"
    records = [json.loads((p.parent / "clip.json").read_text()) for p in (a, b)]
    assert records[0]["job_id"] != records[1]["job_id"]  # two jobs, two clips, both kept
    assert media.is_decodable_mp4(a) and media.is_decodable_mp4(b)
    assert (a.parent / "clip.thumb.jpg").is_file()
    files = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in (tmp_path / "kling-output").rglob("*") if p.is_file()}

    before = emu.stats()
    assert Path(await my_clip("rk-A")) == a  # a re-run with the same key
    after_stats = emu.stats()
    # nothing created or downloaded (the wait asks the vendor once: the job it remembers is done)
    assert (after_stats.create_requests, after_stats.downloads) == (before.create_requests, before.downloads)
    assert after_stats.queries - before.queries == 1
    after = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in (tmp_path / "kling-output").rglob("*") if p.is_file()}
    assert after == files  # and nothing rewritten
    assert creates_by_prompt(emu)[REQUEST.prompt] == 2


async def test_another_jobs_file_at_the_clips_place_is_never_replaced(vendor_env, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "kling-output" / "rk-C"
    folder.mkdir(parents=True)
    (folder / "clip.mp4").write_bytes(b"a clip this run did not make")
    stored = Path(await my_clip("rk-C"))
    assert (folder / "clip.mp4").read_bytes() == b"a clip this run did not make"
    assert stored.parent == folder and stored.name.startswith("clip.") and stored.name != "clip.mp4"
    assert sorted(p.name for p in folder.glob("*.mp4")) == sorted(["clip.mp4", stored.name])
    assert media.is_decodable_mp4(stored)


async def test_attempts_storing_at_one_place_at_once_write_each_file_once(
    vendor_env, s3_bucket_block, tmp_path, monkeypatch
) -> None:
    """Flow runs on several workers that resumed one job store it at the same moment, and another job may want
    the same key: they take turns under a lease on the key, so the job's clip is downloaded and written once (one
    version in a versioned bucket) and the other job's clip goes beside it, not over it."""
    import boto3

    from kling_prefect.tasks import store_kling_video, submit_kling_job, wait_for_kling_job

    emu = vendor_env
    block, endpoint, bucket = s3_bucket_block
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.chdir(tmp_path)
    requests = [REQUEST, KlingO3TextToVideo(prompt="A heron on one leg", duration=3, mode="std")]

    @flow
    async def store_at_once(run_key: str) -> tuple[list[str], list[str]]:
        jobs = [await submit_kling_job(r, run_key=run_key, step=f"clip-{i}") for i, r in enumerate(requests, 1)]
        finished = [await wait_for_kling_job(job, poll_interval=0.05, timeout=60.0) for job in jobs]
        store = store_kling_video.with_options(refresh_cache=True)  # as if no attempt saw another's result
        stored = await asyncio.gather(
            *(
                store(
                    finished[i],
                    storage=StorageSpec(directory=str(tmp_path / f"w{n}"), s3_bucket_block=block),
                    key="a.mp4",
                )
                for n, i in enumerate([0, 0, 1])  # one job twice (two workers' own folders), another job once
            )
        )
        return [s.video.key for s in stored], [job.job_id for job in jobs]

    downloads = emu.stats().downloads
    keys, job_ids = await store_at_once("rk-at-once")
    prefix = "kling/rk-at-once/"
    # One job's clip at the key, the other's beside it under its job id; the job stored twice is at one key.
    first = 0 if keys[0] == f"{prefix}a.mp4" else 1
    other = 1 - first
    assert keys[0] == keys[1] and {keys[0], keys[2]} == {f"{prefix}a.mp4", f"{prefix}a.{job_ids[other]}.mp4"}, keys
    assert emu.stats().downloads == downloads + 2  # each job's clip downloaded once
    listing = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    versions = Counter(v["Key"] for v in listing.get("Versions", []))
    assert versions[f"{prefix}a.mp4"] == 1 and set(versions.values()) == {1}, versions  # nothing written twice
    for key, job_id in ((keys[0], job_ids[0]), (keys[2], job_ids[1])):
        record = json.loads(s3.get_object(Bucket=bucket, Key=key.removesuffix(".mp4") + ".json")["Body"].read())
        assert record["job_id"] == job_id


async def test_a_store_without_its_cached_result_finds_the_clip_and_rewrites_nothing(
    vendor_env, tmp_path, monkeypatch
) -> None:
    from kling_prefect.records import FinishedJob
    from kling_prefect.tasks import store_kling_video

    emu = vendor_env
    monkeypatch.chdir(tmp_path)

    @flow
    async def store_twice(run_key: str) -> tuple[str, str]:
        clip = await generate_video(REQUEST, run_key=run_key, **FAST)
        finished = FinishedJob(submitted=clip.submitted, video_urls=("http://127.0.0.1:9/gone.mp4",), finished_at=0)
        # a different destination key would be a new store; the same one, uncached, must not download again
        again = await store_kling_video.with_options(refresh_cache=True)(finished, storage=StorageSpec())
        return str(clip.local_path), str(again.local_path)

    downloads = emu.stats().downloads
    first, second = await store_twice("rk-D")
    assert first == second and emu.stats().downloads == downloads + 1  # the second store fetched nothing


async def test_a_submission_whose_cached_result_was_never_saved_resumes_its_job(
    vendor_env, tmp_path, monkeypatch
) -> None:
    """The job id is in the step's ledger the moment the vendor answers: an attempt that finds no cached
    submission (the process killed just after the answer, a result-storage failure) resumes it, pays nothing."""
    from kling_prefect.tasks import submit_kling_job

    emu = vendor_env
    monkeypatch.chdir(tmp_path)

    @flow
    async def submit_without_cache(run_key: str) -> tuple[str, str, bool, bool]:
        uncached = submit_kling_job.with_options(refresh_cache=True)  # as if no cached result had been saved
        first = await uncached(REQUEST, run_key=run_key, step="clip")
        second = await uncached(REQUEST, run_key=run_key, step="clip")
        clip = await generate_video(REQUEST, run_key=run_key, **FAST)
        return first.job_id, second.job_id, second.remembered, clip.resumed

    before = emu.stats().create_requests
    first, second, remembered, resumed = await submit_without_cache("rk-E")
    assert first == second and remembered and resumed
    assert emu.stats().create_requests == before + 1
    assert media.is_decodable_mp4(tmp_path / "kling-output" / "rk-E" / "clip.mp4")


# -- the same promises from sync code: most users write sync flows


@flow
def my_sync_clip(run_key: str, resubmit_uncertain: bool = False) -> str:
    """A sync flow: the clip path runs and returns its result (no await)."""
    clip = generate_video(REQUEST, run_key=run_key, resubmit_uncertain=resubmit_uncertain, **FAST)
    return str(clip.local_path)


@flow
def my_sync_helper_clip(run_key: str, resubmit_uncertain: bool = False) -> str:
    clip = kling_o3_text_to_video(
        prompt="A kite at dusk", duration=3, mode="std", run_key=run_key, resubmit_uncertain=resubmit_uncertain, **FAST
    )
    return str(clip.local_path)


@pytest.mark.parametrize("user_flow", [my_sync_clip, my_sync_helper_clip], ids=["generate_video", "helper"])
def test_a_sync_flow_makes_its_clip_pays_an_ambiguous_create_once_and_resumes(
    vendor_env, fast_retries, tmp_path, monkeypatch, user_flow
) -> None:
    emu = vendor_env
    monkeypatch.chdir(tmp_path)
    emu.inject("drop_after_create", times=1)
    first = user_flow("rk-sync-ambiguous", return_state=True)
    assert first.is_failed()
    with pytest.raises(JobMayHaveBeenCreated, match="may have been accepted"):
        first.result()
    again = user_flow("rk-sync-ambiguous", return_state=True)
    with pytest.raises(JobMayHaveBeenCreated, match="not submitted again"):
        again.result()
    assert emu.stats().create_requests == 1
    path = Path(user_flow("rk-sync-ambiguous", resubmit_uncertain=True))
    assert emu.stats().create_requests == 2 and media.is_decodable_mp4(path)
    assert path == tmp_path / "kling-output" / "rk-sync-ambiguous" / "clip.mp4"
    before = emu.stats()
    assert Path(user_flow("rk-sync-ambiguous")) == path  # a re-run resumes: nothing created or downloaded
    after = emu.stats()
    assert (after.create_requests, after.downloads) == (before.create_requests, before.downloads)


def test_the_three_tasks_run_from_a_sync_flow_and_submit_works_too(vendor_env, tmp_path, monkeypatch) -> None:
    from kling_prefect.tasks import store_kling_video, submit_kling_job, wait_for_kling_job

    emu = vendor_env
    monkeypatch.chdir(tmp_path)

    @flow
    def pieces(run_key: str) -> tuple[str, str, str]:
        job = submit_kling_job(REQUEST, run_key=run_key, step="clip")
        finished = wait_for_kling_job(job, poll_interval=0.05, timeout=60.0)
        stored = store_kling_video(finished)
        again = submit_kling_job.submit(REQUEST, run_key=run_key, step="clip").result()  # cached: same job
        return job.job_id, again.job_id, str(stored.local_path)

    before = emu.stats().create_requests
    job_id, again_id, path = pieces("rk-sync-pieces")
    assert job_id == again_id and emu.stats().create_requests == before + 1
    assert media.is_decodable_mp4(Path(path))


@flow
async def two_joins_at_once(out: str, key: str) -> list[str]:
    """A user's flow joining the same clips twice at once (two retries racing, a copy-pasted call)."""
    from kling_prefect.flows import join_and_store

    storage = StorageSpec(directory=out)
    heron = KlingO3TextToVideo(prompt="A heron takes off", duration=3, mode="std")
    clips = [
        await generate_video(REQUEST, run_key=key, step="a", storage=storage, **FAST),
        await generate_video(heron, run_key=key, step="b", storage=storage, **FAST),
    ]
    finals = await asyncio.gather(*(join_and_store(clips, storage, key) for _ in range(2)))
    return [final.uri for final in finals]


@flow
def two_joins_at_once_sync(out: str, key: str) -> list[str]:
    """The same from a sync flow: the two joins submitted, running at once in the task runner's threads."""
    from kling_prefect.flows import join_and_store

    storage = StorageSpec(directory=out)
    heron = KlingO3TextToVideo(prompt="A heron takes off", duration=3, mode="std")
    clips = [
        generate_video(REQUEST, run_key=key, step="a", storage=storage, **FAST),
        generate_video(heron, run_key=key, step="b", storage=storage, **FAST),
    ]
    futures = [join_and_store.submit(clips, storage, key) for _ in range(2)]
    return [future.result().uri for future in futures]


@pytest.mark.parametrize("user_flow", [two_joins_at_once, two_joins_at_once_sync], ids=["async", "sync"])
async def test_two_joins_at_once_take_turns_and_write_the_final_video_once(emulator, tmp_path, user_flow) -> None:
    with captured_lines("prefect.task_runs") as lines:
        key = f"joins-{user_flow.__name__}"  # a run key of its own: the other variant's jobs are not this emulator's
        uris = await user_flow(str(tmp_path), key) if user_flow is two_joins_at_once else user_flow(str(tmp_path), key)
    assert uris[0] == uris[1] and uris[0].endswith("final.mp4")
    # Under the store lease the second join waits, then finds the first one's video: it joins nothing.
    assert sum("joined 2 clips into" in line for line in lines) == 1
    assert sum("joined already" in line for line in lines) == 1
    assert emulator.stats().creates == 2
