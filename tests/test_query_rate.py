"""One query rate for the whole account: the process's query cap also keeps to a Prefect rate limit, when it exists.

Real worker processes (``benchmarks/bench_shared_rate.py worker``) waiting on their jobs at one emulator over
HTTP, a real Prefect server (the session's), the emulator's own record of when each query came; in-process, a
cap used from several threads and event loops, and a loopback proxy in front of the Prefect server that goes
away and comes back.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kling_prefect.concurrency import setup_limits
from kling_prefect.emulator import Emulator
from kling_prefect.waiting import DEFAULT_QUERY_RATE_LIMIT, QueryCap, querycap, shared_burst

from .conftest import TEST_KEY
from .helpers import CLI, max_in_window

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_shared_rate.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_shared_rate", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmark()


async def _delete_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.delete_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass


async def _read_limit(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_global_concurrency_limit_by_name(name)


@pytest.fixture
async def query_limit(prefect_server: None) -> AsyncIterator[str]:
    """A shared query rate of 10 a second (burst 5) under a name of this test's own, removed afterwards (the
    session's other tests, whose caps look for the default name, never see it)."""
    name = f"test-queries-{uuid.uuid4().hex[:8]}"
    lines = await setup_limits(max_queries_per_second=10, query_limit_name=name)
    assert any(name in line and "10 job queries per second" in line and "burst 5" in line for line in lines), lines
    try:
        yield name
    finally:
        await _delete_limit(name)


# ------------------------------------------------------------------------------- processes sharing one rate


