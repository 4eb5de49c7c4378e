"""One implementation for sync and async callers: the package's tasks and helpers run where they are called.

Every task and helper is written once, async. Called from async code (an async flow or task, a running event
loop) it returns an awaitable, as any async function does; called from sync code (a sync flow or task, a plain
script) it runs to the end and returns its result. Most Prefect users write sync flows: without this, an async
task called there hands back a coroutine nobody awaits, the flow ends Completed having made nothing, and its
result fails later with ``MissingContextError``.

Two shapes, one rule (:func:`caller_is_async`):

- :class:`DispatchingTask`: a Prefect ``Task`` whose direct call runs to its result from sync code. ``.submit``,
  ``.map`` and ``.with_options`` are Prefect's own (``with_options`` keeps the dispatch).
- :func:`dispatching`: the same for plain functions that compose tasks (``generate_video``, the per-model
  helpers); the async function itself is ``.aio``.

From sync code the coroutine runs on Prefect's own "run sync" event loop (``run_coro_as_sync``: one loop in a
thread of its own, so HTTP pools and the query cap are shared by every sync call in the process), with the
caller's context (flow run, task run, logger, settings) copied in.

Examples:
    ```python
    from prefect import flow
    from kling_prefect.tasks import kling_o3_text_to_video

    @flow
    def daily():  # a sync flow: the helper runs and returns the stored clip
        clip = kling_o3_text_to_video(prompt="A lighthouse at dawn", run_key="daily-1")
        return clip.video.uri

    @flow
    async def daily_async():  # an async flow: the same helper is awaited
        clip = await kling_o3_text_to_video(prompt="A lighthouse at dawn", run_key="daily-2")
        return clip.video.uri
    ```
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Generic, TypeVar, cast

from prefect import Task
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.utilities.asyncutils import run_coro_as_sync
from typing_extensions import ParamSpec

__all__ = ["Dispatching", "DispatchingTask", "caller_is_async", "dispatching", "dispatching_task", "run_sync"]

P = ParamSpec("P")
R = TypeVar("R")

#: Set inside a coroutine this module drives for sync code: the calls made there are awaited by it.
_DRIVEN: ContextVar[bool] = ContextVar("kling_prefect_driven_for_sync_code", default=False)


def caller_is_async() -> bool:
    """Whether the code calling now can await (it gets an awaitable) or cannot (the call runs to its result).

    No event loop running in this thread: nobody here can await, so sync. A loop running: async, unless the
    Prefect run this call belongs to is a sync flow or task (a sync task called from an async flow, a sync
    subflow), whose code cannot await either; inside a coroutine this module drives for sync code, async.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    if _DRIVEN.get():
        return True
    try:
        context = get_run_context()
    except MissingContextError:
        return True  # plain async code (a notebook, an asyncio program)
    owner = getattr(context, "task", None) or getattr(context, "flow", None)
    return bool(getattr(owner, "isasync", True))


def run_sync(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run ``coroutine`` to its result from sync code, on Prefect's run-sync loop, in the caller's context."""

    async def driven() -> R:
        token = _DRIVEN.set(True)
        try:
            return await coroutine
        finally:
            _DRIVEN.reset(token)

    return cast(R, run_coro_as_sync(driven()))


class Dispatching(Generic[P, R]):
    """An async function that runs to its result when called from sync code (see :func:`dispatching`).

    Attributes:
        aio: the async function itself, always returning a coroutine (for ``asyncio.run(...)`` and for type
            checkers: ``await helper.aio(...)`` is typed ``R``).
    """

    def __init__(self, function: Callable[P, Coroutine[Any, Any, R]]) -> None:
        self.aio = function
        functools.update_wrapper(self, function)  # name, docs, and the signature inspect.signature reports

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """``R`` from sync code, an awaitable of ``R`` from async code."""
        coroutine = self.aio(*args, **kwargs)
        return coroutine if caller_is_async() else run_sync(coroutine)

    def __repr__(self) -> str:
        return f"<dispatching {self.aio.__module__}.{self.aio.__qualname__}>"


def dispatching(function: Callable[P, Coroutine[Any, Any, R]]) -> Dispatching[P, R]:
    """Decorate an async function so that sync code calling it gets its result (see the module documentation)."""
    return Dispatching(function)


class DispatchingTask(Task[P, Coroutine[Any, Any, R]]):
    """A Prefect task, written async, whose direct call runs to its result from sync code.

    From async code it is an ordinary async task (``await my_task(...)``). ``.submit`` and ``.map`` are
    Prefect's own (they already run async tasks from sync flows, on the flow's task runner).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task's result (or state, with ``return_state=True``) from sync code; an awaitable from async code."""
        call = super().__call__(*args, **kwargs)
        if inspect.iscoroutine(call) and not caller_is_async():
            return run_sync(call)
        return call

    def with_options(self, **options: Any) -> DispatchingTask[P, R]:
        """Prefect's ``with_options``; the copy dispatches too (Prefect builds a plain ``Task``)."""
        configured = super().with_options(**options)
        configured.__class__ = type(self)
        return cast(DispatchingTask[P, R], configured)


def dispatching_task(
    **options: Any,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], DispatchingTask[P, R]]:
    """``@task(**options)`` for an async function, as a :class:`DispatchingTask`."""

    def decorate(function: Callable[P, Coroutine[Any, Any, R]]) -> DispatchingTask[P, R]:
        return DispatchingTask(fn=function, **options)

    return decorate
