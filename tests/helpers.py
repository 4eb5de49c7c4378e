"""Helpers shared by the tests: what Prefect holds about a run, the emulator's view, the CLI, tiny HTTP servers."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from kling_prefect import media
from kling_prefect.emulator import Emulator

#: The console script, run as a user runs it.
CLI = shutil.which("kling-prefect") or str(Path(sys.executable).with_name("kling-prefect"))


# --------------------------------------------------------------------------------------------- Prefect


def _run_filter(state: Any) -> FlowRunFilter:
    return FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))


async def flow_run_of(state: Any) -> Any:
    """The flow run a returned state belongs to, read back through the Prefect API."""
    async with get_client() as client:
        return await client.read_flow_run(state.state_details.flow_run_id)


async def task_runs_of(state: Any) -> list[Any]:
    """The task runs of a flow run, read back through the Prefect API."""
    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=_run_filter(state))


async def artifacts_of(state: Any) -> dict[str, Any]:
    """Every keyed artifact of a flow run (by key), read back through the Prefect API."""
    async with get_client() as client:
        found = await client.read_artifacts(flow_run_filter=_run_filter(state))
    return {a.key: a for a in found if a.key}


async def all_artifacts_of(state: Any) -> list[Any]:
    """Every artifact of a flow run, keyed or not (the progress artifacts of its jobs included)."""
    async with get_client() as client:
        return list(await client.read_artifacts(flow_run_filter=_run_filter(state)))


# --------------------------------------------------------------------------------------------- the vendor's view


def creates_by_prompt(emulator: Emulator) -> Counter[str]:
    """How many jobs the emulator created per prompt."""
    return Counter(str(job.args.get("prompt", "")) for job in emulator.stats().jobs.values())


def inject_when(emulator: Emulator, ready: Callable[[], bool], fault: str, **params: Any) -> threading.Thread:
    """Inject ``fault`` as soon as ``ready()`` holds (checked every 5 ms, for at most 60 s)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        emulator.inject(fault, **params)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------- files and pictures


def shots(*durations: int) -> list[dict[str, Any]]:
    """A ``multi_prompt`` of shots with these durations."""
    return [{"prompt": f"shot {i}", "duration": d} for i, d in enumerate(durations)]


def mean_abs_diff(a: Any, b: Any) -> float:
    """Mean absolute difference of two RGB frames on 0-255 (the package's own measure)."""
    return media.mean_abs_diff(a, b)


def partial_files(root: Path) -> list[Path]:
    """Temporary files left behind (a write that was not completed)."""
    return [p for p in root.rglob("*") if ".part" in p.name]


def mp4s(root: Path) -> list[Path]:
    """Every MP4 under ``root`` (the download area excluded), each checked to decode."""
    videos = sorted(p for p in root.rglob("*.mp4") if ".downloads" not in p.parts)
    for video in videos:
        assert media.is_decodable_mp4(video), video
    return videos


# --------------------------------------------------------------------------------------------- the CLI


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``kling-prefect ARGS`` in a subprocess (this interpreter), output captured as text."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=merged, cwd=cwd, check=False
    )


def run_cli_in_pty(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240, columns: int = 120
) -> tuple[int, str, str]:
    """``kling-prefect ARGS`` with stderr on a pseudo terminal (``columns`` wide), as in a user's shell; stdout is
    a pipe. Returns (exit status, stdout, everything the terminal received, escape codes included)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    merged = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [CLI, *args], stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL, env=merged
    )
    os.close(follower)
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every writer has exited
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(10)
        os.close(leader)
    return process.returncode, out.decode(), b"".join(received).decode(errors="replace")


def screen_text(terminal: str) -> str:
    """What a terminal shows of ``terminal`` output, roughly: escape codes removed, carriage returns as lines."""
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------------------------- tiny HTTP servers


Handler = Callable[[BaseHTTPRequestHandler], None]


def answer(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "application/json") -> None:
    """Send a complete HTTP/1.1 answer with a length."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def read_body(request: BaseHTTPRequestHandler) -> bytes:
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))


class LoopbackServer:
    """A real HTTP/1.1 server on 127.0.0.1 whose answers a test scripts: ``handle(method, request)``.

    Used as a hostile or echoing vendor, a callback sink, a file host: anything a test needs that the
    emulator cannot be.
    """

    def __init__(self, handle: Callable[[str, BaseHTTPRequestHandler], None]) -> None:
        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                handle("GET", self)

            def do_POST(self) -> None:
                handle("POST", self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serving(handle: Callable[[str, BaseHTTPRequestHandler], None]) -> Iterator[LoopbackServer]:
    """A fixture body: the server for the test, closed after it."""
    with LoopbackServer(handle) as server:
        yield server


@contextmanager
def captured_lines(logger_name: str) -> Iterator[list[str]]:
    """The messages logged to ``logger_name`` (``prefect.task_runs``: every task run's log) while in the block,
    whether or not the logger propagates to the root."""
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, logger = Lines(), logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` (seconds) in any half-open window ``[t, t + window)``."""
    ordered, most, start = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
