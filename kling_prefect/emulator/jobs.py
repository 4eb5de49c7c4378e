"""Emulated jobs: how long they take, their status over time, and the statistics kept about them.

Job time (seconds, before jitter and ``time_scale``) is the model's typical job time, from the model's facts
(:meth:`ModelFacts.typical_job_seconds <kling_prefect.models.facts.ModelFacts.typical_job_seconds>`: base +
per second of video, by mode, longer with audio); :data:`JOB_TIME_TABLE` shows it by model and mode. A job is
queued (status 0) for the first :data:`QUEUED_FRACTION` of its time, then processing (1), then succeeded (2)
or failed (3). Status is computed from the clock: nothing runs per job while it "works".
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_prefect.models import REQUEST_MODELS, facts_for

STATUS_QUEUED = 0
STATUS_PROCESSING = 1
STATUS_SUCCEEDED = 2
STATUS_FAILED = 3
TERMINAL_STATUSES = frozenset({STATUS_SUCCEEDED, STATUS_FAILED})

QUEUED_FRACTION = 0.15
DEFAULT_TIMING = (60.0, 12.0)  # base, per second of video: a model this package has no facts for

#: ``{model id: {mode: (base seconds, seconds per second of video)}}``, from each model's facts.
JOB_TIME_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    model.facts.model_id: {mode: (t.base, t.per_second) for mode, t in model.facts.job_times.items()}
    for model in REQUEST_MODELS
}

RANDOM_FAILURE_MESSAGE = "video generation failed: internal error"


def clock() -> float:
    """The emulator's clock: ``time.monotonic()`` (system-wide on Linux, so comparable across processes)."""
    return time.monotonic()


def base_job_seconds(model_id: str, *, mode: str, video_seconds: int, has_audio: bool) -> float:
    """Unjittered, unscaled seconds a job takes: the model's typical job time."""
    facts = facts_for(model_id)
    if facts is None:
        base, per_second = DEFAULT_TIMING
        return base + per_second * video_seconds
    return facts.typical_job_seconds(mode, video_seconds, has_audio)


@dataclass
class Job:
    """One emulated job. Times are :func:`clock` values; ``done_at`` is planned until it has passed."""

    job_id: str
    model: str
    args: dict[str, Any]
    request: Any
    amount: Decimal
    callback_url: str | None
    token: str
    created_at: float
    queued_until: float
    done_at: float
    error: str | None = None
    fetching: bool = False
    image_paths: list[Path] = field(default_factory=list)
    image_digests: list[str] = field(default_factory=list)
    queries: int = 0
    first_terminal_seen_at: float | None = None
    expires_unix: int | None = None
    timer: asyncio.TimerHandle | None = None

    def status_at(self, now: float) -> int:
        """The vendor status at ``now``; a job still fetching its images stays in processing."""
        if now < self.queued_until:
            return STATUS_QUEUED
        if self.fetching or now < self.done_at:
            return STATUS_PROCESSING
        return STATUS_FAILED if self.error else STATUS_SUCCEEDED

    def fail_now(self, now: float, message: str) -> None:
        """End the job as failed at ``now`` (image fetch failures)."""
        self.error = message
        self.fetching = False
        self.queued_until = min(self.queued_until, now)
        self.done_at = min(self.done_at, now)

    def fetched(self, now: float) -> None:
        """Images are in: the job may finish (no earlier than now)."""
        self.fetching = False
        self.done_at = max(self.done_at, now)


@dataclass
class JobStats:
    """A snapshot of one job, for tests and benchmarks."""

    job_id: str
    model: str
    args: dict[str, Any]
    status: int
    created_at: float
    done_at: float
    queries: int
    first_terminal_seen_at: float | None
    callback_url: str | None
    error: str | None
    amount: str


