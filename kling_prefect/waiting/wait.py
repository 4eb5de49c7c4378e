"""The wait loop: query a job on the :class:`~kling_prefect.waiting.schedule.PollPolicy` schedule until it ends.

:func:`wait_for_end` is the one waiting algorithm. It sleeps until the schedule says the next query is due,
and wakes early when the belief about its kind changes (another job of the kind, or any kind while this one
is still on its prior, taught the model something: re-plan) or when the job's callback came (query now). A
query that fails transiently is not the end of the wait: the job runs on at the vendor regardless of our
connection. The :class:`JobWatcher` reports status changes and turns a terminal status into the result or
a typed error.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from kling_prefect.exceptions import JobFailed, JobTimedOut, ShortAPIError, TransientError, UnknownJobStatus
from kling_prefect.waiting.doorbell import Doorbell
from kling_prefect.waiting.estimates import DurationModel
from kling_prefect.waiting.kinds import JobKind
from kling_prefect.waiting.schedule import PollPolicy

__all__ = ["HINT_FOLLOW_UPS", "JobWatcher", "ObservedJob", "wait_for_end"]

#: Queries at ``min_interval`` after a callback whose own query still saw the job pending.
HINT_FOLLOW_UPS = 2


class ObservedJob(Protocol):
    """What a wait reads of one query's answer (:class:`kling_prefect.client.Job` is one)."""

    @property
    def status(self) -> Any: ...
    @property
    def state(self) -> str: ...
    @property
    def video_urls(self) -> tuple[str, ...]: ...
    @property
    def error(self) -> str | None: ...
    @property
    def raw(self) -> dict[str, Any]: ...


J = TypeVar("J", bound=ObservedJob)
StatusCallback = Callable[[J], Awaitable[None] | None]


class JobWatcher:
    """What a wait saw of one job: status changes reported, terminal states turned into results or errors."""

    def __init__(self, job_id: str, on_status_change: Callable[[Any], Awaitable[None] | None] | None) -> None:
        self.job_id = job_id
        self.on_status_change = on_status_change
        self.last: ObservedJob | None = None
        self.last_error: ShortAPIError | None = None

    async def seen(self, job: ObservedJob) -> bool:
        """Report ``job`` if its state changed; ``True`` when it succeeded, raise when it ended otherwise."""
        last, self.last = self.last, job
        if (last is None or job.state != last.state or job.status != last.status) and self.on_status_change:
            outcome = self.on_status_change(job)
            if inspect.isawaitable(outcome):
                await outcome
        if job.state == "succeeded":
            if not job.video_urls:
                raise UnknownJobStatus(
                    "job succeeded but its result has no URL", job_id=self.job_id, status=job.status, raw=job.raw
                )
            return True
        if job.state == "failed":
            raise JobFailed(
                f"job failed at the vendor: {job.error or 'no reason given'}", job_id=self.job_id, raw=job.raw
            )
        if job.state == "unknown":
            raise UnknownJobStatus(
                f"job has status {job.status!r}, which is not documented; treated as terminal",
                job_id=self.job_id,
                status=job.status,
                raw=job.raw,
            )
        return False

    def check_deadline(self, deadline: float | None, timeout: float | None) -> None:
        if deadline is None or time.monotonic() < deadline:
            return
        state = self.last.state if self.last else "unknown"
        why = f"; last error: {self.last_error.message}" if self.last_error else ""
        raise JobTimedOut(
            f"job still {state} after {timeout or 0:.0f} s{why}; wait on this job id again to resume",
            job_id=self.job_id,
            last_status=self.last.status if self.last else None,
        )


