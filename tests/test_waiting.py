"""Adaptive waiting: the learned duration model, the query schedule built on it (deterministic, seeded), the
shared HTTP pool, learning during real waits against the emulator, and a smoke run of the benchmark."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kling_prefect import KlingO1TextToVideo, KlingO3TextToVideo, ShortAPIClient
from kling_prefect.client import PollPolicy, shared_http_client
from kling_prefect.emulator import Emulator
from kling_prefect.waiting import (
    DurationEstimate,
    DurationFile,
    DurationModel,
    JobKind,
    default_duration_model,
    simulate_waits,
)

from .conftest import TEST_KEY
from .helpers import max_in_window

O3 = "kwaivgi/kling-o3/text-to-video"
KIND = JobKind(O3, "std", 5)
BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_waiting.py"


def queries_until(policy: PollPolicy, done_at: float, estimate: DurationEstimate, seed: int = 0):
    """Walk the schedule of one job that completes ``done_at`` s after creation: (queries, detection delay)."""
    rng = random.Random(seed)
    pending_at, queries = 0.0, 0
    while True:
        asked_at = pending_at + policy.next_query(pending_at, estimate, rng)
        queries += 1
        if asked_at >= done_at:
            return queries, asked_at - done_at
        pending_at = asked_at
        assert queries < 10_000


# --------------------------------------------------------------------------------------------- schedule


def test_a_wide_prior_queries_early_and_close_to_the_interval() -> None:
    # Before any job of any kind was seen: the prior around the model's typical time (135 s for o3 pro 5 s).
    prior = DurationModel().estimate(JobKind(O3, "pro", 5))
    assert prior.observations == 0 and prior.median == 135 and prior.sigma >= 0.8
    policy = PollPolicy(min_interval=2, max_skip=1000, jitter=0)
    first = policy.next_query(0, prior, None)
    # the same rule as with knowledge, with a smaller late budget: the prior's shape is a guess
    assert first == pytest.approx(prior.quantile(policy.prior_late_budget) + 2)
    assert 8 < first < 30  # a wide belief: the first query comes early, in case the vendor is much faster
    # through the prior's body intervals stay within a few times the detection target
    assert all(2 <= policy.next_query(t, prior, None) < 8 for t in (30, 60, 120, 240))


def test_learned_schedule_skips_while_the_job_cannot_be_done_then_tightens() -> None:
    policy = PollPolicy(min_interval=2, max_interval=30, max_skip=1000, jitter=0)
    estimate = DurationEstimate(median=100, sigma=0.1, observations=20)
    first = policy.next_query(0, estimate)
    # one sleep to where 1% of such jobs are done (plus the query interval): no queries before
    assert first == pytest.approx(estimate.quantile(0.01) + 2)
    # completion likely: every min_interval
    for elapsed in (90, 95, 100, 105, 110):
        assert policy.next_query(elapsed, estimate) == 2
    overdue = estimate.quantile(policy.overdue_quantile)
    assert policy.next_query(overdue + 50, estimate) == pytest.approx(2 + 0.1 * 50)  # slowly growing
    assert policy.next_query(overdue + 10_000, estimate) == 30  # capped


def test_a_skip_never_exceeds_max_skip() -> None:
    policy = PollPolicy(min_interval=2, max_skip=60, jitter=0)
    assert policy.next_query(0, DurationEstimate(median=1000, sigma=0.1, observations=5)) == 60


def test_jitter_spreads_queries_but_never_lengthens_a_skip() -> None:
    policy = PollPolicy(min_interval=2, max_skip=1000, jitter=0.2)
    estimate = DurationEstimate(median=100, sigma=0.1, observations=20)
    rng = random.Random(3)
    skips = [policy.next_query(0, estimate, rng) for _ in range(200)]
    exact = estimate.quantile(0.01) + 2
    # at most jitter x min_interval early, never late
    assert max(skips) <= exact and min(skips) >= exact - 0.2 * 2 and len(set(skips)) > 150
    near = [policy.next_query(98, estimate, rng) for _ in range(200)]
    assert 2 * (1 - 0.2 / 2) <= min(near) < max(near) <= 2


@pytest.mark.parametrize("truth", [5.0, 30.0, 60.0])
def test_a_wrong_expectation_costs_at_most_a_bounded_delay(truth: float) -> None:
    # The model believes 300 s; this vendor finishes in `truth` s. Detection comes at most max_skip late.
    policy = PollPolicy(min_interval=2, max_skip=60)
    wrong = DurationEstimate(median=300, sigma=0.05, observations=50)
    for seed in range(20):
        _, delay = queries_until(policy, truth, wrong, seed)
        assert delay <= policy.max_skip + policy.min_interval


def test_a_much_slower_job_than_expected_is_polled_ever_less_often() -> None:
    policy = PollPolicy(min_interval=2, max_interval=30)
    estimate = DurationEstimate(median=100, sigma=0.1, observations=20)
    queries, delay = queries_until(policy, 3600, estimate, seed=1)
    assert queries < 200 and delay <= 30 * 1.2  # an hour-long straggler: ~2 queries a minute, not 30


def test_knowledge_cuts_queries_and_keeps_detection_within_the_interval() -> None:
    policy = PollPolicy(min_interval=2)
    truth = DurationEstimate(median=120, sigma=0.08, observations=0)
    rng = random.Random(5)
    durations = [truth.quantile(rng.random()) for _ in range(300)]
    learned = DurationEstimate(median=120, sigma=0.1, observations=30)
    prior = DurationEstimate(median=120, sigma=0.9, observations=0)
    warm = [queries_until(policy, d, learned, i) for i, d in enumerate(durations)]
    cold = [queries_until(policy, d, prior, i) for i, d in enumerate(durations)]
    plain = sum(math.ceil(d / 5) for d in durations)  # the vendor's loop: every 5 s

    def p95(results: list[tuple[int, float]]) -> float:
        return sorted(d for _, d in results)[int(0.95 * len(results))]

    assert sum(q for q, _ in warm) < 0.6 * plain
    assert p95(warm) < 2.5  # seen within the interval (+ jitter)
    # a wide prior costs more queries than knowledge, and still notices within a few intervals
    assert sum(q for q, _ in warm) < sum(q for q, _ in cold) and p95(cold) < 10


def test_scaled_policy() -> None:
    policy = PollPolicy.scaled(0.2)
    assert (policy.min_interval, policy.max_interval, policy.max_skip, policy.callback_fallback) == (
        0.2,
        pytest.approx(3.0),
        pytest.approx(6.0),
        pytest.approx(6.0),
    )
    assert PollPolicy.scaled(2.0, 10).max_interval == 10
    assert PollPolicy.scaled(2.0) == PollPolicy()
    with pytest.raises(ValueError):
        PollPolicy.scaled(0)


# --------------------------------------------------------------------------------------------- model


def test_model_learns_the_midpoint_and_narrows_with_evidence() -> None:
    model = DurationModel()
    assert model.learned(KIND) is None and model.estimate(KIND).observations == 0  # a prior only
    assert model.observe(KIND, pending_at=88, done_by=92)
    one = model.estimate(KIND)
    assert one is not None and one.median == pytest.approx(90) and one.observations == 1
    rng = random.Random(1)
    for _ in range(40):
        true = 90 * math.exp(rng.gauss(0, 0.05))
        model.observe(KIND, pending_at=true - rng.uniform(0, 2), done_by=true + rng.uniform(0, 2))
    many = model.estimate(KIND)
    assert many is not None and many.sigma < one.sigma and 0.03 < many.sigma < 0.12
    assert many.median == pytest.approx(90, rel=0.05)
    assert model.learned(JobKind(O3, "pro", 5)) is None  # kinds are learned separately


def test_the_first_completions_calibrate_the_prior_of_every_kind() -> None:
    model = DurationModel()
    pro10 = JobKind(O3, "pro", 10)
    cold = model.estimate(pro10)
    assert cold.median == pytest.approx(70 + 13 * 10) and cold.sigma == model.cold_sigma
    # The vendor turns out 3x faster than typical on o3 std 5 s (typical 45 + 9 * 5 = 90 s): 30 s.
    model.observe(KIND, pending_at=29, done_by=31)
    informed = model.estimate(pro10)
    assert informed.observations == 0 and informed.median == pytest.approx(200 / 3, rel=0.01)
    assert informed.sigma == model.informed_sigma < cold.sigma
    unknown = model.estimate(JobKind("vendor/new-model", "pro", 5))
    assert unknown.median == pytest.approx(model.default_typical / 3, rel=0.01)  # typical 120 s, scaled too


def test_model_is_robust_to_outliers_and_ignores_vague_observations() -> None:
    model = DurationModel()
    for _ in range(20):
        model.observe(KIND, pending_at=99, done_by=101)
    model.observe(KIND, pending_at=1999, done_by=2001)  # a job stuck in the vendor's queue
    estimate = model.estimate(KIND)
    assert estimate is not None and estimate.median == pytest.approx(100, rel=0.01) and estimate.sigma < 0.1
    assert not model.observe(KIND, pending_at=50, done_by=40)
    assert model.observe(KIND, pending_at=0, done_by=100)  # found done by the first query: "at most 100 s"
    estimate = model.estimate(KIND)
    assert estimate.observations == 22 and estimate.median == pytest.approx(100, rel=0.01)  # it says little


def test_model_keeps_a_window_of_recent_jobs() -> None:
    model = DurationModel(window=10)
    for _ in range(10):
        model.observe(KIND, pending_at=99, done_by=101)
    for _ in range(10):
        model.observe(KIND, pending_at=199, done_by=201)  # the vendor slowed down
    assert model.estimate(KIND).median == pytest.approx(200, rel=0.01)


def test_job_kind_fills_the_models_defaults() -> None:
    assert JobKind.from_args(O3, {"prompt": "x"}) == JobKind(O3, "pro", 5, False)
    assert JobKind.from_args(O3, {"prompt": "x", "mode": "std", "duration": 10, "sound": "on"}) == JobKind(
        O3, "std", 10, True
    )
    assert JobKind.of(KlingO1TextToVideo(prompt="x", duration="10")) == JobKind(
        "kwaivgi/kling-o1/text-to-video", "pro", 10, False
    )
    assert JobKind.from_args("vendor/unknown", {"duration": "7", "mode": "fast"}) == JobKind(
        "vendor/unknown", "fast", 7, False
    )


async def test_watchers_are_woken_across_threads() -> None:
    model = DurationModel()
    with model.watch(KIND) as news:
        assert not await news.wait(0.01)
        threading.Thread(target=lambda: model.observe(KIND, pending_at=9, done_by=10)).start()
        assert await news.wait(30)  # returns as soon as the other thread observed
        assert not await news.wait(0)
    other_kind = JobKind(O3, "pro", 5)
    with model.watch(other_kind) as other:
        model.observe(KIND, pending_at=9, done_by=10)
        assert await other.wait(0.01)  # still on its prior, which that completion moved: re-plan
        model.observe(other_kind, pending_at=19, done_by=20)
        assert await other.wait(0.01)
        model.observe(KIND, pending_at=9, done_by=10)
        assert not await other.wait(0.01)  # learned from its own jobs now: others' completions do not matter


# --------------------------------------------------------------------------------------------- pool


def test_one_pool_per_event_loop_closed_with_its_loop() -> None:
    async def grab():
        first, second = shared_http_client(), shared_http_client()
        assert first is second
        async with ShortAPIClient(api_key=TEST_KEY, http_client=first) as client:
            assert client._client() is first
        assert not first.is_closed  # a client given the pool does not close it
        return first

    seen: dict[int, object] = {}

    def in_thread(index: int) -> None:
        seen[index] = asyncio.run(grab())

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pools = [*seen.values(), asyncio.run(grab())]
    assert len({id(p) for p in pools}) == 4
    assert all(p.is_closed for p in pools)  # closed by each loop's shutdown


async def test_task_clients_share_the_pool(monkeypatch) -> None:
    from kling_prefect.tasks import open_client

    monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
    first, second = await open_client(None), await open_client(None)
    async with first, second:
        assert first._client() is second._client() is shared_http_client("api")
        assert first._download_http is second._download_http is shared_http_client("download")
        assert shared_http_client("api") is not shared_http_client("download")
    assert not shared_http_client().is_closed and not shared_http_client("download").is_closed


# --------------------------------------------------------------------------------------------- real waits


async def test_real_waits_learn_the_job_duration() -> None:
    request = KlingO3TextToVideo(prompt="A kite", duration=5, mode="std")
    kind = JobKind.of(request)
    model = DurationModel()
    policy = PollPolicy.scaled(0.05)
    with Emulator(time_scale=0.002, job_time=lambda model_id, args: 250.0) as emu:  # every job takes 0.5 s
        async with ShortAPIClient(api_key=TEST_KEY, base_url=emu.base_url, poll=policy) as client:

            async def one() -> tuple[int, str]:
                created = await client.create_job(request)
                await client.wait_for_job(
                    created.job_id, timeout=30, started_at=created.created_at, kind=kind, durations=model
                )
                return emu.stats().jobs[created.job_id].queries, created.job_id

            cold, job_id = await one()
            learned = model.learned(kind)
            record = emu.stats().jobs[job_id]
            # Learned = the midpoint between the last "pending" and the first "done" answer: after most of the
            # job's 0.5 s, and no later than when the emulator saw its completion detected (load-independent).
            detected = record.first_terminal_seen_at - record.created_at
            assert learned is not None and learned.observations == 1
            assert 0.2 < learned.median <= detected + 0.05, (learned, detected)
            await asyncio.gather(*(one() for _ in range(19)))  # the model learns from these
            latest = max(r.first_terminal_seen_at - r.created_at for r in emu.stats().jobs.values())
    # Every job takes 0.5 s at the emulator: what was learned brackets it. (That knowing it saves queries is
    # shown on simulated time above and measured in benchmarks/; at 0.5 s jobs the saving is within noise.)
    final = model.estimate(kind)
    assert final is not None and final.observations >= 15
    assert 0.3 < final.median <= latest + 0.05, (final, latest)
    # The cold wait believed ~90 s (o3 std 5 s, typical): its first query came after at most max_skip (1.5 s)
    # and found the job done. It still taught the model "at most that long", and the model converged.
    assert cold == 1


async def test_a_batch_of_waits_shares_what_the_first_completion_taught() -> None:
    request = KlingO3TextToVideo(prompt="A kite", duration=5, mode="std")
    kind = JobKind.of(request)
    model = DurationModel()
    with Emulator(time_scale=0.004, job_time=lambda model_id, args: 250.0) as emu:
        async with ShortAPIClient(api_key=TEST_KEY, base_url=emu.base_url, poll=PollPolicy.scaled(0.05)) as client:
            created = [await client.create_job(request) for _ in range(20)]
            await asyncio.gather(
                *(
                    client.wait_for_job(c.job_id, timeout=30, started_at=c.created_at, kind=kind, durations=model)
                    for c in created
                )
            )
        stats = emu.stats()
    assert model.estimate(kind).observations >= 1
    assert all(job.first_terminal_seen_at is not None for job in stats.jobs.values())
    assert stats.connections <= 32  # one pool: connections reused


def test_default_model_is_process_wide() -> None:
    assert default_duration_model() is default_duration_model()


# --------------------------------------------------------------------------------------------- benchmark


@pytest.mark.slow  # subprocesses / seconds of work: outside the fast selection
def test_benchmark_smoke(tmp_path) -> None:
    """The benchmark runs end to end with a few jobs (ways a and bc, compared, and a small streaming case)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SHORTAPI_"))}
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--jobs",
            "4",
            "--ways",
            "a,bc",
            "--time-scale",
            "0.01",
            "--scaling",
            "",
            "--stream-mb",
            "8",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("wall/ideal", "queries/job", "detect p50", "detect p95", "peak MB", "CPU s", "RSS growth"):
        assert metric in result.stdout, result.stdout
    assert "bc@4" in result.stdout and "(bc) queries under 1/3 of (a)'s" in result.stdout
    assert "callbacks are off" not in result.stderr + (tmp_path / "child-bc-4.log").read_text()


