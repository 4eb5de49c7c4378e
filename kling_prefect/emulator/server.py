"""Running the ShortAPI emulator: in a background thread (:class:`Emulator`) or in the foreground (:func:`run`).

Examples:
    ```python
    from kling_prefect.emulator import Emulator

    with Emulator(time_scale=0.01, seed=1) as emu:
        ...  # point a client at emu.base_url with any bearer key
        emu.inject("rate_limit", endpoint="create", times=2, retry_after=0)
        print(emu.stats().creates)
    ```
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from kling_prefect.emulator.app import EmulatorApp, EmulatorConfig, JobTime
from kling_prefect.emulator.jobs import Stats

T = TypeVar("T")

READY_PREFIX = "ShortAPI emulator listening on"
_START_TIMEOUT = 30.0


def _make_config(
    workdir: str | Path | None,
    **settings: Any,
) -> tuple[EmulatorConfig, Path | None]:
    """The config, and the temporary workdir to delete afterwards (``None`` when the caller gave one)."""
    owned = None
    if workdir is None:
        owned = Path(tempfile.mkdtemp(prefix="shortapi-emulator-"))
        workdir = owned
    config = EmulatorConfig(workdir=Path(workdir), **settings)
    config.validate()
    return config, owned


class Emulator:
    """A real HTTP server emulating ShortAPI's job API for Kling models, run on a background thread.

    Args:
        host, port: where to listen (``port=0`` picks a free port; see :attr:`port` after :meth:`start`).
        time_scale: multiplies every job duration and the result URL lifetime (tests use 0.005-0.02).
        api_key: accept only this bearer key (default: any non-empty key).
        seed: seeds job-time jitter, random failures and fault probabilities.
        timing_jitter: sigma of the log-normal factor applied to table job times.
        fail_rate: probability that a created job ends with status 3.
        result_ttl: seconds (before ``time_scale``) a result URL stays valid after its job finished.
        result_padding_bytes: append an MP4 ``free`` box of this size to every served result (0: none).
        job_time: ``(model_id, args) -> seconds`` (before ``time_scale``, no jitter) overriding the table.
        account_concurrency: the account's concurrency rule, off by default: at most this many jobs running at
            once (each from submission until it ends); a create over it is refused with HTTP 429, code 1303,
            "parallel task over resource pack limit", and makes no job (``Stats.account_refusals``).
        workdir: where rendered results and fetched images go (default: a temp dir removed on stop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        time_scale: float = 1.0,
        api_key: str | None = None,
        seed: int | None = None,
        timing_jitter: float = 0.25,
        fail_rate: float = 0.0,
        result_ttl: float = 3600.0,
        result_padding_bytes: int = 0,
        job_time: JobTime | None = None,
        account_concurrency: int | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._workdir = workdir
        self._settings: dict[str, Any] = {
            "time_scale": time_scale,
            "api_key": api_key,
            "seed": seed,
            "timing_jitter": timing_jitter,
            "fail_rate": fail_rate,
            "result_ttl": result_ttl,
            "result_padding_bytes": result_padding_bytes,
            "job_time": job_time,
            "account_concurrency": account_concurrency,
        }
        EmulatorConfig(**self._settings).validate()  # fail fast, before any thread or directory exists
        self._app: EmulatorApp | None = None
        self._owned_workdir: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._port if self._port is not None else self._requested_port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` to reach the emulator (wildcard hosts shown as loopback)."""
        if self._app is None or not self._app.base_url:
            raise RuntimeError("the emulator is not started")
        return self._app.base_url

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Emulator:
        """Start serving on a daemon thread; returns once listening."""
        if self.running:
            return self
        config, self._owned_workdir = _make_config(self._workdir, **self._settings)
        self._app = EmulatorApp(config)
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(self._app, started), name=f"shortapi-emulator-{id(self):x}", daemon=True
        )
        self._thread.start()
        try:
            self._port = started.result(timeout=_START_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            self._cleanup_workdir()
            raise
        return self

    def _serve(self, app: EmulatorApp, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                port = loop.run_until_complete(app.start(self.host, self._requested_port))
            except BaseException as exc:
                started.set_exception(exc)
                return
            self._loop = loop
            started.set_result(port)
            loop.run_forever()
            loop.run_until_complete(app.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            self._loop = None
            loop.close()

    def stop(self) -> None:
        """Stop serving, end open connections and remove the temporary workdir."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._thread = None
        self._cleanup_workdir()

    def _cleanup_workdir(self) -> None:
        if self._owned_workdir is not None:
            shutil.rmtree(self._owned_workdir, ignore_errors=True)
            self._owned_workdir = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------- controls

    def _call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server loop (the app's state belongs to it) and return its result."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return function()

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

    def _require_app(self) -> EmulatorApp:
        if self._app is None:
            raise RuntimeError("the emulator is not started")
        return self._app

    def stats(self) -> Stats:
        """A snapshot of request counters and jobs (see :class:`~kling_prefect.emulator.jobs.Stats`)."""
        app = self._require_app()
        return self._call(app.stats)

    def reset_stats(self) -> None:
        """Forget counters and jobs."""
        app = self._require_app()
        self._call(app.reset_stats)

    def inject(
        self,
        fault: str,
        *,
        endpoint: str = "any",
        times: int | None = 1,
        probability: float | None = None,
        **params: Any,
    ) -> None:
        """Inject a fault for the next ``times`` matching requests (see :mod:`kling_prefect.emulator.faults`).

        ``endpoint``: ``"any"``, ``"create"``, ``"query"``, ``"download"`` or ``"callback"``
        (``lost_callback`` only). ``probability``: each matching
        request is hit with that probability (``times=None``: no limit). ``params``: the kind's parameters.
        """
        app = self._require_app()
        self._call(lambda: app.inject(fault, endpoint=endpoint, times=times, probability=probability, params=params))

    def clear_faults(self) -> None:
        """Forget all pending faults."""
        app = self._require_app()
        self._call(app.clear_faults)

    def set_account_concurrency(self, limit: int | None) -> None:
        """Turn the account's concurrency rule on (at most ``limit`` jobs running) or off (``None``)."""
        app = self._require_app()
        self._call(lambda: app.set_account_concurrency(limit))
        self._settings["account_concurrency"] = limit  # kept if the emulator is started again


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    time_scale: float = 1.0,
    api_key: str | None = None,
    seed: int | None = None,
    timing_jitter: float = 0.25,
    fail_rate: float = 0.0,
    result_ttl: float = 3600.0,
    result_padding_bytes: int = 0,
    job_time: JobTime | None = None,
    account_concurrency: int | None = None,
    workdir: str | Path | None = None,
    ready_message: bool = True,
) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM.

    When listening, prints exactly one line, ``ShortAPI emulator listening on http://HOST:PORT`` (flushed),
    with the bound port (useful with ``port=0``).
    """
    config, owned = _make_config(
        workdir,
        time_scale=time_scale,
        api_key=api_key,
        seed=seed,
        timing_jitter=timing_jitter,
        fail_rate=fail_rate,
        result_ttl=result_ttl,
        result_padding_bytes=result_padding_bytes,
        job_time=job_time,
        account_concurrency=account_concurrency,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_foreground(EmulatorApp(config), host, port, ready_message))
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


async def _serve_foreground(app: EmulatorApp, host: str, port: int, ready_message: bool) -> None:
    bound = await app.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if ready_message:
        shown = f"[{host}]" if ":" in host else host
        print(f"{READY_PREFIX} http://{shown}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await app.close()
