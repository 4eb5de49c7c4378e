"""Process-local progress events, so a terminal front end (the CLI's progress bar) can follow tasks.

Tasks call :func:`emit`; anything in the same process may :func:`subscribe`. Prefect's own view of progress
is the progress artifact each wait task keeps up to date; this is only the terminal's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """``fraction`` is 0..1 for the step; ``state`` is a job state or ``submitted``/``stored``/``error``."""

    run_key: str
    step: str
    state: str
    fraction: float
    job_id: str | None = None
    message: str = ""


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []


def emit(event: ProgressEvent) -> None:
    for listener in list(_listeners):
        with contextlib.suppress(Exception):  # a broken display must never fail a paid job
            listener(event)


@contextlib.contextmanager
def subscribe(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