def _simulate_batch(policy: PollPolicy, model: DurationModel, durations: list[float], seed: int) -> list[int]:
    """Queries per job of a batch of waits started together, sharing ``model``."""
    return [wait.queries for wait in simulate_waits(policy, model, [(KIND, d) for d in durations], seed)]


def test_a_second_batch_in_the_same_process_costs_fewer_queries() -> None:
    rng = random.Random(2)
    model, policy = DurationModel(), PollPolicy()
    first = _simulate_batch(policy, model, [90 * math.exp(rng.gauss(0, 0.08)) for _ in range(50)], seed=1)
    second = _simulate_batch(policy, model, [90 * math.exp(rng.gauss(0, 0.08)) for _ in range(50)], seed=2)
    assert sum(second) < 0.8 * sum(first)


# --------------------------------------------------------------------------------------------- persistence


def _observe_many(model: DurationModel, kind: JobKind, count: int, median: float = 90.0, seed: int = 1) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        true = median * math.exp(rng.gauss(0, 0.08))
        assert model.observe(kind, pending_at=true - rng.uniform(0, 2), done_by=true + rng.uniform(0, 2))


def _write(path: Path, samples: dict[JobKind, list[list[float]]], version: object = 1) -> None:
    kinds = [
        {"model": k.model, "mode": k.mode, "seconds": k.seconds, "audio": k.audio, "samples": s}
        for k, s in samples.items()
    ]
    path.write_text(json.dumps({"version": version, "kinds": kinds}))


