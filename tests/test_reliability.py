"""Reliability under injected faults: a real SIGKILL, Prefect flow and task retries, every emulator fault, lost and
expired downloads, the budget, and hostile vendor responses (a tiny HTTP server of our own).

Each test asserts on what the vendor saw (the emulator's counters: one create per step, bounded requests) and
on what the user keeps (decodable files, no partial files, errors naming the job)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kling_prefect import (
    BudgetExceeded,
    DownloadFailed,
    JobMayHaveBeenCreated,
    KlingO3TextToVideo,
    ResultExpired,
    ShortAPIClient,
    ShortAPICredentials,
    ShortAPIError,
    VendorUnavailable,
    media,
)
from kling_prefect.client import RetryPolicy
from kling_prefect.emulator import Emulator
from kling_prefect.emulator.video import render_clip
from kling_prefect.flows import batch, continuation, text_to_video
from kling_prefect.planning import check_budget
from kling_prefect.pricing import format_usd
from kling_prefect.storage import LocalStore, safe_key, safe_name
from kling_prefect.tasks import UNKNOWN_STATUS_RECHECKS

from .conftest import TEST_KEY
from .helpers import (
    LoopbackServer,
    answer,
    artifacts_of,
    creates_by_prompt,
    flow_run_of,
    inject_when,
    mp4s,
    partial_files,
    read_body,
    task_runs_of,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST = {"poll_interval": 0.05, "timeout_seconds": 120}
RUNNER = Path(__file__).with_name("reliability_run_flow.py")
FAST_RETRY_ENV = {
    "SHORTAPI_READ_TIMEOUT": "1.0",
    "SHORTAPI_CONNECT_TIMEOUT": "2.0",
    "SHORTAPI_RETRY_BASE_DELAY": "0.02",
    "SHORTAPI_RETRY_MAX_DELAY": "0.2",
    "SHORTAPI_MAX_RETRY_AFTER": "0.5",
}


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Short timeouts and backoff for the flows (read through ``ShortAPICredentials.from_env``)."""
    for name, value in FAST_RETRY_ENV.items():
        monkeypatch.setenv(name, value)


# --------------------------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------------------------- 1. crash and retry


@pytest.fixture
def timed_emulator() -> Iterator[tuple[Emulator, dict[str, float]]]:
    """An emulator whose job durations (seconds) are set per prompt by the test (default 0.5 s)."""
    durations: dict[str, float] = {}
    with Emulator(
        seed=5, timing_jitter=0.0, job_time=lambda model, args: durations.get(args.get("prompt"), 0.5)
    ) as emu:
        yield emu, durations


