"""A Prefect API for the command's flows: the configured server (checked first), or Prefect's temporary one.

Without ``PREFECT_API_URL``, Prefect starts a temporary local server the first time a flow needs one, and
gives it 20 s (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``) to answer. A new ``PREFECT_HOME``
migrates a new database first; on two busy cores that took 25-70 s (``benchmarks/bench_first_run.py``), so
first runs failed. :func:`prefect_api` starts that same server up front (Prefect's flows then use it):

- with :data:`STARTUP_TIMEOUT` seconds to answer, unless the user set the timeout (their setting wins);
- failing at once, with the server's last log line, when the server process exits instead;
- one start at a time per ``PREFECT_HOME`` (two first runs would both migrate one SQLite file);
- its output in ``$PREFECT_HOME/kling-prefect/temporary-server.log``, not on the terminal (``-v`` shows it);
- stopped when the command ends, after the run's logs and events are sent.

Examples:
    ```python
    from kling_prefect.cli.server import prefect_api

    with prefect_api(verbose=False, status=print) as api:
        api.temporary  # True without PREFECT_API_URL
    ```
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kling_prefect.cli.errors import Failure

__all__ = ["STARTUP_TIMEOUT", "PrefectApi", "prefect_api", "startup_timeout"]

#: Seconds the temporary server gets to answer when the user did not set
#: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``. A server that dies is reported at once, so a long
#: limit only ever waits for a server that is still working.
STARTUP_TIMEOUT = 300
TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
LOG_NAME = "temporary-server.log"
PORT_IN_USE = 3  # the exit code Prefect's server uses to ask for another port


@dataclass(frozen=True)
class PrefectApi:
    """Where the command's flows report to.

    Attributes:
        api_url: the Prefect API URL.
        temporary: Prefect's temporary local server (its database stays in ``PREFECT_HOME``), not a server
            the user runs.
        startup_seconds: how long the temporary server took to answer (0 for the user's server).
    """

    api_url: str
    temporary: bool
    startup_seconds: float = 0.0


def startup_timeout() -> tuple[int, bool]:
    """The start-up timeout of the temporary server, and whether the user set it (then it is theirs)."""
    from prefect.settings import get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return int(ephemeral.startup_timeout_seconds), True
    return STARTUP_TIMEOUT, False


@contextlib.contextmanager
def prefect_api(*, verbose: bool, status: Callable[[str], None]) -> Iterator[PrefectApi]:
    """A working Prefect API for the block: the configured one, else Prefect's temporary server (started here,
    stopped on the way out). Raises :class:`~kling_prefect.cli.errors.Failure` with the fix when there is none.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    configured = PREFECT_API_URL.value()
    if configured:
        _check_reachable(str(configured))
        try:
            yield PrefectApi(api_url=str(configured), temporary=False)
        finally:
            _send_pending()
        return
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        raise Failure(
            "there is no Prefect API: PREFECT_API_URL is unset and the temporary server is turned off",
            "run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    server, seconds = _start_temporary(verbose=verbose, status=status)
    try:
        yield PrefectApi(api_url=server.api_url, temporary=True, startup_seconds=seconds)
    finally:
        _send_pending()
        server.stop()


def _check_reachable(api_url: str) -> None:
    import httpx

    last: Exception | None = None
    for attempt in range(3):
        try:
            httpx.get(api_url.rstrip("/") + "/health", timeout=10)
            return
        except httpx.TransportError as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise Failure(
        f"cannot reach the Prefect API at {api_url} (PREFECT_API_URL; {type(last).__name__})",
        "start that server (`prefect server start`), or unset PREFECT_API_URL to use a temporary local one",
    )


def _send_pending() -> None:
    """Send the run's queued logs and events while the API is still there (Prefect would at exit)."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush(APILogHandler())
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)


def _log_path() -> Path:
    from prefect.settings import get_current_settings

    folder = Path(get_current_settings().home) / "kling-prefect"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOG_NAME


@contextlib.contextmanager
def _one_start_at_a_time(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``: two temporary servers must not migrate one new database."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, as before
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _stdio_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` while a child process is spawned (it inherits them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def _server_class(log: Path | None) -> type[Any]:
    from prefect.server.api.server import SubprocessASGIServer

    if log is None:
        return SubprocessASGIServer
    target: Path = log

    class LoggedServer(SubprocessASGIServer):
        """Prefect's temporary server, writing its output to a log file instead of the terminal."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            with _stdio_to(target):
                return super()._run_uvicorn_command()

    return LoggedServer


def _last_lines(path: Path | None, count: int = 1) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def _start_temporary(*, verbose: bool, status: Callable[[str], None]) -> tuple[Any, float]:
    """Start Prefect's temporary server (the one Prefect's own clients use), watching it, or fail in one line."""
    from prefect.server.api.server import SubprocessASGIServer

    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None and existing.running:
        return existing, 0.0
    timeout, users = startup_timeout()
    log = None if verbose else _log_path()
    if log is not None:
        log.write_text("")
    status(
        "starting Prefect's temporary server (a new PREFECT_HOME first creates its database: 15-60 s on a busy machine)"
    )
    server = _server_class(log)()  # registered as the instance Prefect's clients look up
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=timeout)
        except BaseException as exc:  # reported by the watching thread
            outcome.append(exc)

    started = time.monotonic()
    lock = (log or _log_path()).with_name("temporary-server.lock")
    try:
        with _one_start_at_a_time(lock):
            thread = threading.Thread(target=start, name="prefect-temporary-server", daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
                process = server.server_process
                code = process.poll() if process is not None else None
                if code is not None and code != PORT_IN_USE:
                    raise Failure(
                        f"Prefect's temporary server exited with code {code} while starting"
                        + (f": {_last_lines(log)}" if log else ""),
                        f"see {log}" if log else "see its output above",
                    )
    except BaseException:
        server.stop()
        raise
    if outcome:
        server.stop()
        error = outcome[0]
        if "Timed out" in str(error):
            # Prefect counts its limit in steps of sleeping, so a loaded machine waits longer than it says.
            setting = f"your {TIMEOUT_SETTING}={timeout}" if users else f"{TIMEOUT_SETTING}={timeout}"
            raise Failure(
                f"Prefect's temporary server did not answer after {time.monotonic() - started:.0f} s ({setting})",
                f"raise {TIMEOUT_SETTING}, or run `prefect server start` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api" + (f" (server log: {log})" if log else ""),
            )
        raise error
    return server, time.monotonic() - started