@dataclass
class Counters:
    """Request counters, kept by the app and copied into :class:`Stats`."""

    requests: int = 0
    connections: int = 0
    create_requests: int = 0
    creates: int = 0
    queries: int = 0
    downloads: int = 0
    downloads_with_authorization: int = 0
    renders: int = 0
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    callbacks_lost: int = 0
    account_refusals: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    faults_fired: dict[str, int] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)
    query_times: list[float] = field(default_factory=list)


@dataclass
class Stats:
    """What the emulator saw. ``jobs`` is keyed by job id; times are :func:`clock` values (``now`` too).

    - ``requests``: every HTTP request except the ``/_emulator`` control endpoints (faulted ones included).
    - ``connections``: TCP connections accepted (control endpoints included): shows connection reuse.
    - ``create_requests``: every ``POST /api/v1/job/create``; ``creates``: those that created a job.
    - ``queries``: every ``GET /api/v1/job/query``; ``downloads``: every ``GET`` of a result file
      (``downloads_with_authorization``: of those, how many carried an ``Authorization`` header).
    - ``renders``: clips rendered (each distinct result is rendered once, on its first download).
    - ``by_model``: jobs created per model id. ``billed``: the sum of ``amount`` over created jobs.
    - ``max_in_flight``: the most jobs ever created-and-not-terminal at once; ``in_flight``: right now.
    - ``callbacks_sent`` / ``callbacks_failed`` (POST errors) / ``callbacks_lost`` (``lost_callback`` faults).
    - ``account_refusals``: creates refused by the account's concurrency rule (``account_concurrency``): HTTP
      429, code 1303, no job (they count in ``create_requests``, not in ``creates``).
    - ``faults_fired``: per fault kind; ``responses``: per HTTP status (``"reset"`` for aborted connections).
    - ``query_times``: the :func:`clock` time of every query, in order (rates per second window).
    """

    requests: int
    connections: int
    create_requests: int
    creates: int
    queries: int
    downloads: int
    downloads_with_authorization: int
    renders: int
    callbacks_sent: int
    callbacks_failed: int
    callbacks_lost: int
    account_refusals: int
    by_model: dict[str, int]
    faults_fired: dict[str, int]
    responses: dict[str, int]
    query_times: list[float]
    max_in_flight: int
    in_flight: int
    billed: str
    now: float
    jobs: dict[str, JobStats]
    pending_faults: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``GET /_emulator/stats`` returns)."""
        return dataclasses.asdict(self)


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of half-open ``[start, end)`` intervals covering one instant."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort()  # at equal times -1 sorts first: an end and a start at one instant do not overlap
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def snapshot_job(job: Job, now: float) -> JobStats:
    """The :class:`JobStats` of ``job`` at ``now``."""
    return JobStats(
        job_id=job.job_id,
        model=job.model,
        args=job.args,
        status=job.status_at(now),
        created_at=job.created_at,
        done_at=job.done_at,
        queries=job.queries,
        first_terminal_seen_at=job.first_terminal_seen_at,
        callback_url=job.callback_url,
        error=job.error,
        amount=str(job.amount),
    )


def build_stats(counters: Counters, jobs: dict[str, Job], pending_faults: list[dict[str, Any]]) -> Stats:
    """A deep snapshot of counters and jobs."""
    now = clock()
    copied = dataclasses.replace(
        counters,
        by_model=dict(counters.by_model),
        faults_fired=dict(counters.faults_fired),
        responses=dict(counters.responses),
        query_times=list(counters.query_times),
    )
    return Stats(
        **dataclasses.asdict(copied),
        max_in_flight=peak_overlap((job.created_at, job.done_at) for job in jobs.values()),
        in_flight=sum(1 for job in jobs.values() if job.status_at(now) not in TERMINAL_STATUSES),
        billed=str(sum((job.amount for job in jobs.values()), Decimal("0"))),
        now=now,
        jobs={job_id: snapshot_job(job, now) for job_id, job in jobs.items()},
        pending_faults=pending_faults,
    )