def _stored(path: Path) -> dict[JobKind, list[list[float]]]:
    data = json.loads(path.read_text())
    assert data["version"] == 1
    return {JobKind(k["model"], k["mode"], k["seconds"], k["audio"]): k["samples"] for k in data["kinds"]}


def _waiting_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kling_prefect.waiting" and r.levelno >= logging.WARNING]


def test_saved_durations_load_with_the_same_median_and_a_wider_spread(tmp_path) -> None:
    path = tmp_path / "sub" / "durations.json"  # the directory is created
    here = DurationModel()
    _observe_many(here, KIND, 30)
    other = JobKind(O3, "pro", 10, True)
    here.observe(other, pending_at=199, done_by=201)
    assert DurationFile(here, path).save()
    assert _stored(path).keys() == {KIND, other} and len(_stored(path)[KIND]) == 30
    assert not [p for p in path.parent.iterdir() if ".part" in p.name]  # the temporary was renamed over the target

    loaded = DurationModel()
    assert DurationFile(loaded, path).load() == 31
    mine, theirs = here.estimate(KIND), loaded.estimate(KIND)
    assert theirs is not None and theirs.observations == mine.observations == 30
    assert theirs.median == pytest.approx(mine.median, rel=1e-12)
    # each loaded observation counts with history_sigma**2 = 0.01 more variance, like a wider detection interval
    assert theirs.sigma > mine.sigma and theirs.sigma**2 == pytest.approx(mine.sigma**2 + 0.01 / 30)
    one = loaded.learned(other)
    assert one is not None and one.median == pytest.approx(200) and one.sigma > here.estimate(other).sigma
    wide, narrow = DurationModel(history_sigma=0.3), DurationModel(history_sigma=0)
    assert DurationFile(wide, path).load() == DurationFile(narrow, path).load() == 31
    assert narrow.estimate(KIND).sigma == pytest.approx(mine.sigma)
    assert wide.estimate(KIND).sigma > theirs.sigma
    assert DurationFile(loaded, path).load() == 0  # nothing new: loading twice does not double the evidence
    assert (
        DurationFile(here, path).load() == 0 and here.estimate(KIND) == mine
    )  # its own samples come back as themselves


