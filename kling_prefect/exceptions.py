"""Typed errors, named for what happened. Each carries the job id (when there is one) and the raw response.

Texts never contain the API key: the client never puts request headers into an error, and every raw body
is passed through :func:`kling_prefect.credentials.redact` before it is kept.
"""

from __future__ import annotations

from typing import Any

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError


class ShortAPIError(Exception):
    """Base of every error this package raises about the ShortAPI service.

    Attributes:
        job_id: the vendor job id this error is about, when known.
        status_code: the HTTP status, when a response arrived.
        raw: the raw response (parsed JSON when possible, else text, truncated), for the user to inspect.
        submitted: the job as submitted (model, cost), when the error happened after a job was created.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status_code: int | None = None,
        raw: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.status_code = status_code
        self.raw = raw
        self.submitted: Any = None  # the SubmittedJob, once the error happened after a job was created
        self.resumed = False  # that job was created by an earlier attempt or run (not paid for in this one)

    def __str__(self) -> str:
        where = f" (job {self.job_id})" if self.job_id else ""
        return f"{self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments: rebuild explicitly so errors survive pickling across task runners.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[ShortAPIError], message: str, state: dict[str, Any]) -> ShortAPIError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class AuthenticationFailed(ShortAPIError):
    """The API key was missing or refused (HTTP 401/403 or an auth error code)."""


class RequestRejected(ShortAPIError):
    """The vendor refused the request as invalid (HTTP 4xx or a non-zero ``code``); nothing was created."""


class JobNotFound(RequestRejected):
    """The vendor does not know this job id."""


class TransientError(ShortAPIError):
    """A failure worth retrying for idempotent calls (queries, downloads); never retried for ``create``."""


class RateLimited(TransientError):
    """HTTP 429 or a rate-limit error code. ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class AccountBusy(RateLimited):
    """The vendor refused a ``job/create`` because the account runs as many jobs at once as it allows.

    Kling answers such a create with HTTP 429 and code 1303 ("parallel task over resource pack limit"): each job
    holds one of the account's slots from submission until it ends. The refusal is an error envelope, so it
    made no job and cost nothing; :func:`~kling_prefect.tasks.submit_kling_job` sends the create again after a
    pause (``retry_after``, then backoff) until the step's ``busy_timeout``, and the process lowers how many jobs
    it keeps in flight (:class:`~kling_prefect.concurrency.AccountLimiter`).
    """


class VendorUnavailable(TransientError):
    """The service failed to answer properly: 5xx, an HTML error page, malformed JSON, a timeout or reset."""


class JobMayHaveBeenCreated(ShortAPIError):
    """A ``job/create`` failed *after* the request was sent: the vendor may have created (and billed) a job.

    It is not retried automatically, because there is no idempotency key and a second POST can be a second
    charge. Check the vendor dashboard for a job created at this time before submitting again.

    The flows note it in Prefect's result storage: a flow retry or a re-run with the same ``run_key`` raises
    this error again for that step, sending nothing, until run with ``resubmit_uncertain=True``
    (CLI: ``--resubmit-uncertain``).
    """


class JobFailed(ShortAPIError):
    """The job ended in failure at the vendor (status 3); ``message`` is the vendor's reason."""


class UnknownJobStatus(ShortAPIError):
    """The vendor reported a status this package does not know; treated as terminal. ``raw`` has the payload."""

    def __init__(self, message: str, *, status: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status


class JobTimedOut(ShortAPIError):
    """The job did not finish before the deadline. It may still finish: wait on ``job_id`` again to resume."""

    def __init__(self, message: str, *, last_status: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.last_status = last_status


class DownloadFailed(ShortAPIError):
    """A result could not be downloaded intact (refused scheme, too large, truncated, not a video)."""


class ResultExpired(DownloadFailed):
    """The vendor's result URL no longer serves the file (expired or revoked)."""


class BudgetExceeded(ValueError):
    """The estimated cost of the requested work is over ``max_cost_usd``; nothing was created."""


class InvalidInput(ValueError):
    """A flow parameter or command-line argument is invalid; nothing was created.

    Attributes:
        field: the parameter (or ``parameter[index]``) at fault; the message starts with it.
        reason: what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason))


class BatchInputError(ValueError):
    """One or more batch items are invalid; ``problems`` lists them (``line N: field: why``). Nothing was created."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} invalid batch item(s); nothing was created:\n  {shown}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class ConcurrencyLimitUnavailable(ConcurrencySlotAcquisitionError):
    """The named Prefect limit does not exist on the server, is inactive, or is of the wrong kind.

    A subclass of Prefect's ``ConcurrencySlotAcquisitionError``: code catching that keeps working.
    """

    def __init__(self, message: str, *, limit_name: str) -> None:
        super().__init__(message)
        self.limit_name = limit_name

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across task runners and processes
        return (_rebuild_unavailable, (str(self), self.limit_name))


def _rebuild_unavailable(message: str, limit_name: str) -> ConcurrencyLimitUnavailable:
    return ConcurrencyLimitUnavailable(message, limit_name=limit_name)


class LeaseUnavailable(ConnectionError):
    """The step's lease could not be taken (Redis unreachable, a lease folder not writable): nothing was sent.

    Safe to retry: no create was attempted (see :mod:`kling_prefect.leases`).
    """
