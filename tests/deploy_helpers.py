"""Helpers for tests/test_deployments.py: the repository's prefect.yaml, and a real `prefect server start` with
CLI subprocesses (deploy, setup, workers) pointed at it.

Every subprocess gets the server's PREFECT_API_URL and its own PREFECT_HOME, offline settings, and the vendor
(emulator) environment it is given; nothing is shared with the test session's own Prefect harness.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
KLING_PREFECT = str(BIN / "kling-prefect")

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def load_prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployments_by_name() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in load_prefect_yaml()["deployments"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no output file {path})"


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess on 127.0.0.1 with its own PREFECT_HOME.

    Its database is a SQLite file in that home, or the one at ``database_url`` (a SQLAlchemy URL such as
    ``postgresql+asyncpg://user@host:port/db``, given to the server as PREFECT_API_DATABASE_CONNECTION_URL;
    the server migrates it on start). ``startup_seconds`` is how long :meth:`start` waited for /api/health.
    With ``ui=True`` the server also serves both web UIs (classic at ``/``-paths, the new one under ``/v2/``),
    told to call this server's API rather than the default port 4200.
    """

    home: Path
    port: int
    database_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    ui: bool = False
    startup_seconds: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a CLI or worker talking to this server (no vendor settings unless in ``extra``)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")}
        env.pop("SHORTAPI_KEY", None)
        env.pop("SHORTAPI_BASE_URL", None)
        env.update(OFFLINE_ENV)
        env.update(
            {
                "PREFECT_HOME": str(self.home / "client"),
                "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "client" / "storage"),
                "PREFECT_API_URL": self.api_url,
            }
        )
        env.update(extra or {})
        return env

    def start(self, timeout: float = 120.0) -> PrefectServer:
        env = self.env()
        env["PREFECT_HOME"] = str(self.home / "server")
        # The schedules must be *held* by the server, but no scheduled run may be created while tests run:
        # a worker would pick it up with the (production) default parameters.
        env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        args = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.ui:
            # The test session disables the UI globally; without PREFECT_UI_API_URL the UI's JavaScript would call
            # port 4200 and show "Can't connect to Server API".
            env["PREFECT_SERVER_UI_ENABLED"] = "true"
            env["PREFECT_UI_API_URL"] = self.api_url
        else:
            args.append("--no-ui")
        args.append("--analytics-off")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                args,
                env=env,
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        began = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}:\n{tail(self.log)}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - began
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server did not answer /api/health within {timeout} s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def run_command(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path = REPO, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a CLI to completion; raise with its output when it fails."""
    done = subprocess.run(list(args), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n"
            f"--- stderr\n{done.stderr[-4000:]}"
        )
    return done


def start_worker(
    pool: str,
    env: Mapping[str, str],
    log: Path,
    *,
    work_queue: str | None = None,
    run_once: bool = True,
    name: str | None = None,
    limit: int | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen[bytes]:
    """`prefect worker start` in its own process group, in ``cwd`` (default: the repository).

    Args:
        run_once: poll once, run what was found, exit when those runs ended (``--run-once``); otherwise the
            worker polls until stopped (:func:`stop_worker`).
        name: the worker's name (``--name``), which it puts on the flow runs it takes
            (label ``prefect.worker.name``).
        limit: at most this many flow runs at once (``--limit``).
    """
    args = [PREFECT, "worker", "start", "--pool", pool]
    if run_once:
        args.append("--run-once")
    if work_queue:
        args += ["--work-queue", work_queue]
    if name:
        args += ["--name", name]
    if limit is not None:
        args += ["--limit", str(limit)]
    with log.open("wb") as out:
        return subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_worker(process: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the worker's own process group: it and its flow runs
        process.wait(timeout=10)
        raise AssertionError(f"worker did not finish within {timeout} s:\n{tail(log)}") from None
    assert process.returncode == 0, f"worker exited with {process.returncode}:\n{tail(log)}"


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop a polling worker (and anything left in its process group): SIGINT as Ctrl-C would, then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def redis_server(folder: Path, timeout: float = 20.0, *, password: str | None = None) -> Iterator[str]:
    """A real ``redis-server`` on a free loopback port, no persistence; yields its ``redis://`` URL.

    ``password``: the server requires it (``--requirepass``) and the URL carries it.

    Raises:
        FileNotFoundError: redis-server is not installed (Debian: ``apt-get install redis-server``).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    import redis

    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder)] + (["--requirepass", password] if password else [])
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.1)
        yield f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
