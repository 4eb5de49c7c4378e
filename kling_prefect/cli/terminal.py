"""What reaches the terminal while a command runs: by default only the command's own output.

Prefect logs every flow and task run twice: to the Prefect API (the run's logs in the UI) and to the console
(its ``PrefectConsoleHandler`` on the root logger), tracebacks included. :func:`terminal_logs` keeps the first
and, unless ``verbose``, silences every handler that writes to the terminal, plus Python warnings, for as long
as the command runs; it puts them back afterwards. With ``verbose`` and a live display, Prefect's console
handlers print through the display's console, so log lines appear above the display rather than through it.

Examples:
    ```python
    from kling_prefect.cli.terminal import terminal_logs

    with terminal_logs(verbose=False):
        ...  # flows run here; their logs go to the Prefect API only
    ```
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["terminal_logs"]


class _Silence(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _all_handlers() -> set[logging.Handler]:
    loggers: list[Any] = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    return {handler for logger in loggers for handler in getattr(logger, "handlers", ())}


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return isinstance(handler, logging.StreamHandler) and any(stream is s for s in streams if s is not None)


@contextlib.contextmanager
def terminal_logs(*, verbose: bool, console: Any = None) -> Iterator[None]:
    """Silence log handlers that write to the terminal (unless ``verbose``); restore them on the way out.

    ``console``: a rich console that verbose Prefect console output should go through (a live display's).
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    silence = _Silence()
    silenced: list[logging.Handler] = []
    rerouted: list[tuple[Any, Any]] = []
    captured = False
    for handler in _all_handlers():
        if verbose:
            if console is not None and isinstance(handler, PrefectConsoleHandler):
                rerouted.append((handler, handler.console))
                handler.console = console
        elif isinstance(handler, PrefectConsoleHandler) or _writes_to_terminal(handler):
            handler.addFilter(silence)
            silenced.append(handler)
    if not verbose:
        logging.captureWarnings(True)  # warnings become log records, which the silenced handlers drop
        captured = True
    try:
        yield
    finally:
        for handler in silenced:
            handler.removeFilter(silence)
        for handler, original in rerouted:
            handler.console = original
        if captured:
            logging.captureWarnings(False)