def test_saving_merges_with_the_file_and_keeps_the_newest_window(tmp_path) -> None:
    path = tmp_path / "durations.json"
    now = time.time()
    other = JobKind(O3, "pro", 5)
    _write(path, {KIND: [[math.log(50), 0.0, now - 100 + i] for i in range(5)], other: [[math.log(70), 0.0, now]]})
    model = DurationModel(window=5)
    for _ in range(3):
        model.observe(KIND, pending_at=99, done_by=101)
    assert DurationFile(model, path).save()
    stored = _stored(path)
    assert stored[other] == [[math.log(70), 0.0, now]]  # a kind this process never saw is kept
    assert len(stored[KIND]) == 5  # the window: 3 new and the 2 newest of the file's
    assert [s[2] for s in stored[KIND][:2]] == [now - 97, now - 96]
    assert [round(math.exp(s[0])) for s in stored[KIND]] == [50, 50, 100, 100, 100]
    assert DurationFile(model, path).save() and _stored(path) == stored  # saving again changes nothing: no duplicates


def test_observations_older_than_max_age_are_neither_loaded_nor_saved(tmp_path) -> None:
    path = tmp_path / "durations.json"
    now = time.time()
    _write(path, {KIND: [[math.log(300), 0.0, now - 8 * 86400], [math.log(90), 0.0, now - 3600]]})
    fresh = DurationModel()
    assert DurationFile(fresh, path).load() == 1
    assert fresh.estimate(KIND).median == pytest.approx(90)
    assert DurationFile(DurationModel(), path, max_age=9 * 86400).load() == 2
    assert DurationFile(DurationModel(), path, max_age=60).load() == 0
    assert DurationFile(fresh, path).save() and [round(math.exp(s[0])) for s in _stored(path)[KIND]] == [90]


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"\xff\xfe garbage",
        b"[]",
        b'{"kinds": []}',
        b'{"version": 2, "kinds": []}',
        b'{"version": 1, "kinds": {}}',
        b'{"version": 1, "kinds": [{"model": "m", "mode": "std", "seconds": "5", "audio": false, "samples": []}]}',
        b'{"version": 1, "kinds": [{"model": "m", "mode": "std", "seconds": 5, "audio": false, "samples": [[1, 2]]}]}',
        b'{"version": 1, "kinds": [{"model": "m", "mode": "std", "seconds": 5, "audio": false,'
        b' "samples": [[4.5, 0, 1e9], [4.5, -1, 1e9]]}]}',
        b'{"version": 1, "kinds": [{"model": "m", "mode": "std", "seconds": 5, "audio": false,'
        b' "samples": [[NaN, 0, 1e9]]}]}',
    ],
)
def test_a_bad_file_warns_once_and_loads_nothing(tmp_path, caplog, content: bytes) -> None:
    path = tmp_path / "durations.json"
    path.write_bytes(content)
    model = DurationModel()
    with caplog.at_level(logging.DEBUG, logger="kling_prefect.waiting"):
        assert DurationFile(model, path).load() == 0
    assert len(_waiting_warnings(caplog)) == 1, caplog.text
    assert model.known_kinds() == [] and model.learned(JobKind("m", "std", 5)) is None


