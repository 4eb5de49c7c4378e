"""One create per step, whoever runs it at once: step leases (files, Redis) under the submit task.

Real processes running a user's own flow (``tests/lease_run_flow.py``) against an emulator over HTTP whose creates
answer slowly, one Prefect server, one result storage, and a real ``redis-server`` for the Redis leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kling_prefect.emulator import Emulator
from kling_prefect.exceptions import LeaseUnavailable
from kling_prefect.leases import step_lease

from .conftest import TEST_KEY
from .deploy_helpers import free_port, redis_server
from .helpers import wait_until

RUNNER = Path(__file__).with_name("lease_run_flow.py")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port (skipped when redis-server is not installed)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def slow_emulator() -> Iterator[Emulator]:
    """An emulator of this test's own (a create still sleeping when the test ends cannot count in another)."""
    with Emulator(time_scale=0.005, seed=11, timing_jitter=0.0) as emu:
        yield emu


# ------------------------------------------------------------------------------------ the leases themselves


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_a_second_holder_waits_until_the_first_releases(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    order: list[str] = []
    waited: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with step_lease(
            "kling-lease-test",
            lease_url=url,
            directory=tmp_path,
            lease_seconds=1.0,
            on_wait=lambda: waited.append(name),
        ):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    first = asyncio.create_task(hold("a", 1.5))  # longer than the Redis lease: the heartbeat keeps it
    await asyncio.sleep(0.2)
    await hold("b", 0.0)
    await first
    assert order == ["a in", "a out", "b in", "b out"]
    assert waited == ["b"]


async def test_a_file_lease_leaves_no_file_and_an_attempt_that_opened_the_removed_one_waits_its_turn(
    tmp_path: Path,
) -> None:
    """The holder removes its file as it lets go. An attempt that opened it before then must not take the lease
    on that removed file while a newcomer holds the lease on the new file at the same path."""
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    a_may_go = asyncio.Event()
    c_may_go = asyncio.Event()

    async def hold(name: str, until: asyncio.Event | None = None) -> None:
        async with step_lease("kling-lease-test", lease_url=None, directory=tmp_path):
            inside.append(name)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            if until is not None:
                await until.wait()
            else:
                await asyncio.sleep(0.3)  # several of B's tries (every 0.02-0.2 s) fall while C holds
            inside.remove(name)

    a = asyncio.create_task(hold("a", a_may_go))
    await asyncio.sleep(0.05)
    b = asyncio.create_task(hold("b"))  # opens a's file and waits for its lock
    await asyncio.sleep(0.3)
    assert inside == ["a"]
    a_may_go.set()
    await a  # a removed its file and let go; c comes at once, before b's next try, and makes a new file
    c = asyncio.create_task(hold("c", c_may_go))
    await asyncio.sleep(0.3)
    assert inside == ["c"]  # b got the lock of the removed file, saw it, and waits for c's
    c_may_go.set()
    await asyncio.gather(b, c)
    assert overlaps == [] and inside == []
    assert list(tmp_path.iterdir()) == []  # no lease file is left behind


async def test_an_unreachable_redis_raises_before_anything_is_sent(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(LeaseUnavailable, match="nothing was sent"):
        async with step_lease("kling-lease-test", lease_url=url, directory=tmp_path):
            pytest.fail("the body ran without a lease")


# ---------------------------------------------------------------------------- processes starting one step


def _env(emu: Emulator, tmp_path: Path, index: int, lease_url: str | None) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        # One result storage for every process (the ledger and the file leases); a Prefect home and a working
        # folder of each process's own.
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "PREFECT_HOME": str(tmp_path / f"home-{index}"),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_BASE_URL": emu.base_url,
        "SHORTAPI_READ_TIMEOUT": "30",
        "SHORTAPI_LEASE_SECONDS": "2",
    }
    env.pop("SHORTAPI_LEASE_URL", None)
    if lease_url:
        env["SHORTAPI_LEASE_URL"] = lease_url
    return env


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """A test that failed with its processes still running must not leave them holding a step's lease for the
    next test (the same run key)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _start(
    emu: Emulator, tmp_path: Path, index: int, go: Path, lease_url: str | None
) -> tuple[subprocess.Popen[bytes], Path]:
    workdir = tmp_path / f"worker-{index}"
    workdir.mkdir()
    log = tmp_path / f"worker-{index}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(RUNNER), str(go), "same-key-1", "Lease test: a heron lifts off the reeds"],
            env=_env(emu, tmp_path, index, lease_url),
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    _STARTED.append(process)
    return process, log


def _exit_code(process: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The process's exit status; a process still running after ``timeout`` fails the test with its log."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout:g} s; its log ends:\n{_text(log)[-3000:]}")


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


def _outcome(log: Path) -> dict[str, Any]:
    lines = [line for line in _text(log).splitlines() if line.startswith("{")]
    assert lines, _text(log)[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _ready(log: Path) -> bool:
    return "ready" in _text(log).splitlines()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_three_processes_starting_one_step_make_one_job_and_all_return_its_clip(
    prefect_server: None, slow_emulator: Emulator, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    lease_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    slow_emulator.inject("slow", endpoint="create", delay=6.0)  # the create answers in 6 s
    go = tmp_path / "go"
    workers = [_start(slow_emulator, tmp_path, i, go, lease_url) for i in range(3)]
    wait_until(lambda: all(_ready(log) for _, log in workers), timeout=120)
    go.touch()  # all three start the step within milliseconds
    for process, log in workers:
        assert _exit_code(process, log, 180) == 0, _text(log)[-3000:]
    outcomes = [_outcome(log) for _, log in workers]
    stats = slow_emulator.stats()
    assert stats.create_requests == 1
    assert stats.creates == 1
    assert len({o["job_id"] for o in outcomes}) == 1
    assert sorted(o["resumed"] for o in outcomes) == [False, True, True]
    # The others waited for the first one's create instead of failing (exit 0 above); on busy cores one may reach
    # the step only after the create was answered, and then resume the ledger's job without waiting.
    waited = [log for _, log in workers if "waiting for its outcome" in _text(log)]
    assert 1 <= len(waited) <= 2
    for outcome in outcomes:
        assert outcome["uri"].endswith("/kling-output/same-key-1/clip.mp4")


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_holder_killed_mid_create_releases_the_step_and_the_waiters_refuse_to_pay_again(
    prefect_server: None, slow_emulator: Emulator, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    lease_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    slow_emulator.inject("slow", endpoint="create", delay=60.0)  # the create never answers in time
    first_go, then_go = tmp_path / "go-holder", tmp_path / "go-waiters"
    holder = _start(slow_emulator, tmp_path, 0, first_go, lease_url)
    waiters = [_start(slow_emulator, tmp_path, i, then_go, lease_url) for i in (1, 2)]
    wait_until(lambda: all(_ready(log) for _, log in [holder, *waiters]), timeout=120)
    first_go.touch()
    wait_until(lambda: slow_emulator.stats().create_requests == 1, timeout=120)  # the holder's create is out
    then_go.touch()
    wait_until(lambda: all("waiting for its outcome" in _text(log) for _, log in waiters), timeout=120)
    holder[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    holder[0].wait(timeout=30)
    ended: list[float] = []
    for process, log in waiters:
        assert _exit_code(process, log, 120) == 1, _text(log)[-3000:]
        ended.append(time.monotonic() - killed_at)
    for _, log in waiters:
        outcome = _outcome(log)
        assert outcome["error"] == "JobMayHaveBeenCreated", outcome
        assert "may have been accepted" in outcome["message"]
    assert slow_emulator.stats().create_requests == 1  # nobody sent a second create
    print(f"{backend} lease: waiters refused {', '.join(f'{s:.1f}' for s in ended)} s after the holder's SIGKILL")
