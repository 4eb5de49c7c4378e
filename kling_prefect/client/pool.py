"""One HTTP connection pool per event loop and purpose, shared by every client and wait in the process."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = ["DOWNLOAD_POOL_LIMITS", "POOL_LIMITS", "PoolPurpose", "shared_http_client"]

#: Connection limits of API pools (creates and queries). Few connections on purpose: hundreds of waits make a
#: few queries per second between them, and an httpx pool costs more CPU per request the more connections it
#: juggles (see benchmarks/RESULTS.md).
POOL_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=16, keepalive_expiry=30.0)
#: Connection limits of download pools: results are streamed on their own connections, so a queue of large
#: downloads never delays the queries that notice other jobs finishing.
DOWNLOAD_POOL_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8, keepalive_expiry=30.0)

PoolPurpose = Literal["api", "download"]


@dataclass
class _Pool:
    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    client: httpx.AsyncClient
    closer: Any = None
    started: Any = None


_pools: dict[tuple[int, str], _Pool] = {}
_pools_lock = threading.Lock()


def shared_http_client(purpose: PoolPurpose = "api") -> httpx.AsyncClient:
    """The process's ``httpx.AsyncClient`` for the running event loop: one connection pool per loop and purpose.

    ``"api"`` is for creates and queries (:data:`POOL_LIMITS`), ``"download"`` for result files
    (:data:`DOWNLOAD_POOL_LIMITS`). Clients given them (``ShortAPIClient(http_client=..., download_client=...)``)
    share their connections and never close them. A pool is closed when its loop shuts down (``asyncio.run``,
    ``anyio.run`` and Prefect's loops do) or at exit; a loop dropped without shutting down takes it along.
    Call it inside a running asyncio loop; each loop gets its own pools (httpx connections belong to one loop).
    """
    if purpose not in ("api", "download"):
        raise ValueError(f"purpose: 'api' or 'download', not {purpose!r}")
    loop = asyncio.get_running_loop()
    key = (id(loop), purpose)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and pool.loop() is loop and not pool.client.is_closed:
            return pool.client
        limits = POOL_LIMITS if purpose == "api" else DOWNLOAD_POOL_LIMITS
        client = httpx.AsyncClient(limits=limits, follow_redirects=False)

        def forget(_: object, key: tuple[int, str] = key, client: httpx.AsyncClient = client) -> None:
            with _pools_lock:
                if key in _pools and _pools[key].client is client:
                    del _pools[key]

        pool = _pools[key] = _Pool(loop=weakref.ref(loop, forget), client=client)
    # An async generator parked at its `yield` is closed by the loop's shutdown_asyncgens(): its `finally`
    # then closes the pool inside the loop that owns its connections.
    pool.closer = _close_at_loop_shutdown(client)
    pool.started = loop.create_task(pool.closer.__anext__())
    return client


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with _pools_lock:
            for key, pool in list(_pools.items()):
                if pool.client is client:
                    del _pools[key]
        await client.aclose()


@atexit.register
def _close_pools_at_exit() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        loop = pool.loop()
        if loop is None or loop.is_closed() or pool.client.is_closed:
            continue
        with contextlib.suppress(Exception):
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(pool.client.aclose(), loop).result(timeout=5)
            else:
                loop.run_until_complete(pool.client.aclose())
