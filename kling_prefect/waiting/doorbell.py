"""A waiter's doorbell: rung from any thread, heard in the event loop that made it."""

from __future__ import annotations

import asyncio
import contextlib

import anyio

__all__ = ["Doorbell"]


class Doorbell:
    """One waiter's doorbell: rung from any thread, heard in the loop that created it.

    :meth:`notify` says "re-plan" (something learned changed); :meth:`hint` says "query now" (a callback said
    the job may have ended), which the wait reads with :meth:`take_hint`.
    """

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._event = asyncio.Event() if self._loop is not None else None
        self._rung = False
        self._hinted = False

    def hint(self) -> None:
        self._hinted = True
        self.notify()

    def take_hint(self) -> bool:
        """Whether a hint arrived since the last call (then cleared)."""
        hinted, self._hinted = self._hinted, False
        return hinted

    def notify(self) -> None:
        self._rung = True
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; ``True`` as soon as new knowledge arrived (then re-armed)."""
        if self._event is None:  # not created in an asyncio loop (trio): no doorbell, just the sleep
            await anyio.sleep(max(0.0, timeout))
            return False
        if not self._rung:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        rung, self._rung = self._rung, False
        self._event.clear()
        return rung
