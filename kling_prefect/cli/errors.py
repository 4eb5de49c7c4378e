"""Every expected failure becomes one line: what was wrong, and what to do about it.

:func:`explain` turns an exception (raised by argument checks, by Prefect, or by a flow) into a :class:`Failure`;
:func:`main <kling_prefect.cli.main>` prints its :meth:`~Failure.line` and exits with its code. Nothing here
prints a traceback: ``KLING_PREFECT_DEBUG=1`` makes ``main`` re-raise instead.

Examples:
    ```python
    from kling_prefect.cli.errors import Context, explain
    from kling_prefect.exceptions import AuthenticationFailed

    failure = explain(AuthenticationFailed("job/create refused: invalid API key (HTTP 401, code 401)"), Context())
    failure.line()
    # 'ShortAPI refused the API key (job/create refused: ...); set a valid key in SHORTAPI_KEY ...'
    ```
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "Context", "Failure", "explain", "one_line"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "KLING_PREFECT_DEBUG"


def one_line(text: str, limit: int = 600) -> str:
    """``text`` folded onto one line (newlines and runs of spaces become one space), at most ``limit`` long."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Failure(Exception):
    """An expected failure, as the terminal shows it: ``what`` went wrong, ``fix`` says what to do.

    ``code`` is the exit status: 2 for bad arguments (nothing was started), 1 for a run that failed, 130 for
    an interrupted one.
    """

    def __init__(self, what: str, fix: str = "", *, code: int = EXIT_FAILED) -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.code = code

    def line(self) -> str:
        return one_line(f"{self.what.rstrip('.; ')}; {self.fix}" if self.fix else self.what)

    def __str__(self) -> str:
        return self.line()


@dataclass
class Context:
    """What the command line knew when something failed, so the line can name the flag, URL and run key.

    Attributes:
        run_key: the run's key: re-running with it resumes the jobs already created.
        api_url: the ShortAPI base URL in use (from ``SHORTAPI_BASE_URL`` or the credentials block).
        credentials_block: the ``--credentials-block`` name, when one was given.
        step: the step that was in progress (``clip-02``), when known.
        flag_names: parameter or field name -> the flag or argument the user typed (``max_cost_usd`` ->
            ``--max-cost``, ``prompt`` -> ``PROMPT 1``).
    """

    run_key: str | None = None
    api_url: str | None = None
    credentials_block: str | None = None
    step: str | None = None
    flag_names: dict[str, str] = field(default_factory=dict)
    rename: Callable[[str], str] | None = None

    def name(self, field_name: str) -> str:
        if self.rename is not None:
            return self.rename(field_name)
        return self.flag_names.get(field_name, field_name)

    def key_source(self) -> str:
        if self.credentials_block:
            name = self.credentials_block
            return f'credentials block {name!r}: ShortAPICredentials(api_key="...").save({name!r}, overwrite=True)'
        return "SHORTAPI_KEY"

    def url_source(self) -> str:
        if self.credentials_block:
            return f"the base_url of credentials block {self.credentials_block!r}"
        return "SHORTAPI_BASE_URL"

    def resume(self) -> str:
        return f"re-run with --run-key {self.run_key}" if self.run_key else "re-run with the same --run-key"


def _leaf(error: BaseException) -> BaseException:
    """The first real error inside exception groups (task groups wrap what a task raised)."""
    inner = getattr(error, "exceptions", None)  # BaseExceptionGroup (3.11+, or the backport on 3.10)
    while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        error = inner[0]
        inner = getattr(error, "exceptions", None)
    return error


def _step_of(error: BaseException, context: Context) -> str:
    submitted = getattr(error, "submitted", None)
    step = getattr(submitted, "step", None) or context.step
    return f"{step}: " if step else ""


def _job_of(error: BaseException) -> str:
    job_id = getattr(error, "job_id", None) or getattr(getattr(error, "submitted", None), "job_id", None)
    return f" (job {job_id})" if job_id else ""


def explain(error: BaseException, context: Context) -> Failure:
    """The one line for ``error``: what was wrong and what to do, naming flags, variables and commands."""
    from pydantic import ValidationError

    from kling_prefect import exceptions as ex

    error = _leaf(error)
    if isinstance(error, Failure):
        return error
    if isinstance(error, KeyboardInterrupt):
        return Failure(
            "interrupted; jobs already created keep running at the vendor",
            f"{context.resume()} to resume them without paying again",
            code=EXIT_INTERRUPTED,
        )
    if isinstance(error, ValidationError):
        return Failure(_validation_line(error, context), code=EXIT_USAGE)
    if isinstance(error, ex.InvalidInput):
        return Failure(f"{context.name(error.field)}: {error.reason}", code=EXIT_USAGE)
    if isinstance(error, ex.BudgetExceeded):
        return Failure(str(error), code=EXIT_USAGE)
    if isinstance(error, ex.BatchInputError):
        return Failure(_batch_line(error.problems), code=EXIT_USAGE)
    if isinstance(error, ex.ShortAPIError):
        return _vendor_failure(error, context)
    if isinstance(error, ex.ConcurrencyLimitUnavailable):
        return Failure(f"--jobs-limit: {error}")
    if isinstance(error, PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError):
        where = f" {error.filename}" if error.filename else ""
        return Failure(
            f"cannot write{where}: {error.strerror or type(error).__name__}",
            "choose a writable directory with --out",
        )
    if isinstance(error, OSError) and getattr(error, "errno", None) == 28:  # ENOSPC
        return Failure(f"the disk is full: {error}", "free space, or choose another disk with --out")
    prefect = _prefect_failure(error)
    if prefect is not None:
        return prefect
    return Failure(
        f"{type(error).__name__}: {one_line(str(error), 400)}",
        f"set {DEBUG_ENV}=1 for a traceback",
    )