def test_three_processes_keep_to_one_shared_query_rate(query_limit: str, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    rate, burst, jobs = 10, shared_burst(10), 15
    rng = random.Random(5)
    env = {
        **os.environ,  # SHORTAPI_MAX_QUERIES_PER_SECOND=2000 (conftest): each process's own cap is no bound here
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_QUERY_RATE_LIMIT": query_limit,
    }
    assert env["SHORTAPI_MAX_QUERIES_PER_SECOND"] == "2000"
    # Jobs of 5-7 s polled every 50 ms once they may be done: the waits want far more than 10 queries a second.
    with Emulator(time_scale=1.0, seed=5, job_time=lambda model, args: rng.uniform(5, 7)) as emulator:
        env["SHORTAPI_BASE_URL"] = emulator.base_url
        workers = bench.start_workers(3, jobs, env, tmp_path, min_interval=0.05)
        results = bench.run_workers(workers, tmp_path / "go", timeout=300)
        stats = emulator.stats()
    assert sum(r["succeeded"] for r in results) == 3 * jobs, [r["states"] for r in results]
    busiest = max_in_window(stats.query_times, 5.0)
    assert stats.queries > 5 * rate + burst  # more queries than one window allows: the bound below means something
    assert busiest <= 5 * rate + burst, busiest
    for result in results:
        cap = result["cap"]
        assert cap["shared"] == "shared" and cap["shared_limit"] == query_limit, cap
        assert cap["shared_tokens"] >= cap["granted"]  # every query of every process took a token of the limit
        assert cap["shared_takes"] * 2 <= cap["shared_tokens"]  # a few at a time, not a Prefect call a query
    for _, log in workers:
        assert f"sharing the Prefect rate limit {query_limit!r}" in log.read_text()
    print(f"3 x {jobs} jobs: {stats.queries} queries, busiest 5 s window {busiest} (bound {5 * rate + burst})")


# ------------------------------------------------------------------- one process: threads, loops, an outage


class _Proxy:
    """A loopback TCP proxy to ``upstream`` that can be stopped (listener and every connection closed) and started
    again on the same port: a Prefect server that goes away and comes back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [*sockets, *([listener] if listener else [])]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxied_api(prefect_server: None) -> Iterator[_Proxy]:
    """The session's Prefect API behind a :class:`_Proxy`, as ``PREFECT_API_URL`` for this test."""
    from urllib.parse import urlsplit

    from prefect.settings import PREFECT_API_URL, temporary_settings

    upstream = urlsplit(str(PREFECT_API_URL.value()))
    proxy = _Proxy((upstream.hostname or "127.0.0.1", upstream.port or 80))
    proxy.start()
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{proxy.port}{upstream.path}"}):
            yield proxy
    finally:
        proxy.stop()


def _acquire_from_threads(cap: QueryCap, threads: int, each: int) -> list[float]:
    """``each`` queries from each of ``threads`` threads, every thread with an event loop of its own (as
    ``kling_prefect.dispatch`` runs sync callers' coroutines); the times they were let go."""
    granted: list[float] = []
    lock = threading.Lock()

    async def many() -> None:
        async def one() -> None:
            await cap.acquire(0.5)
            with lock:
                granted.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(each)))

    # Each thread runs in a copy of this context: the test's Prefect settings (the proxy) are a context variable.
    workers = [
        threading.Thread(target=contextvars.copy_context().run, args=(asyncio.run, many())) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return granted


async def test_a_cap_shares_the_rate_from_threads_and_loops_and_keeps_its_own_while_the_server_is_away(
    proxied_api: _Proxy, query_limit: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="kling_prefect.waiting")
    monkeypatch.setattr(querycap, "PREFECT_TIMEOUT", 1.0)  # an unanswered call counts as an outage after 1 s
    monkeypatch.setattr(querycap, "RETRY_UNREACHABLE", 0.5)
    cap = QueryCap(rate=1000, shared_limit=query_limit)  # its own cap is no bound: the shared 10 a second is
    granted = await asyncio.to_thread(_acquire_from_threads, cap, 3, 12)
    stats = cap.stats()
    assert len(granted) == 36 and stats["shared"] == "shared", stats
    assert max_in_window(granted, 2.0) <= 2 * 10 + 5, granted  # 2 s of the rate, plus the burst
    assert stats["shared_tokens"] >= 36 and stats["shared_takes"] < 36

    proxied_api.stop()  # the Prefect server goes away: queries go on under the process's own cap
    await asyncio.gather(*(cap.acquire() for _ in range(30)))
    assert cap.stats()["shared"] == "local"
    await asyncio.sleep(0.6)
    await asyncio.gather(*(cap.acquire() for _ in range(10)))  # looked at again: still away, no second warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "did not answer" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "**" not in warnings[0].getMessage()  # nothing secret-looking, and no traceback

    proxied_api.start()  # back: the next look finds the limit again
    await asyncio.sleep(0.6)

    async def shared_again() -> bool:
        await cap.acquire()
        return bool(cap.stats()["shared"] == "shared")

    deadline = time.monotonic() + 30
    while not await shared_again():
        assert time.monotonic() < deadline, cap.stats()
        await asyncio.sleep(0.1)
    sharing = [r for r in caplog.records if "sharing the Prefect rate limit" in r.getMessage()]
    assert len(sharing) == 2  # on the first look, and again after the outage


async def test_a_limit_removed_while_processes_run_leaves_each_its_own_cap(query_limit: str) -> None:
    cap = QueryCap(rate=1000, shared_limit=query_limit)
    await asyncio.gather(*(cap.acquire() for _ in range(8)))
    assert cap.stats()["shared"] == "shared"
    await _delete_limit(query_limit)
    await asyncio.gather(*(cap.acquire() for _ in range(40)))  # the first take finds it gone: not stuck
    stats = cap.stats()
    assert stats["shared"] == "local" and stats["granted"] == 48, stats


# ----------------------------------------------------------------------------------------- no shared limit


async def test_without_a_prefect_api_the_cap_is_the_process_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        cap = QueryCap(rate=20, shared_limit=DEFAULT_QUERY_RATE_LIMIT)
        granted: list[float] = []
        for _ in range(15):
            await cap.acquire()
            granted.append(time.monotonic())
        assert cap.stats()["shared"] == "local"
        assert max_in_window(granted, 0.5) <= 0.5 * 20 + 1  # still 20 a second: the process's own cap
        free = QueryCap(rate=None, shared_limit=DEFAULT_QUERY_RATE_LIMIT)  # no cap of its own, no limit: none
        await asyncio.gather(*(free.acquire() for _ in range(200)))
        assert free.stats()["granted"] == 200 and free.stats()["shared"] == "local"


async def test_an_unreachable_prefect_api_is_one_warning_and_the_process_own_cap(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    monkeypatch.setattr(querycap, "RETRY_UNREACHABLE", 0.2)
    caplog.set_level(logging.DEBUG, logger="kling_prefect.waiting")

    def messages() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "did not answer" in r.getMessage()]

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        cap = QueryCap(rate=200, shared_limit="kling-job-queries-test")
        rounds = 0
        while len(messages()) < 3:  # looked at again and again (each look takes httpx's connect retries)
            await asyncio.gather(*(cap.acquire() for _ in range(20)))
            rounds += 1
            assert rounds < 200, messages()
            await asyncio.sleep(0.1)
    assert cap.stats()["shared"] == "local" and cap.stats()["granted"] == 20 * rounds
    assert [r.levelno for r in messages()] == [logging.WARNING] + [logging.DEBUG] * (len(messages()) - 1)


def test_the_burst_is_half_a_second_of_the_rate_from_1_to_5() -> None:
    assert [shared_burst(r) for r in (0.1, 1, 2, 3, 10, 100)] == [1, 1, 1, 2, 5, 5]
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            shared_burst(bad)


@pytest.mark.parametrize("bad", [0, -2, float("inf")])
async def test_setup_refuses_a_rate_that_is_not_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="max_queries_per_second"):
        await setup_limits(max_queries_per_second=bad)


async def test_setup_refuses_one_name_for_two_limits() -> None:
    with pytest.raises(ValueError, match="name of its own"):
        await setup_limits(max_queries_per_second=10, query_limit_name="kling-jobs-in-flight")


# --------------------------------------------------------------------------------------------------- the CLI


def test_setup_makes_the_shared_query_rate(prefect_server: None, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    try:
        done = subprocess.run(
            [CLI, "setup", "--max-queries-per-second", "10"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [line for line in done.stdout.splitlines() if DEFAULT_QUERY_RATE_LIMIT in line]
        assert len(lines) == 1 and "10 job queries per second" in lines[0] and "burst 5" in lines[0], done.stdout
        limit = asyncio.run(_read_limit(DEFAULT_QUERY_RATE_LIMIT))
        assert (limit.slot_decay_per_second, limit.limit, limit.active) == (10.0, 5, True)
        again = subprocess.run(
            [CLI, "setup", "--max-queries-per-second", "4"], capture_output=True, text=True, timeout=300, env=env
        )
        assert again.returncode == 0 and f"{DEFAULT_QUERY_RATE_LIMIT!r} updated: 4 job queries" in again.stdout
        limit = asyncio.run(_read_limit(DEFAULT_QUERY_RATE_LIMIT))
        assert (limit.slot_decay_per_second, limit.limit) == (4.0, 2)
    finally:
        asyncio.run(_delete_limit(DEFAULT_QUERY_RATE_LIMIT))  # the session's other tests must not share it
