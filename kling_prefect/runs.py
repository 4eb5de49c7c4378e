"""What a flow run produced: one :class:`ClipRecord` per clip asked for, the joined video, and the totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kling_prefect.client.responses import parse_amount
from kling_prefect.exceptions import JobFailed, ShortAPIError, UnknownJobStatus
from kling_prefect.models import KlingRequest
from kling_prefect.pricing import estimate_cost
from kling_prefect.records import StoredVideo, SubmittedJob
from kling_prefect.storage import StoredObject

__all__ = ["ClipRecord", "RunIncomplete", "RunResult", "RunTotals", "failure_reason", "record_for"]

ERROR_TEXT_LIMIT = 500


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a run: what was asked, what it cost, where the result went (or why it failed).

    ``resumed`` says the job was created by an earlier attempt or run with the same run key: nothing was paid
    for it in this run. ``video_seconds`` is what the vendor bills (the requested length); a failed clip
    without a job cost nothing.
    """

    step: str
    prompt: str
    model: str
    status: str
    job_id: str | None = None
    video_seconds: int = 0
    estimated_cost: Decimal | None = None
    amount: Decimal | None = None
    resumed: bool = False
    duration_seconds: float = 0.0
    uri: str | None = None
    url: str | None = None
    local_path: str | None = None
    thumbnail_data_uri: str | None = field(default=None, repr=False)
    filmstrip_data_uri: str | None = field(default=None, repr=False)
    error: str | None = None
    reason: str | None = None

    @property
    def stored(self) -> bool:
        return self.status == "stored"

    @property
    def short_model(self) -> str:
        from kling_prefect.models import facts_for

        facts = facts_for(self.model)
        return facts.short_name if facts else self.model


def failure_reason(error: BaseException) -> str:
    """Why a clip failed, in a few words: the vendor's reason for a failed job, else the error."""
    if isinstance(error, JobFailed):
        return "failed at the vendor: " + error.message.removeprefix("job failed at the vendor: ")
    if isinstance(error, UnknownJobStatus):
        return f"undocumented status {error.status!r}"
    if isinstance(error, ShortAPIError):
        return f"{type(error).__name__}: {error.message}"
    return f"{type(error).__name__}: {error}"


def record_for(
    step: str,
    request: KlingRequest,
    stored: StoredVideo | None = None,
    error: BaseException | None = None,
) -> ClipRecord:
    """The record of one clip, from what :func:`~kling_prefect.tasks.generate_video` returned or raised."""
    prompt = str(getattr(request, "prompt", "") or "")
    if stored is not None:
        job = stored.submitted
        return ClipRecord(
            step=step,
            prompt=prompt,
            model=request.model_id,
            status="stored",
            job_id=job.job_id,
            video_seconds=job.video_seconds,
            estimated_cost=job.estimated_cost,
            amount=parse_amount(job.amount),
            resumed=stored.resumed,
            duration_seconds=stored.duration_seconds,
            uri=stored.video.uri,
            url=stored.video.url,
            local_path=stored.video.local_path,
            thumbnail_data_uri=stored.thumbnail_data_uri,
            filmstrip_data_uri=stored.filmstrip_data_uri,
        )
    submitted: SubmittedJob | None = getattr(error, "submitted", None)
    job_id = submitted.job_id if submitted is not None else getattr(error, "job_id", None)
    text = f"{type(error).__name__}: {error}" if error else None
    if text and len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "…"
    return ClipRecord(
        step=step,
        prompt=prompt,
        model=request.model_id,
        status="failed",
        job_id=job_id,
        video_seconds=request.video_seconds if job_id else 0,
        estimated_cost=estimate_cost(request) if job_id else None,
        amount=parse_amount(submitted.amount) if submitted is not None else None,
        resumed=bool(getattr(error, "resumed", False)),
        error=text,
        reason=failure_reason(error) if error is not None else None,
    )


@dataclass(frozen=True)
class RunTotals:
    """Figures that add up: jobs created in this run vs resumed, what was paid in this run vs earlier, and the
    seconds of video actually stored."""

    clips: int
    stored: int
    failed: int
    created: int
    resumed: int
    stored_seconds: float
    estimated_cost: Decimal
    paid_in_run: Decimal
    paid_earlier: Decimal
    unreported: int

    @classmethod
    def of(cls, records: list[ClipRecord]) -> RunTotals:
        with_job = [r for r in records if r.job_id]
        created = [r for r in with_job if not r.resumed]
        return cls(
            clips=len(records),
            stored=sum(1 for r in records if r.stored),
            failed=sum(1 for r in records if not r.stored),
            created=len(created),
            resumed=len(with_job) - len(created),
            stored_seconds=round(sum(r.duration_seconds or r.video_seconds for r in records if r.stored), 3),
            estimated_cost=sum((r.estimated_cost or Decimal(0) for r in created), Decimal(0)),
            paid_in_run=sum((r.amount or Decimal(0) for r in created), Decimal(0)),
            paid_earlier=sum((r.amount or Decimal(0) for r in with_job if r.resumed), Decimal(0)),
            unreported=sum(1 for r in with_job if r.amount is None),
        )


@dataclass
class RunResult:
    """What a flow run produced: one record per requested clip, the joined video for chains, the totals."""

    run_key: str
    records: list[ClipRecord]
    final: StoredObject | None = None
    summary_artifact: str | None = None
    clips: list[StoredVideo] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> list[ClipRecord]:
        return [r for r in self.records if not r.stored]

    @property
    def totals(self) -> RunTotals:
        return RunTotals.of(self.records)

    def describe(self) -> str:
        """One line: ``2 of 3 clips stored; item-0001 failed at the vendor: content moderation``."""
        sums = self.totals
        text = f"{sums.stored} of {sums.clips} clip{'s' if sums.clips != 1 else ''} stored"
        failed = self.failed
        if failed:
            first = failed[0]
            text += f"; {first.step} {first.reason or first.error or 'failed'}"
            if len(failed) > 1:
                text += f" (and {len(failed) - 1} more failed)"
        return text

    def as_dict(self) -> dict[str, Any]:
        sums = self.totals
        return {
            "run_key": self.run_key,
            "final": None if self.final is None else {"uri": self.final.uri, "local_path": self.final.local_path},
            "summary_artifact": self.summary_artifact,
            "clips_requested": sums.clips,
            "stored": sums.stored,
            "failed": sums.failed,
            "jobs_created": sums.created,
            "jobs_resumed": sums.resumed,
            "video_seconds": sums.stored_seconds,
            "estimated_cost_usd": str(sums.estimated_cost),
            "vendor_amount_usd": str(sums.paid_in_run),
            "vendor_amount_earlier_usd": str(sums.paid_earlier),
            "clips": [
                {
                    "step": r.step,
                    "status": r.status,
                    "job_id": r.job_id,
                    "resumed": r.resumed,
                    "uri": r.uri,
                    "local_path": r.local_path,
                    "prompt": r.prompt,
                    "model": r.model,
                    "error": r.error,
                }
                for r in self.records
            ],
        }


class RunIncomplete(Exception):
    """Some clips of a run were not made (the others are stored). ``result`` is the :class:`RunResult`.

    A batch flow ends Failed with this error (its message is the run's one-line description) unless run
    with ``fail_on_error=False``.
    """

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.describe())
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))