def _validation_line(error: Any, context: Context) -> str:
    """``flag: rule (got value)`` for each field pydantic refused, with the command line's names."""
    from kling_prefect.planning import describe_validation_error

    return describe_validation_error(error, rename=context.name)


def _batch_line(problems: list[str], shown: int = 5) -> str:
    if not any(problem.startswith(("line ", "item ")) for problem in problems):  # the file itself, not its items
        return f"{'; '.join(problems)}; nothing was created"
    listed = "; ".join(problems[:shown])
    more = f"; ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} invalid batch item(s), nothing was created: {listed}{more}"


def _vendor_failure(error: Any, context: Context) -> Failure:
    from kling_prefect import exceptions as ex

    step, job, url = _step_of(error, context), _job_of(error), context.api_url or "the ShortAPI API"
    message = one_line(error.message, 300)
    if isinstance(error, ex.AuthenticationFailed):
        return Failure(
            f"ShortAPI refused the API key ({message}); nothing was created",
            f"set a valid key in {context.key_source()}",
        )
    if isinstance(error, ex.JobMayHaveBeenCreated):
        return Failure(
            f"{step}{message}",
            f"then {context.resume()} --resubmit-uncertain to submit that step again",
        )
    if isinstance(error, ex.JobFailed):
        reason = message.removeprefix("job failed at the vendor: ")
        return Failure(
            f"{step}the job failed at the vendor{job}: {reason}",
            f"change the prompt or options and run again ({context.resume()} to keep the clips already stored)",
        )
    if isinstance(error, ex.UnknownJobStatus):
        return Failure(
            f"{step}the vendor reported an undocumented state{job}: {message}",
            f"{context.resume()} later to ask about the same job again (nothing is paid twice)",
        )
    if isinstance(error, ex.JobTimedOut):
        return Failure(
            f"{step}the job did not finish in time{job}: {message}",
            f"it may still finish: {context.resume()} to wait for the same job (no new job is created)",
        )
    if isinstance(error, ex.DownloadFailed):
        return Failure(
            f"{step}could not download the result{job}: {message}",
            f"{context.resume()} to download it again (no new job is created)",
        )
    if isinstance(error, ex.RequestRejected):
        return Failure(
            f"{step}ShortAPI refused the request at {url}: {message}; nothing was created",
            "check the options against `kling-prefect estimate` (which validates locally) and run again",
        )
    if isinstance(error, ex.AccountBusy):
        return Failure(
            f"{step}the ShortAPI account at {url} kept refusing the create for its concurrency: {message}; "
            "nothing was created",
            f"lower --max-concurrency (or use a --jobs-limit) to what the account runs at once, or let its other "
            f"jobs end; {context.resume()} to make the missing clips",
        )
    if isinstance(error, ex.TransientError):
        resume = f"; {context.resume()} to resume" if error.job_id or getattr(error, "submitted", None) else ""
        connect = re.search(r"could not connect \((\w+)\)", error.message)
        if error.status_code is None and connect:
            created = "" if resume else "; nothing was created"
            return Failure(
                f"{step}could not connect to the ShortAPI API at {url} ({connect[1]}){created}",
                f"check {context.url_source()} and your network{resume}",
            )
        return Failure(
            f"{step}the ShortAPI API at {url} is failing: {message}{job}",
            f"try again later{resume} (check {context.url_source()} if this is not the right URL)",
        )
    return Failure(f"{step}{type(error).__name__}: {message}{job}", f"set {DEBUG_ENV}=1 for a traceback")


def _prefect_failure(error: BaseException) -> Failure | None:
    """Failures talking to Prefect's API (a server that is down or refuses us)."""
    import httpx

    try:
        from prefect.exceptions import PrefectHTTPStatusError
    except ImportError:  # pragma: no cover - every supported Prefect has it
        return None
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value() or "the temporary local server"
    if isinstance(error, httpx.TransportError):
        return Failure(
            f"lost the Prefect API at {api} ({type(error).__name__})",
            "check that the Prefect server is running (`prefect server start`) or unset PREFECT_API_URL",
        )
    if isinstance(error, PrefectHTTPStatusError):
        return Failure(
            f"the Prefect API at {api} refused a request: {one_line(str(error), 200)}",
            "check PREFECT_API_URL and PREFECT_API_KEY",
        )
    return None


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() in ("1", "true", "yes")
