"""Leases on a step: one attempt at a time decides, sends and records a step's ``job/create``.

The ledger (:mod:`kling_prefect.ledger`) makes a step safe to repeat *after* an attempt: it remembers the job, or
that a create was in flight. It cannot make two attempts running *at the same time* safe on its own: both read
an empty ledger, both send. So :meth:`~kling_prefect.ledger.StepLedger.creating` holds a lease on the step (its
:func:`~kling_prefect.ledger.step_key`) from before the ledger is read until the vendor's answer is recorded. A
second attempt of the same (run key, step, request), in any process, waits for the lease, then reads what the
first one left: the job (it resumes it: no second create, no error) or, when the holder died mid-create, the
in-flight note (it refuses with ``JobMayHaveBeenCreated``: the create may have been accepted).

Two kinds of lease, chosen by one setting (the credentials' ``lease_url``, ``SHORTAPI_LEASE_URL``):

- **Files** (no setting; one machine): an exclusive ``flock`` on a file beside the run's result storage when
  that storage is a local folder, else under ``$PREFECT_HOME/kling-prefect/leases``. The kernel releases the
  lock the moment its process dies (``SIGKILL`` included), so a dead holder never blocks the step. The holder
  removes the file as it lets go, while it still holds the lock, so a batch leaves no file per step behind; an
  attempt that opened the file before that gets the lock on a file no longer at the path, sees that (the path
  names another inode, or none) and opens the path again, so two attempts never hold the lease at once. A
  holder killed mid-create leaves its file, and the next holder removes it. Processes on *other* machines do
  not see these locks: with result storage shared between machines (S3, a network share), set ``lease_url``.
- **Redis** (``lease_url="redis://host:6379/0"``; several machines): ``SET key token NX PX ttl``, renewed by a
  heartbeat every third of ``lease_seconds`` while held, released by compare-and-delete (a lease that expired
  and was taken by another attempt is never deleted by the old holder). A holder that dies stops renewing: the
  lease expires within ``lease_seconds`` (10 s by default).

Why not Prefect's own ``cache_policy.configure(isolation_level="SERIALIZABLE", lock_manager=...)``: it takes a
lock before the cache record is read, which is the right place, but the engine acquires it with no hold
timeout (prefect 3.8.8 ``transactions.py``: ``acquire_lock(key, holder=...)`` with ``hold_timeout`` unset).
``FileSystemLockManager`` writes a lock *file* that stays when its holder dies, and ``prefect-redis``'s
``RedisLockManager`` sets a key without expiry then: either way a crashed run blocks the step until someone
deletes the lock by hand. It also waits for the whole task (cache read to result write), whereas only the
decision, the POST and the record of its answer need to be exclusive. The leases here expire on their own, and
the ledger, not the lease, stays what decides whether paying again is safe: a lease that expired under a live
holder (a network partition longer than ``lease_seconds``) lets the next attempt in to find the in-flight note,
and it refuses; it does not pay twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_prefect.exceptions import LeaseUnavailable

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_LEASE_SECONDS", "lease_directory", "step_lease"]

#: Seconds a Redis lease outlives a holder that stopped renewing it (renewed every third of this).
DEFAULT_LEASE_SECONDS = 10.0
#: Seconds between tries of a lease held by another attempt (the first few tries come faster).
POLL_SECONDS = 0.2

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def lease_directory(result_basepath: str | os.PathLike[str] | None) -> Path:
    """Where file leases live: ``<result storage>/kling-leases`` when the run's result storage is a local folder,
    else ``$PREFECT_HOME/kling-prefect/leases``."""
    if result_basepath is not None:
        return Path(result_basepath).expanduser() / "kling-leases"
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser() / "kling-prefect" / "leases"


def _pause(tries: int) -> float:
    return min(POLL_SECONDS, 0.02 * (tries + 1))


@asynccontextmanager
async def step_lease(
    key: str,
    *,
    lease_url: str | None,
    directory: Path,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    on_wait: Callable[[], None] | None = None,
    on_lost: Callable[[], None] | None = None,
) -> AsyncIterator[None]:
    """Hold the lease ``key`` for the body, waiting while another attempt holds it.

    Args:
        key: the step's key (:func:`~kling_prefect.ledger.step_key`).
        lease_url: ``redis://`` or ``rediss://`` URL for leases shared by machines; ``None``: file leases.
        directory: the folder of file leases (see :func:`lease_directory`).
        lease_seconds: how long a Redis lease outlives its last renewal.
        on_wait: called once, when the lease is found held by another attempt.
        on_lost: called when a Redis renewal finds the lease gone (expired and maybe taken by another attempt).

    Raises:
        LeaseUnavailable: the lease store could not be used (Redis unreachable, a folder not writable); nothing
            was sent.
    """
    if lease_url:
        async with _redis_lease(key, lease_url, lease_seconds, on_wait, on_lost):
            yield
    else:
        async with _file_lease(directory / f"{key}.lock", on_wait):
            yield


@asynccontextmanager
async def _file_lease(path: Path, on_wait: Callable[[], None] | None) -> AsyncIterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeaseUnavailable(f"cannot make the folder of the step's lease file {path}: {exc}") from exc
    fd = await _lock_file(path, on_wait)
    try:
        yield
    finally:
        # Removed while still held, by the holder only: whoever opened this file meanwhile re-checks the path
        # once it gets the lock (see _lock_file), and whoever opens the path from now on makes a new file.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the lock


async def _lock_file(path: Path, on_wait: Callable[[], None] | None) -> int:
    """A descriptor of the file at ``path``, exclusively locked, the path still naming that very file."""
    tries = 0
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LeaseUnavailable(f"cannot open the step's lease file {path}: {exc}") from exc
        try:
            while True:
                try:
                    # flock locks belong to the open file description: two tasks of one process exclude each
                    # other too, and the kernel drops the lock when the process dies.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise LeaseUnavailable(f"cannot lock the step's lease file {path}: {exc}") from exc
                if tries == 0 and on_wait is not None:
                    on_wait()
                await asyncio.sleep(_pause(tries))
                tries += 1
            if _names(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before us removed the file it held: lock the one at the path now


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, not replaced by a new one)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def _redis_client(url: str) -> redis.asyncio.Redis:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LeaseUnavailable(
            "lease_url is a Redis URL but the `redis` package is not installed: pip install 'kling-prefect[redis]'"
        ) from exc
    client: redis.asyncio.Redis = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    return client


def _shown(url: str) -> str:
    """The URL without credentials (``redis://:password@host`` never reaches a log)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@asynccontextmanager
async def _redis_lease(
    key: str,
    url: str,
    lease_seconds: float,
    on_wait: Callable[[], None] | None,
    on_lost: Callable[[], None] | None,
) -> AsyncIterator[None]:
    client = _redis_client(url)
    name = f"kling-prefect:lease:{key}"
    token = secrets.token_hex(16)
    ttl_ms = max(100, int(lease_seconds * 1000))
    try:
        tries = 0
        while True:
            try:
                if await client.set(name, token, nx=True, px=ttl_ms):
                    break
            except Exception as exc:
                raise LeaseUnavailable(
                    f"cannot take the step's lease at {_shown(url)} ({type(exc).__name__}: {exc}); nothing was sent"
                ) from exc
            if tries == 0 and on_wait is not None:
                on_wait()
            await asyncio.sleep(_pause(tries))
            tries += 1
        heartbeat = asyncio.create_task(_renew(client, name, token, ttl_ms, on_lost))
        try:
            yield
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):  # unreachable now: the lease expires by itself
                await client.eval(_RELEASE, 1, name, token)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _renew(client: Any, name: str, token: str, ttl_ms: int, on_lost: Callable[[], None] | None) -> None:
    """Extend the lease every third of its life while it is held; tell ``on_lost`` once if it is gone."""
    every = ttl_ms / 3000
    last_ok = time.monotonic()
    while True:
        await asyncio.sleep(every)
        try:
            renewed = await client.eval(_RENEW, 1, name, token, ttl_ms)
        except Exception:
            # Redis unreachable for a moment: try again; past the lease's life it is gone.
            if (time.monotonic() - last_ok) * 1000 < ttl_ms:
                continue
            renewed = 0
        if not renewed:
            if on_lost is not None:
                on_lost()
            return
        last_ok = time.monotonic()
