"""What the tasks return and remember: a submitted job, a finished one, a stored clip. No secrets in any.

They cross task boundaries and are persisted as task results (so a flow retry or a re-run finds them), so
they are small frozen dataclasses that pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_prefect.storage import StoredObject
from kling_prefect.waiting.kinds import JobKind

__all__ = ["FinishedJob", "StoredVideo", "SubmittedJob"]


@dataclass(frozen=True)
class SubmittedJob:
    """A created job, as remembered across retries and re-runs (no secrets)."""

    job_id: str
    model: str
    run_key: str
    step: str
    args: dict[str, Any]
    estimated_cost: Decimal
    amount: Decimal | None
    video_seconds: int
    created_at: float
    callback_url: str | None = None  # given to the vendor: the wait listens for it (see kling_prefect.callbacks)
    #: Returned from the step's ledger: an earlier attempt created it, and its cached submission was never saved.
    remembered: bool = False

    @property
    def kind(self) -> JobKind:
        """What the job's duration is learned by (:class:`~kling_prefect.waiting.JobKind`)."""
        return JobKind.from_args(self.model, self.args, self.video_seconds)


@dataclass(frozen=True)
class FinishedJob:
    """A job that succeeded at the vendor, with its (expiring) result URLs."""

    submitted: SubmittedJob
    video_urls: tuple[str, ...]
    finished_at: float


@dataclass(frozen=True)
class StoredVideo:
    """A generated clip in the user's storage, checked to decode.

    ``thumbnail_data_uri`` and ``filmstrip_data_uri`` are small JPEGs inline (``data:image/jpeg;base64,...``):
    pictures the Prefect UI shows without a file server. ``thumbnail`` is the stored thumbnail file.
    """

    submitted: SubmittedJob
    video: StoredObject
    duration_seconds: float
    width: int
    height: int
    thumbnail: StoredObject | None = None
    thumbnail_data_uri: str | None = field(default=None, repr=False)
    filmstrip_data_uri: str | None = field(default=None, repr=False)
    #: The job was created by an earlier attempt or run with this run key: nothing was paid for it in this call.
    resumed: bool = False

    @property
    def job_id(self) -> str:
        return self.submitted.job_id

    @property
    def step(self) -> str:
        return self.submitted.step

    @property
    def local_path(self) -> Path:
        if not self.video.local_path:
            raise FileNotFoundError(f"no local copy of {self.video.uri}")
        return Path(self.video.local_path)