def start_flow(spec: dict[str, Any], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, str(RUNNER), json.dumps(spec)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def flow_env(emu: Emulator, **extra: str) -> dict[str, str]:
    """The environment of a flow subprocess: this session's Prefect server, the emulator, quiet logs."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        **extra,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_BASE_URL": emu.base_url,
    }


def last_json_line(log: Path) -> dict[str, Any]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert lines, log.read_text(errors="replace")[-3000:]
    return json.loads(lines[-1])


def test_sigkill_while_waiting_then_rerun_with_the_same_run_key_pays_nothing_twice(
    prefect_server, timed_emulator, tmp_path
) -> None:

    emu, durations = timed_emulator
    chain = ["Kill chain: a lantern is lit", "Kill chain: the lantern drifts over the lake"]
    items = ["Kill batch: a red kite", "Kill batch: a green kite", "Kill batch: a blue kite"]
    # Long enough that each wait has queried its job (the first query of a cold wait comes up to max_skip, 3 s,
    # after the create) well before the job ends.
    durations.update({chain[0]: 0.3, chain[1]: 8.0, **dict.fromkeys(items, 8.0)})
    env = flow_env(emu, **FAST_RETRY_ENV)
    specs = {
        "chain": {
            "flow": "continuation",
            "prompts": chain,
            "duration": 3,
            "mode": "std",
            "run_key": "sigkill-chain",
            "output_dir": str(tmp_path / "chain"),
            "poll_interval": 0.1,
            "timeout_seconds": 120,
        },
        "batch": {
            "flow": "batch",
            "prompts": [{"prompt": p, "duration": 3, "mode": "std"} for p in items],
            "max_concurrency": 3,
            "run_key": "sigkill-batch",
            "output_dir": str(tmp_path / "batch"),
            "poll_interval": 0.1,
            "timeout_seconds": 120,
        },
    }
    # Killed once its in-flight jobs are created and being waited on: clip-01 of the chain is stored by then,
    # clip-02 is still rendering; the three batch jobs are all rendering.
    in_flight = {"chain": [chain[1]], "batch": items}

    def waited_on(prompts: list[str]) -> bool:
        jobs = {str(j.args.get("prompt")): j for j in emu.stats().jobs.values()}
        return all(p in jobs and jobs[p].queries >= 1 for p in prompts)

    procs = {name: start_flow(spec, env, tmp_path / f"{name}-1.log") for name, spec in specs.items()}
    try:
        pending = dict(procs)
        deadline = time.monotonic() + 90
        while pending:
            assert time.monotonic() < deadline, {n: (tmp_path / f"{n}-1.log").read_text()[-2000:] for n in pending}
            for name, proc in list(pending.items()):
                assert proc.poll() is None, (tmp_path / f"{name}-1.log").read_text()[-3000:]
                if waited_on(in_flight[name]):
                    os.kill(proc.pid, signal.SIGKILL)
                    assert proc.wait(timeout=30) == -signal.SIGKILL
                    del pending[name]
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    killed_at = emu.stats()
    assert all(
        killed_at.jobs[j].status in (0, 1) for j in killed_at.jobs if killed_at.jobs[j].args["prompt"] in items
    ), [
        (j.args["prompt"], j.status, j.created_at, j.done_at, j.queries, j.first_terminal_seen_at, time.monotonic())
        for j in killed_at.jobs.values()
    ]
    assert not (tmp_path / "chain" / "clip-02.mp4").exists()

    reruns = {name: start_flow(spec, env, tmp_path / f"{name}-2.log") for name, spec in specs.items()}
    for name, proc in reruns.items():
        assert proc.wait(timeout=180) == 0, (tmp_path / f"{name}-2.log").read_text()[-3000:]

    assert creates_by_prompt(emu) == Counter(chain + items)  # exactly one create per step, over both runs
    chain_result = last_json_line(tmp_path / "chain-2.log")
    batch_result = last_json_line(tmp_path / "batch-2.log")
    assert chain_result["stored"] == 2 and batch_result["stored"] == 3
    assert {c["job_id"] for c in batch_result["clips"]} == {
        j for j, rec in emu.stats().jobs.items() if rec.args["prompt"] in items
    }
    assert media.probe(tmp_path / "chain" / "final.mp4").frame_count == (3 + 5) * 24
    assert len(mp4s(tmp_path / "batch")) == 3
    assert not partial_files(tmp_path / "batch")


def test_sigkill_during_a_create_then_rerun_refuses_to_pay_again(prefect_server, timed_emulator, tmp_path) -> None:

    emu, _ = timed_emulator
    emu.inject("slow", endpoint="create", times=1, delay=3.0)  # the vendor takes 3 s to answer the create
    env = flow_env(emu)  # default timeouts: the create must still be out when the process is killed
    spec = {
        "flow": "text_to_video",
        "prompt": "Kill during create: a moth at a window",
        "duration": 3,
        "mode": "std",
        "run_key": "sigkill-create",
        "output_dir": str(tmp_path / "out"),
        "poll_interval": 0.1,
        "timeout_seconds": 60,
    }
    proc = start_flow(spec, env, tmp_path / "run-1.log")
    try:
        wait_until(lambda: emu.stats().create_requests >= 1, timeout=90)
        os.kill(proc.pid, signal.SIGKILL)  # the POST is out, its answer not yet back
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: emu.stats().creates == 1, timeout=30)  # the vendor created (and billed) the job anyway

    rerun = start_flow(spec, env, tmp_path / "run-2.log")
    assert rerun.wait(timeout=120) == 1, (tmp_path / "run-2.log").read_text()[-3000:]
    error = last_json_line(tmp_path / "run-2.log")["error"]
    assert error.startswith("JobMayHaveBeenCreated") and "earlier attempt" in error, error
    assert "resubmit_uncertain" in error and "answer was never recorded" in error
    assert emu.stats().create_requests == 1  # not sent again

    # The way out, once the user has checked the dashboard: resubmit_uncertain pays for the step again.
    third = start_flow({**spec, "resubmit_uncertain": True}, env, tmp_path / "run-3.log")
    assert third.wait(timeout=120) == 0, (tmp_path / "run-3.log").read_text()[-3000:]
    assert emu.stats().creates == 2
    assert media.probe(tmp_path / "out" / "clip-01.mp4").frame_count == 3 * 24


async def test_flow_retry_after_a_failed_wait_resumes_every_created_job(vendor_env, fast_retries, tmp_path) -> None:
    emu = vendor_env
    prompts = ["Retry chain: a seed", "Retry chain: a sprout"]
    # Once step two's job exists, one query is refused as unauthorised: the wait task fails (it is not retried
    # for that), the flow run fails, and Prefect retries the whole flow.
    watcher = inject_when(
        emu,
        lambda: emu.stats().creates >= 2,
        "error_code",
        endpoint="query",
        times=1,
        code=401,
        message="unauthorized: token expired",
    )
    state = await continuation.with_options(retries=1, retry_delay_seconds=0)(
        prompts, duration=3, mode="std", run_key="flow-retry", output_dir=str(tmp_path), return_state=True, **FAST
    )
    watcher.join()
    assert state.is_completed(), state
    assert emu.stats().faults_fired.get("error_code") == 1
    assert (await flow_run_of(state)).run_count == 2
    assert creates_by_prompt(emu) == Counter(prompts)
    assert media.probe(tmp_path / "final.mp4").frame_count == (3 + 5) * 24


async def test_interrupted_downloads_retry_the_store_task_and_never_leave_a_partial_file(
    vendor_env, fast_retries, tmp_path
) -> None:
    emu = vendor_env
    # Six broken transfers exhaust the client's six attempts; the store task's own retry then succeeds.
    emu.inject("truncate", endpoint="download", times=3, fraction=0.6)
    emu.inject("reset", endpoint="download", times=3)
    state = await text_to_video(
        "An interrupted download", duration=3, mode="std", run_key="dl-retry", output_dir=str(tmp_path),
        return_state=True, **FAST,
    )  # fmt: skip
    assert state.is_completed(), state
    stats = emu.stats()
    assert stats.creates == 1 and stats.downloads == 7
    assert stats.faults_fired == {"truncate": 3, "reset": 3}
    store = next(r for r in await task_runs_of(state) if r.name == "store-clip-01")
    assert store.run_count == 2
    assert media.probe(tmp_path / "clip-01.mp4").frame_count == 3 * 24
    assert not partial_files(tmp_path)


# --------------------------------------------------------------------------------------------- 2. faults survived


def inject_transient_faults(emu: Emulator) -> None:
    """Every fault the vendor may throw at idempotent calls (queries, downloads), at random. Creates get none:
    a create of unknown outcome is never sent twice (see test_refused_create_fails_its_step_and_is_never_sent_again;
    a limit's refusal is sent again: test_a_rate_limited_create_made_nothing_and_is_sent_again)."""
    emu.inject("rate_limit", endpoint="query", times=2, retry_after=0.05)
    emu.inject("slow", endpoint="query", times=2, delay=1.6)  # longer than the 1 s read timeout
    emu.inject("unknown_status", endpoint="query", times=2, status=9)
    for kind, params in (
        ("rate_limit", {"retry_after": 0.05}),
        ("server_error", {"status": 502}),
        ("server_error", {"status": 503}),
        ("reset", {}),
        ("malformed_json", {}),
    ):
        emu.inject(kind, endpoint="query", times=None, probability=0.07, **params)
    for kind, params in (
        ("server_error", {"status": 503}),
        ("reset", {}),
        ("truncate", {"fraction": 0.4}),
        ("rate_limit", {"retry_after": 0.05}),
    ):
        emu.inject(kind, endpoint="download", times=None, probability=0.1, **params)


def test_timeouts_and_backoff_are_tunable_from_the_environment() -> None:
    credentials = ShortAPICredentials.from_env(
        {"SHORTAPI_KEY": TEST_KEY, **FAST_RETRY_ENV, "SHORTAPI_RETRY_ATTEMPTS": "4"}
    )
    options = credentials.client_options()
    assert options["read_timeout"] == 1.0 and options["connect_timeout"] == 2.0
    assert options["retry"] == RetryPolicy(max_attempts=4, base_delay=0.02, max_delay=0.2, max_retry_after=0.5)
    client = credentials.get_client()
    assert client.retry == options["retry"] and client.timeout.read == 1.0
    assert ShortAPICredentials.from_env({"SHORTAPI_KEY": TEST_KEY}).retry_policy() == RetryPolicy()


async def test_continuation_finishes_through_every_transient_fault(vendor_env, fast_retries, tmp_path) -> None:
    emu = vendor_env
    inject_transient_faults(emu)
    prompts = ["Faulty chain: a boat leaves", "Faulty chain: the boat arrives"]
    result = await continuation(
        prompts, duration=3, mode="std", run_key="faulty-chain", output_dir=str(tmp_path), **FAST
    )
    stats = emu.stats()
    emu.clear_faults()
    assert [r.status for r in result.records] == ["stored", "stored"]
    assert media.probe(tmp_path / "final.mp4").frame_count == (3 + 5) * 24
    assert not partial_files(tmp_path)
    assert creates_by_prompt(emu) == Counter(prompts)
    assert stats.create_requests == 2  # one POST per step, whatever happened to the queries and downloads
    fired = set(stats.faults_fired)
    assert {"rate_limit", "slow", "unknown_status"} <= fired, stats.faults_fired
    assert stats.requests < 200, stats  # bounded: no hot loop on any fault


@pytest.mark.parametrize(
    ("fault", "params"),
    [("error_code", {"code": 503, "message": "service busy"}), ("error_code", {"code": 4003, "message": "bad args"})],
)
async def test_refused_create_fails_its_step_and_is_never_sent_again(
    vendor_env, fast_retries, tmp_path, fault, params
) -> None:
    """A refusal that is not a limit's (a 5xx code, an invalid request) fails its step: sent again, it would be
    refused again, or the vendor is failing; a re-run sends it (nothing was created)."""
    emu = vendor_env
    emu.inject(fault, endpoint="create", times=1, **params)
    items = [{"prompt": f"Refused create {fault}: scene {i}", "duration": 3, "mode": "std"} for i in range(3)]
    result = await batch(
        prompts=items, max_concurrency=1, run_key=f"refused-{params['code']}", output_dir=str(tmp_path),
        fail_on_error=False, **FAST,
    )  # fmt: skip
    stats = emu.stats()
    assert stats.create_requests == 3 and stats.creates == 2  # the refused POST was not sent again
    refused = [r for r in result.records if r.status != "stored"]
    assert len(refused) == 1 and refused[0].job_id is None
    assert sum(r.stored for r in result.records) == 2


async def test_a_rate_limited_create_made_nothing_and_is_sent_again(vendor_env, fast_retries, tmp_path, caplog) -> None:
    """HTTP 429 in the vendor's envelope is a limit's refusal (no job): the step sends it again after the
    Retry-After, and the item is stored, paid once."""
    emu = vendor_env
    emu.inject("rate_limit", endpoint="create", times=2, retry_after=0.3)  # longer than any backoff (0.2 s)
    items = [{"prompt": f"Rate limited create: scene {i}", "duration": 3, "mode": "std"} for i in range(3)]
    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        result = await batch(prompts=items, max_concurrency=1, run_key="refused-rate", output_dir=str(tmp_path), **FAST)
    stats = emu.stats()
    assert [r.status for r in result.records] == ["stored"] * 3
    assert stats.create_requests == 5 and stats.creates == 3  # two refusals sent again, each item paid once
    assert creates_by_prompt(emu) == Counter(item["prompt"] for item in items)
    pauses = re.findall(r"nothing was created\. Sending the create again in ([\d.]+) s", caplog.text)
    assert pauses == ["0.30", "0.30"], caplog.text[-2000:]  # the vendor's Retry-After, not the shorter backoff


async def test_batch_survives_faults_keeps_the_others_when_one_job_fails_and_sums_amounts(
    vendor_env, fast_retries, tmp_path
) -> None:
    emu = vendor_env
    inject_transient_faults(emu)
    emu.inject("job_failure", times=1, message="generation failed: policy 42")
    items = [{"prompt": f"Faulty batch: scene {i}", "duration": 3, "mode": "std"} for i in range(5)]
    state = await batch(
        prompts=items, max_concurrency=3, run_key="faulty-batch", output_dir=str(tmp_path), fail_on_error=False,
        return_state=True, **FAST,
    )  # fmt: skip
    result = await state.aresult()
    stats = emu.stats()
    emu.clear_faults()
    assert creates_by_prompt(emu) == Counter(i["prompt"] for i in items)
    failed = [r for r in result.records if r.status != "stored"]
    assert len(failed) == 1 and sum(r.stored for r in result.records) == 4
    bad = failed[0]
    assert bad.job_id in stats.jobs and stats.jobs[bad.job_id].status == 3
    assert "generation failed: policy 42" in (bad.error or "") and bad.job_id in (bad.error or "")
    # The failed job fails its own wait task, with the vendor's message and the job id.
    waits = [r for r in await task_runs_of(state) if r.name == f"wait-{bad.step}"]
    assert waits and all(r.state.is_failed() for r in waits)
    assert "generation failed: policy 42" in waits[0].state.message and bad.job_id in waits[0].state.message
    assert len(mp4s(tmp_path)) == 4 and not partial_files(tmp_path)
    assert stats.requests < 300, stats
    # Vendor-reported amounts (the failed job was billed too) are summed in the run's artifacts.
    billed = sum((Decimal(job.amount) for job in stats.jobs.values()), Decimal(0))
    assert sum((r.amount or Decimal(0)) for r in result.records) == billed
    artifacts = await artifacts_of(state)
    assert f"- paid in this run: vendor-reported {format_usd(billed)}," in artifacts["kling-batch-summary"].data
    rows = json.loads(artifacts["kling-batch-clips"].data)
    assert sum(Decimal(row["vendor_amount"].removeprefix("$")) for row in rows) == billed


async def test_ambiguous_create_is_not_retried_by_the_client_a_flow_retry_or_a_rerun(
    vendor_env, fast_retries, tmp_path
) -> None:
    emu = vendor_env
    emu.inject("drop_after_create", times=1)  # the vendor creates (and bills) the job, then the connection drops
    options = {"duration": 3, "mode": "std", "run_key": "ambiguous", "output_dir": str(tmp_path), **FAST}
    state = await text_to_video.with_options(retries=2, retry_delay_seconds=0)(
        "A create whose answer is lost", return_state=True, **options
    )
    assert state.is_failed()
    with pytest.raises(JobMayHaveBeenCreated) as caught:
        await state.aresult()
    assert emu.stats().create_requests == 1 and emu.stats().creates == 1  # three flow attempts, one POST
    text = str(caught.value)
    assert "may have been accepted" in text and "dashboard" in text and "resubmit_uncertain=True" in text
    summary = (await artifacts_of(state))["kling-text-to-video-summary"].data
    assert "JobMayHaveBeenCreated" in summary and "may have been" in summary

    before = emu.stats().requests
    with pytest.raises(JobMayHaveBeenCreated, match="not submitted again"):
        await text_to_video("A create whose answer is lost", **options)  # a new run with the same key
    assert emu.stats().requests == before

    result = await text_to_video("A create whose answer is lost", resubmit_uncertain=True, **options)
    assert result.records[0].status == "stored" and emu.stats().creates == 2  # the user's explicit decision


async def test_flow_retry_after_an_undocumented_status_never_creates_the_step_again(
    vendor_env, fast_retries, tmp_path
) -> None:
    emu = vendor_env
    # The first attempt sees the undocumented status on its wait and on each of its re-checks, and fails; the
    # flow retry's first query still sees it once more.
    emu.inject("unknown_status", endpoint="query", times=UNKNOWN_STATUS_RECHECKS + 2, status=9)
    state = await text_to_video.with_options(retries=1, retry_delay_seconds=0)(
        "An undocumented status", duration=3, mode="std", run_key="unknown-retry", output_dir=str(tmp_path),
        return_state=True, **FAST,
    )  # fmt: skip
    assert state.is_completed(), state
    assert emu.stats().faults_fired.get("unknown_status") == UNKNOWN_STATUS_RECHECKS + 2
    assert emu.stats().creates == 1  # the retry asked about the same job again; it had succeeded
    assert (await flow_run_of(state)).run_count == 2
    assert media.probe(tmp_path / "clip-01.mp4").frame_count == 3 * 24


# --------------------------------------------------------------------------------------------- 3. outputs


async def test_expired_result_url_fails_clearly_naming_the_job_without_hammering(
    prefect_server, fast_retries, monkeypatch, tmp_path
) -> None:
    with Emulator(time_scale=0.005, seed=3, result_ttl=0) as emu:  # every result URL is already expired
        monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
        monkeypatch.setenv("SHORTAPI_BASE_URL", emu.base_url)
        state = await text_to_video(
            "A clip fetched too late", duration=3, mode="std", run_key="expired", output_dir=str(tmp_path),
            return_state=True, **FAST,
        )  # fmt: skip
        stats = emu.stats()
    assert state.is_failed()
    with pytest.raises(ResultExpired) as caught:
        await state.aresult()
    (job_id,) = stats.jobs
    assert caught.value.job_id == job_id and job_id in str(caught.value) and "expire" in str(caught.value)
    assert stats.downloads == 1 and stats.creates == 1  # an expired URL is not retried
    assert not list(tmp_path.rglob("*.mp4")) and not partial_files(tmp_path)


# --------------------------------------------------------------------------------------------- 4. budget


async def test_budget_refuses_a_whole_batch_before_any_request(vendor_env, tmp_path) -> None:
    emu = vendor_env
    file = tmp_path / "batch.jsonl"
    file.write_text("\n".join(json.dumps({"prompt": f"budget {i}"}) for i in range(4)) + "\n")  # 4 x $0.475
    with pytest.raises(BudgetExceeded, match=r"estimated \$1\.90 for 4 job\(s\) exceeds .* by \$0\.40; nothing"):
        await batch(file=str(file), max_cost_usd=1.5, output_dir=str(tmp_path), **FAST)
    with pytest.raises(BudgetExceeded, match=r"by \$0\.475"):
        await continuation(["a", "b"], max_cost_usd=0.5, output_dir=str(tmp_path), **FAST)  # 0.475 + 0.5
    assert emu.stats().requests == 0
    assert check_budget([KlingO3TextToVideo(prompt="x")] * 4, 1.9) == Decimal("1.900")  # exactly at the budget


# --------------------------------------------------------------------------------------------- 7. hostile vendor


class Hostile(LoopbackServer):
    """A hostile vendor: create, query and file answers are set by the test."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.results: dict[str, Any] = {}  # job id -> query ``data``
        self.files: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.amount: Any = "0.213"
        self.hits: Counter[str] = Counter()
        super().__init__(self._handle)

    def _handle(self, method: str, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        if method == "POST":
            read_body(request)
            self.hits["create"] += 1
            body = {"code": 0, "data": {"job_id": self.job_ids.pop(0), "amount": self.amount}}
            answer(request, 200, json.dumps(body).encode())
        elif parts.path == "/api/v1/job/query":
            self.hits["query"] += 1
            job_id = parse_qs(parts.query)["id"][0]
            answer(request, 200, json.dumps({"code": 0, "data": {"job_id": job_id, **self.results[job_id]}}).encode())
        else:
            self.hits[parts.path] += 1
            self.files[parts.path](request)

    def succeed(self, job_id: str, url: str) -> None:
        self.job_ids.append(job_id)
        self.results[job_id] = {"status": 2, "result": {"videos": [{"url": url}]}}


def serve_bytes(data: bytes, *, length: int | None = None, status: int = 200, headers: dict[str, str] | None = None):
    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        if length is not None:
            request.send_header("Content-Length", str(length))
        else:
            request.send_header("Connection", "close")
        request.end_headers()
        try:
            request.wfile.write(data)
        except OSError:
            pass
        request.close_connection = True

    return handler


def stall(seconds: float):
    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", "1000000")
        request.end_headers()
        request.wfile.write(b"\0" * 100)
        request.wfile.flush()
        time.sleep(seconds)
        request.close_connection = True

    return handler


@pytest.fixture(scope="module")
def valid_mp4(tmp_path_factory) -> bytes:
    path = render_clip(tmp_path_factory.mktemp("mp4") / "valid.mp4", duration_s=1, seed_text="hostile")
    return path.read_bytes()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    with Hostile() as server:
        yield server


def hostile_client(base_url: str) -> ShortAPIClient:
    return ShortAPIClient(
        TEST_KEY,
        base_url,
        read_timeout=0.3,
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05),
    )


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x.mp4", "data:video/mp4;base64,AAAA", "javascript:alert(1)", "/x"]
)
async def test_result_urls_are_fetched_only_over_http(hostile, tmp_path, url) -> None:
    async with hostile_client(hostile.base_url) as client:
        with pytest.raises(DownloadFailed, match="refusing") as caught:
            await client.download(url, tmp_path / "clip.mp4", job_id="job-1")
    assert caught.value.job_id == "job-1"
    assert list(tmp_path.iterdir()) == []


async def test_downloads_are_capped_bounded_in_time_and_never_follow_redirects(hostile, valid_mp4, tmp_path) -> None:
    hostile.files["/huge-declared"] = serve_bytes(b"x" * 10, length=10**13)
    hostile.files["/huge-streamed"] = serve_bytes(b"x" * 50_000)  # no Content-Length, more than the cap
    hostile.files["/redirect"] = serve_bytes(b"", length=0, status=302, headers={"Location": "file:///etc/passwd"})
    hostile.files["/stall"] = stall(1.0)
    hostile.files["/short"] = serve_bytes(valid_mp4[:1000], length=len(valid_mp4))  # closes early: truncated
    async with hostile_client(hostile.base_url) as client:
        with pytest.raises(DownloadFailed, match=r"over the .*cap"):
            await client.download(hostile.base_url + "/huge-declared", tmp_path / "a.mp4")
        with pytest.raises(DownloadFailed, match="exceeds the 10000-byte cap"):
            await client.download(hostile.base_url + "/huge-streamed", tmp_path / "b.mp4", max_bytes=10_000)
        with pytest.raises(DownloadFailed, match="302"):
            await client.download(hostile.base_url + "/redirect", tmp_path / "c.mp4")
        with pytest.raises(VendorUnavailable):
            await client.download(hostile.base_url + "/stall", tmp_path / "d.mp4")  # read timeout, 3 attempts
        with pytest.raises(VendorUnavailable, match=r"truncated|interrupted"):
            await client.download(hostile.base_url + "/short", tmp_path / "e.mp4")
    assert hostile.hits["/stall"] == 3 and hostile.hits["/short"] == 3  # bounded retries, then a clear error
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


async def test_hostile_job_ids_amounts_and_bodies_are_contained(
    prefect_server, hostile, valid_mp4, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
    monkeypatch.setenv("SHORTAPI_BASE_URL", hostile.base_url)
    for name, value in FAST_RETRY_ENV.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    hostile.files["/ok.mp4"] = serve_bytes(valid_mp4, length=len(valid_mp4))
    hostile.files["/not-a-video.mp4"] = serve_bytes(b"<html>not a video</html>" * 20, length=480)

    # A job id made to escape the output directory and an absurd amount: the clip is stored under its step name,
    # the amount is not believed (formatting 1e999999999 with decimals would need a gigabyte).
    hostile.amount = "1e999999999"
    hostile.succeed("../../../escaped/x", hostile.base_url + "/ok.mp4")
    state = await text_to_video("Hostile one", run_key="hostile-1", output_dir=str(out), return_state=True, **FAST)
    result = await state.aresult()
    assert result.records[0].job_id == "../../../escaped/x" and result.records[0].amount is None
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.mp4")] == ["clip-01.mp4"]
    assert not list(tmp_path.rglob("escaped")) and not (tmp_path.parent / "escaped").exists()
    summary = (await artifacts_of(state))["kling-text-to-video-summary"].data
    assert "- paid in this run: vendor-reported $0.00 (1 job without a reported amount), estimated $0.475" in summary

    # A result URL that is not http(s), and a body that is not a video: the task fails naming the job, and no
    # file is left behind.
    hostile.amount = "0.2"
    hostile.succeed("job-file-url", "file:///etc/passwd")
    with pytest.raises(DownloadFailed, match=r"refusing .*\(job job-file-url\)"):
        await text_to_video("Hostile two", run_key="hostile-2", output_dir=str(tmp_path / "two"), **FAST)
    hostile.succeed("job-not-video", hostile.base_url + "/not-a-video.mp4")
    with pytest.raises(ShortAPIError, match=r"not a decodable MP4 video \(job job-not-video\)"):
        await text_to_video("Hostile three", run_key="hostile-3", output_dir=str(tmp_path / "three"), **FAST)
    assert not list((tmp_path / "two").rglob("*.mp4")) and not list((tmp_path / "three").rglob("*.mp4"))
    assert hostile.hits["create"] == 3


def test_names_from_prompts_and_ids_cannot_escape_the_output_directory(tmp_path) -> None:
    for hostile_text in ("../../etc/passwd", "/etc/passwd", "..", "a/../../b", "C:\\Windows\\x", "\x00evil", "~root"):
        name = safe_name(hostile_text)
        assert "/" not in name and "\\" not in name and ".." not in name and name not in ("", ".", "..")
        store = LocalStore(tmp_path)
        assert store.path_for(safe_key("runs", hostile_text, "clip.mp4")).is_relative_to(tmp_path.resolve())
    for key in ("../x.mp4", "a/../../x.mp4", "/etc/passwd"):
        with pytest.raises(ValueError, match="escapes"):
            LocalStore(tmp_path).path_for(key)


async def test_callback_url_is_only_passed_through(emulator, fast_client_options) -> None:
    # The package runs no callback receiver: a vendor callback can at most prompt the user to re-query the job;
    # results only ever come from job/query. The URL is passed to the vendor unchanged.
    async with ShortAPIClient(base_url=emulator.base_url, **fast_client_options) as client:
        created = await client.create_job(
            KlingO3TextToVideo(prompt="callback", duration=3, mode="std"), callback_url="https://hooks.example/k"
        )
    assert emulator.stats().jobs[created.job_id].callback_url == "https://hooks.example/k"