def test_a_missing_file_or_a_directory_loads_nothing(tmp_path, caplog) -> None:
    model = DurationModel()
    with caplog.at_level(logging.DEBUG, logger="kling_prefect.waiting"):
        assert DurationFile(model, tmp_path / "nothing-here.json").load() == 0
        assert not _waiting_warnings(caplog)  # nothing saved yet is normal
        assert DurationFile(model, tmp_path).load() == 0
    assert len(_waiting_warnings(caplog)) == 1


def test_saving_replaces_a_corrupt_file_but_not_a_newer_format(tmp_path, caplog) -> None:
    path = tmp_path / "durations.json"
    path.write_text("{ truncated")
    model = DurationModel()
    model.observe(KIND, pending_at=99, done_by=101)
    assert DurationFile(model, path).save() and len(_stored(path)[KIND]) == 1
    newer = '{"version": 2, "durations": "something else"}'
    path.write_text(newer)
    with caplog.at_level(logging.DEBUG, logger="kling_prefect.waiting"):
        assert not DurationFile(model, path).save()
    assert path.read_text() == newer and len(_waiting_warnings(caplog)) == 1


def test_saving_never_raises_and_warns_once(tmp_path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "durations.json"
    model = DurationModel()
    model.observe(KIND, pending_at=99, done_by=101)
    file = DurationFile(model, path, save_every=0)
    with caplog.at_level(logging.DEBUG, logger="kling_prefect.waiting"):
        assert not file.save()
        assert file.attach() == 0  # loading from there: a warning too
        assert model.observe(KIND, pending_at=99, done_by=101)  # saves (and fails) from inside observe
        assert not file.flush()
    warnings = _waiting_warnings(caplog)
    assert len(warnings) == 2 and "Could not save" in warnings[0].getMessage(), caplog.text
    assert model.estimate(KIND).observations == 2  # learning goes on


def test_an_attached_model_saves_at_most_every_save_every_seconds(tmp_path) -> None:
    path = tmp_path / "durations.json"
    model = DurationModel()
    file = DurationFile(model, path, save_every=3600)
    assert file.attach() == 0 and file.path == path
    assert not file.flush()  # nothing unsaved
    model.observe(KIND, pending_at=99, done_by=101)
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:  # saved at once, by a background thread
        time.sleep(0.01)
    assert len(_stored(path)[KIND]) == 1  # the first observation is saved at once
    model.observe(KIND, pending_at=99, done_by=101)
    assert not model.observe(KIND, pending_at=50, done_by=40)  # impossible: not kept, nothing to save
    assert len(_stored(path)[KIND]) == 1  # then not before save_every seconds
    assert file.flush() and len(_stored(path)[KIND]) == 2
    assert not file.flush()


def test_threads_observing_an_attached_model_lose_nothing(tmp_path) -> None:
    path = tmp_path / "durations.json"
    model = DurationModel(window=500)
    file = DurationFile(model, path, save_every=0)
    file.attach()
    kinds = [JobKind(O3, "std", seconds) for seconds in (5, 10, 15, 20)]

    def observe(kind: JobKind) -> None:
        for i in range(40):
            model.observe(kind, pending_at=99 + i, done_by=101 + i)
            model.estimate(kind)

    threads = [threading.Thread(target=observe, args=(kind,)) for kind in kinds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    file.flush()  # a save skipped while another thread was saving is made now
    stored = _stored(path)
    assert {kind: len(stored[kind]) for kind in kinds} == dict.fromkeys(kinds, 40)


async def test_loading_wakes_the_waits_of_the_loaded_kinds(tmp_path) -> None:
    path = tmp_path / "durations.json"
    source = DurationModel()
    source.observe(KIND, pending_at=99, done_by=101)
    DurationFile(source, path).save()
    model = DurationModel()
    with model.watch(KIND) as news, model.watch(JobKind(O3, "pro", 5)) as other:
        assert DurationFile(model, path).load() == 1
        assert await news.wait(1) and await other.wait(0)  # a kind still on its prior re-plans too


_SAVER = """
import sys
from kling_prefect.waiting import DurationFile, DurationModel, JobKind
path, name = sys.argv[1], sys.argv[2]
model = DurationModel(window=1000)
file = DurationFile(model, path)
print("ready", flush=True)
sys.stdin.readline()
for i in range(100):
    model.observe(JobKind("m", name, 5), pending_at=90 + i, done_by=92 + i)
    model.observe(JobKind("m", "shared", 5), pending_at=90 + i, done_by=92 + i)
    assert DurationFile(model, path).save()
"""


@pytest.mark.slow  # subprocesses / seconds of work: outside the fast selection
def test_processes_saving_to_one_file_keep_each_others_observations(tmp_path) -> None:
    path = tmp_path / "durations.json"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(path), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:  # start both at once: their saves overlap
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    stored = _stored(path)
    assert len(stored[JobKind("m", "first", 5)]) == len(stored[JobKind("m", "second", 5)]) == 100
    assert len(stored[JobKind("m", "shared", 5)]) == 200  # both processes' observations of the same kind


def test_durations_path_follows_the_environment(monkeypatch, tmp_path) -> None:
    from kling_prefect.waiting import durations_path

    for off in ("off", "OFF", " Off ", "0", "false", "None"):
        monkeypatch.setenv("KLING_PREFECT_DURATIONS", off)
        assert durations_path() is None, off
    monkeypatch.setenv("KLING_PREFECT_DURATIONS", str(tmp_path / "mine.json"))
    assert durations_path() == tmp_path / "mine.json"
    monkeypatch.setenv("KLING_PREFECT_DURATIONS", "~/elsewhere.json")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert durations_path() == tmp_path / "elsewhere.json"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("KLING_PREFECT_DURATIONS")
        else:
            monkeypatch.setenv("KLING_PREFECT_DURATIONS", unset)
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
        assert durations_path() == tmp_path / "home" / "kling-prefect" / "durations.json"
        monkeypatch.delenv("PREFECT_HOME")
        assert durations_path() == tmp_path / ".prefect" / "kling-prefect" / "durations.json"


_FLOW_RUN = """
import json
from kling_prefect.waiting import JobKind, default_duration_model
model = default_duration_model()
kind = JobKind("kwaivgi/kling-o3/text-to-video", "std", 5)
before = model.learned(kind)
model.observe(kind, pending_at=99, done_by=101)  # saved at once (the first since the start)
model.observe(kind, pending_at=109, done_by=111)  # within save_every: saved at exit
print(json.dumps(None if before is None else [before.median, before.observations]))
"""


@pytest.mark.slow  # subprocesses / seconds of work: outside the fast selection
def test_a_fresh_process_starts_from_what_earlier_ones_saved(tmp_path) -> None:
    def run(env: dict[str, str]) -> object:
        result = subprocess.run(
            [sys.executable, "-c", _FLOW_RUN], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    path = tmp_path / "durations.json"
    assert run({"KLING_PREFECT_DURATIONS": str(path)}) is None  # the first flow run starts cold
    assert len(_stored(path)[KIND]) == 2  # including the observation only the exit saved
    median, observations = run({"KLING_PREFECT_DURATIONS": str(path)})
    assert observations == 2 and median == pytest.approx(math.sqrt(100 * 110))  # in log space
    assert len(_stored(path)[KIND]) == 4
    assert run({"KLING_PREFECT_DURATIONS": "off"}) is None
    home = tmp_path / "prefect-home"
    assert run({"KLING_PREFECT_DURATIONS": "", "PREFECT_HOME": str(home)}) is None
    assert len(_stored(home / "kling-prefect" / "durations.json")[KIND]) == 2
    assert len(_stored(path)[KIND]) == 4  # untouched by the runs that did not use it


def test_a_batch_in_a_new_process_learns_from_the_saved_history(tmp_path) -> None:
    """Simulated time: the second batch of a new flow run, from the first run's file, against a cold start."""
    rng = random.Random(2)
    policy, path = PollPolicy(), tmp_path / "durations.json"
    first = [90 * math.exp(rng.gauss(0, 0.08)) for _ in range(50)]
    second = [(KIND, 90 * math.exp(rng.gauss(0, 0.08))) for _ in range(50)]
    earlier_run = DurationModel()
    simulate_waits(policy, earlier_run, [(KIND, d) for d in first], seed=1)
    assert DurationFile(earlier_run, path).save()
    new_run = DurationModel()
    assert DurationFile(new_run, path).load() == 50
    warm = simulate_waits(policy, new_run, second, seed=2)
    cold = simulate_waits(policy, DurationModel(), second, seed=2)

    def mean_queries(waits) -> float:
        return sum(w.queries for w in waits) / len(waits)

    assert mean_queries(warm) < 0.9 * mean_queries(cold), (mean_queries(warm), mean_queries(cold))
    assert max(w.delay for w in warm) < 5  # and every completion still seen within seconds


# --------------------------------------------------------------------------------------------- query cap


def test_the_query_cap_holds_across_threads_and_event_loops() -> None:
    from kling_prefect.waiting import QueryCap

    cap = QueryCap(rate=20)
    granted: list[float] = []
    lock = threading.Lock()

    async def many(count: int) -> None:
        async def one() -> None:
            await cap.acquire(0.5)
            with lock:
                granted.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(count)))

    threads = [threading.Thread(target=lambda: asyncio.run(many(15))) for _ in range(3)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 45
    assert max_in_window(granted, 1.0) <= 20 + 1  # the burst of one, then 20 a second
    assert time.monotonic() - began >= (45 - 1) / 20 * 0.95  # it did wait: 45 tokens at 20 a second
    assert cap.stats()["delayed"] >= 40


async def test_queued_queries_go_likeliest_first_and_none_waits_forever() -> None:
    from kling_prefect.waiting import QueryCap

    cap = QueryCap(rate=20)
    order: list[str] = []
    await cap.acquire()  # the bucket is empty now: the next ones queue

    async def query(name: str, priority: Any) -> None:
        await cap.acquire(priority)
        order.append(name)

    began = time.monotonic()
    rising = lambda: min(1.0, (time.monotonic() - began) * 2)  # noqa: E731 - a query whose job gets likelier
    await asyncio.gather(
        query("unlikely", 0.1),
        query("likely", 0.9),
        query("rising", rising),
        *(query(f"mid-{i}", 0.6) for i in range(6)),
    )
    assert order[0] == "likely"  # higher first
    assert order.index("rising") < order.index("unlikely")  # it grew past 0.6 while it waited
    assert order[-1] == "unlikely" and [n for n in order if n.startswith("mid")] == [f"mid-{i}" for i in range(6)]


async def test_an_abandoned_query_does_not_take_a_token() -> None:
    from kling_prefect.waiting import QueryCap

    cap = QueryCap(rate=10)
    await cap.acquire()
    waiting = asyncio.ensure_future(cap.acquire(0.9))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    began = time.monotonic()
    await cap.acquire(0.1)
    assert time.monotonic() - began < 0.5  # the next token went to the query still waiting, not the cancelled one
    assert cap.stats()["granted"] == 2


async def test_waits_of_many_jobs_keep_to_the_cap_at_the_vendor(emulator, fast_client_options) -> None:
    request = KlingO3TextToVideo(prompt="Capped kite", duration=3, mode="std")
    options = {**fast_client_options, "max_queries_per_second": 40.0}
    async with ShortAPIClient(base_url=emulator.base_url, **options) as client:
        created = await asyncio.gather(*(client.create_job(request) for _ in range(30)))
        # the 30 jobs' waits poll every 20 ms: 1,500 queries a second wanted, 40 allowed
        jobs = await asyncio.gather(*(client.wait_for_job(c, timeout=60, durations=DurationModel()) for c in created))
    stats = emulator.stats()
    assert all(job.state == "succeeded" for job in jobs)
    assert max_in_window(stats.query_times, 1.0) <= 40 + 1
    assert stats.queries >= 30
