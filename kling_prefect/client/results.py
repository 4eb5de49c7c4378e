"""What the client returns: a created job, one answer of ``job/query``."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from kling_prefect.exceptions import UnknownJobStatus
from kling_prefect.waiting.kinds import JobKind

__all__ = ["CreatedJob", "Job", "JobState"]

JobState = Literal["queued", "processing", "succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class CreatedJob:
    """A job the vendor accepted: its id, what the vendor says it charged, and our estimate.

    ``created_at`` is ``time.time()`` when the vendor's answer arrived (the job existed by then).
    ``callback_url`` is the URL the vendor was given. Pass the whole object to
    :meth:`~kling_prefect.client.ShortAPIClient.wait_for_job`: it carries what the wait plans by.
    """

    job_id: str
    model: str
    amount: Decimal | None
    estimated_cost: Decimal
    video_seconds: int
    created_at: float
    raw: dict[str, Any] = field(repr=False, compare=False)
    callback_url: str | None = None
    kind: JobKind | None = None


@dataclass(frozen=True)
class Job:
    """One answer of ``job/query``.

    ``status`` is the vendor's raw value; ``state`` is what it means (``unknown`` for values the documents
    do not define, which are terminal). ``video_urls`` is filled when the job succeeded.
    """

    job_id: str
    status: Any
    state: JobState
    video_urls: tuple[str, ...] = ()
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state in ("succeeded", "failed", "unknown")

    @property
    def video_url(self) -> str:
        """The first result URL (raises :class:`UnknownJobStatus` when the job has none)."""
        if not self.video_urls:
            raise UnknownJobStatus(
                f"job is {self.state} and has no result URL",
                job_id=self.job_id,
                status=self.status,
                raw=self.raw,
            )
        return self.video_urls[0]