async def wait_for_end(
    job_id: str,
    query: Callable[[Callable[[], float], float | None], Awaitable[J]],
    *,
    kind: JobKind,
    started_at: float | None,
    durations: DurationModel,
    policy: PollPolicy,
    doorbell: Doorbell,
    timeout: float | None = None,
    on_status_change: Callable[[J], Awaitable[None] | None] | None = None,
    expects_callback: Callable[[], bool] | None = None,
    rng: random.Random | None = None,
) -> J:
    """Query ``job_id`` until it ends; return the answer that says it succeeded.

    Args:
        query: one query: ``query(priority, deadline)``, ``priority()`` being the chance it finds the job done
            now (for a :class:`~kling_prefect.waiting.querycap.QueryCap`), ``deadline`` a ``time.monotonic()``
            bound for its retries. A :class:`TransientError` it raises only costs a pause.
        kind: what the job's duration is believed and learned by.
        started_at: ``time.time()`` of the job's creation; ``None`` when unknown (the first query is then
            made at once, and the job is treated as created then).
        durations: the model to plan from and learn into (this job's duration is added when it succeeds).
        doorbell: rung when the belief about ``kind`` changes (re-plan) or, with a hint, when the job's
            callback came (query now). Subscribe it before calling (``durations.watch(kind, doorbell)``).
        expects_callback: whether a callback is expected for this job now (a trusted receiver): queries
            then come every ``policy.callback_fallback`` seconds only.

    Raises:
        JobFailed, UnknownJobStatus: the job ended otherwise. JobTimedOut: ``timeout`` passed.
    """
    rng = rng or random.Random()
    deadline = None if timeout is None else time.monotonic() + timeout
    began = time.monotonic()
    offset = 0.0 if started_at is None else time.time() - started_at

    pending_at = 0.0  # elapsed time at which the job was last known pending (its creation, at first)
    not_before = 0.0
    hinted_at: float | None = None  # when the job's callback came
    follow_ups = 0  # queries at min_interval after a callback whose query still saw the job pending
    fallback: float | None = None  # this sleep's fallback interval while callbacks are trusted

    def elapsed() -> float:
        return time.monotonic() - began + offset

    def plan() -> float:
        nonlocal fallback
        if follow_ups:
            return policy.min_interval
        if expects_callback is not None and expects_callback():
            # Drawn once per query: re-planning when other jobs of the kind end must not redraw the jitter
            # (the earliest of many draws would bring the fallback forward).
            fallback = fallback or policy.fallback_interval(rng)
            return fallback
        return policy.next_query(pending_at, durations.estimate(kind), rng)

    watcher = JobWatcher(job_id, on_status_change)
    first = started_at is None  # nothing known of the job's age: look at once, and learn nothing from it
    while True:
        hinted = False  # this query answers the job's callback
        interval = 0.0 if first else plan()
        if doorbell.take_hint():
            hinted_at, hinted, interval = elapsed(), True, 0.0
        while True:
            wake = max(pending_at + interval, not_before)
            pause = wake - elapsed()
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
            if pause <= 0:
                break
            if await doorbell.wait(pause):
                if doorbell.take_hint():  # the job's callback: query now (or as soon as allowed)
                    hinted_at, hinted, interval = elapsed(), True, 0.0
                elif interval > 0:  # the belief changed: re-plan with what was learned
                    interval = plan()

        def priority(urgent: bool = hinted or first, since: float = pending_at) -> float:
            # Evaluated when the query cap has a token: the longer a query waits, the likelier it finds the job done.
            return 1.0 if urgent else durations.estimate(kind).chance_done(since, elapsed())

        try:
            job: J | None = await query(priority, deadline)
            watcher.last_error = None
        except TransientError as exc:
            watcher.last_error = exc  # keep waiting: the job runs on regardless of our connection
            job = None
        # When the answer came: a query may queue for the process's query cap before it is sent, so the time it
        # was planned for says nothing of when the job was seen pending or done.
        asked_at = elapsed()
        fallback = None
        if job is None:
            not_before = elapsed() + policy.min_interval  # the vendor is struggling: do not hammer it
            if hinted:
                doorbell.hint()  # the callback's query failed: it is still owed, after that pause
        elif await watcher.seen(job):
            # A wait that began long after the job's creation (a resumed wait) and found it done at once knows
            # nothing of how long it took.
            resumed_late = pending_at == 0.0 and offset > policy.max_skip
            if started_at is not None and not resumed_late:
                # The callback came within moments of the end: it dates the end better than the last query.
                lower = pending_at if hinted_at is None else max(pending_at, hinted_at - policy.min_interval)
                durations.observe(kind, pending_at=lower, done_by=asked_at if hinted_at is None else hinted_at)
            return job
        else:
            pending_at = asked_at
            # A callback the query does not bear out yet: the vendor's query may lag its callback (or the
            # callback was for another status change), so look again twice at min_interval.
            follow_ups = HINT_FOLLOW_UPS if hinted else max(0, follow_ups - 1)
            hinted_at = None
        first = False
        watcher.check_deadline(deadline, timeout)
