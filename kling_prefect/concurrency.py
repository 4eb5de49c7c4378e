"""Limits on jobs in flight and requests: the ones shared by every worker (Prefect limits: jobs in flight,
optionally a create rate and a query rate), and the account's own, learned.

Kling limits how many jobs an account may have running. A Prefect *global* concurrency limit lives on the
Prefect server, so it holds across every worker and process that talks to that server. A slot is taken
before ``job/create`` and given back once the job reached a terminal status, so N workers together never
have more jobs at the vendor than the limit.

Both helpers are **strict**: Prefect silently ignores a limit that does not exist unless told otherwise,
and a silent no-op here would let a fleet of workers over-commit the account. A missing or inactive limit,
or a limit of the wrong kind, raises :class:`ConcurrencyLimitUnavailable` before anything is created at the
vendor. Create the limits once with ``kling-prefect setup``.

The query rate (``setup_limits(max_queries_per_second=N)``, ``kling-prefect setup --max-queries-per-second N``)
is different: it is not required, and every process's query cap uses it when it exists
(:mod:`kling_prefect.waiting.querycap`).

A held slot is a *lease* on the server, renewed while the job runs. If the process holding it dies, the
server frees the slot when the lease expires (``lease_duration``, 5 minutes by default).

The vendor account has a limit of its own (Kling: jobs running at once per account; a create over it is refused
with HTTP 429, code 1303, and makes nothing). :class:`AccountLimiter` learns it from those refusals, per process
and account: every step takes one of its slots before its create and gives it back when its job ended, so a
process that was told "no more" keeps no more jobs in flight than the vendor accepted, and probes upward slowly.

Examples:
    ```python
    from kling_prefect.concurrency import job_slot

    async with job_slot("kling-jobs-in-flight"):
        ...  # create the job and wait for it
    ```
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import ConcurrencyLimitUnavailable
from kling_prefect.waiting.querycap import DEFAULT_QUERY_RATE_LIMIT, shared_burst

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

__all__ = [
    "DEFAULT_JOBS_LIMIT",
    "AccountLimitReport",
    "AccountLimiter",
    "AccountSlot",
    "account_limiter",
    "account_reports",
    "account_step",
    "create_rate_slot",
    "current_account_slot",
    "job_slot",
    "learned_account_limit",
    "require_limit",
    "setup_limits",
]

DEFAULT_JOBS_LIMIT = "kling-jobs-in-flight"
DEFAULT_CREATE_RATE_LIMIT = "kling-job-creates"
#: Seconds a held slot survives without renewal (the holder renews it at 75 % of this while it runs).
DEFAULT_LEASE_SECONDS = 300.0


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(no PREFECT_API_URL: the local ephemeral server)"


async def require_limit(limit_name: str, *, rate: bool = False) -> GlobalConcurrencyLimitResponse:
    """Read the global limit ``limit_name``; raise :class:`ConcurrencyLimitUnavailable` unless it is usable.

    Usable means: it exists, is active, and is a plain concurrency limit (no slot decay; a decaying limit
    would hand slots back while jobs still run) or, with ``rate=True``, a rate limit (slot decay > 0).
    """
    setup_hint = (
        f"kling-prefect setup --create-limit-name {limit_name} --creates-per-second N"
        if rate
        else f"kling-prefect setup --jobs-limit-name {limit_name} --jobs-limit N"
    )
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            raise ConcurrencyLimitUnavailable(
                f"global concurrency limit {limit_name!r} does not exist on the Prefect server at {_api_url()}; "
                f"create it with `{setup_hint}`",
                limit_name=limit_name,
            ) from None
    if not limit.active:
        raise ConcurrencyLimitUnavailable(
            f"global concurrency limit {limit_name!r} is inactive, so the server would not enforce it; "
            f"activate it (`prefect gcl enable {limit_name}`) or re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    if limit.limit < 1:
        raise ConcurrencyLimitUnavailable(
            f"global concurrency limit {limit_name!r} allows {limit.limit} slots: nothing could ever run; "
            f"re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    decays = limit.slot_decay_per_second > 0
    if rate and not decays:
        raise ConcurrencyLimitUnavailable(
            f"limit {limit_name!r} has no slot decay, so it is not a rate limit; re-run `{setup_hint}`",
            limit_name=limit_name,
        )
    if not rate and decays:
        raise ConcurrencyLimitUnavailable(
            f"limit {limit_name!r} decays ({limit.slot_decay_per_second} slots/s): it is a rate limit and would "
            f"free slots while jobs still run; use a limit without decay (`{setup_hint}`)",
            limit_name=limit_name,
        )
    return limit


def _holder() -> ConcurrencyLeaseHolder | None:
    """Who holds the slot, as shown by ``prefect gcl inspect`` and the UI: this task run or flow run."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_ctx.task_run.id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_ctx.flow_run.id)
    return None


@asynccontextmanager
async def job_slot(
    limit_name: str | None,
    *,
    timeout_seconds: float | None = None,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
) -> AsyncIterator[None]:
    """Hold one slot of the global limit ``limit_name`` for the body (no-op when ``None`` or empty).

    Raises :class:`ConcurrencyLimitUnavailable` (before the body runs) when the limit is missing, inactive or
    a rate limit, and ``AcquireConcurrencySlotTimeoutError`` when no slot came within ``timeout_seconds``.

    A failed lease renewal (the Prefect server unreachable for a while) does **not** cancel the body: the job
    is already running at the vendor, and abandoning the wait would not take it back.
    """
    if not limit_name:
        yield
        return
    await require_limit(limit_name)
    async with concurrency(
        limit_name,
        occupy=1,
        timeout_seconds=timeout_seconds,
        lease_duration=lease_duration,
        strict=True,
        holder=_holder(),
        raise_on_lease_renewal_failure=False,
    ):
        yield


async def create_rate_slot(limit_name: str | None, *, timeout_seconds: float | None = None) -> None:
    """Wait for the create rate limit ``limit_name`` (a limit with slot decay); no-op when ``None`` or empty.

    Raises :class:`ConcurrencyLimitUnavailable` when the limit is missing, inactive or has no slot decay.
    """
    if not limit_name:
        return
    await require_limit(limit_name, rate=True)
    await rate_limit(limit_name, occupy=1, timeout_seconds=timeout_seconds, strict=True)


async def setup_limits(
    jobs_limit_name: str = DEFAULT_JOBS_LIMIT,
    jobs_limit: int = 5,
    creates_per_second: float | None = None,
    create_limit_name: str = DEFAULT_CREATE_RATE_LIMIT,
    *,
    max_queries_per_second: float | None = None,
    query_limit_name: str = DEFAULT_QUERY_RATE_LIMIT,
) -> list[str]:
    """Register this package's blocks and create (or update, and activate) the limits on the Prefect server.

    Safe to run again: an existing limit gets the new size. Returns one line per thing done, for the CLI.

    Args:
        jobs_limit_name: the limit on jobs in flight (no decay), ``jobs_limit`` slots.
        jobs_limit: jobs in flight across every worker.
        creates_per_second: also a rate limit on creates (``create_limit_name``).
        create_limit_name: its name.
        max_queries_per_second: also one rate of job queries for every process of this Prefect server: a rate
            limit ``query_limit_name`` (slot decay N, burst :func:`~kling_prefect.waiting.shared_burst`), which
            each process's query cap then keeps to as well as its own.
        query_limit_name: its name; processes find it by ``SHORTAPI_QUERY_RATE_LIMIT`` when it is not the default.

    Examples:
        ```python
        import asyncio
        from kling_prefect.concurrency import setup_limits

        for line in asyncio.run(setup_limits(jobs_limit=4, max_queries_per_second=10)):
            print(line)  # ... rate limit 'kling-job-queries' created: 10 job queries per second ...
        ```
    """
    if max_queries_per_second is not None and not 0 < max_queries_per_second < float("inf"):
        raise ValueError(f"max_queries_per_second: must be a finite number > 0, got {max_queries_per_second}")
    if max_queries_per_second and query_limit_name in (
        jobs_limit_name,
        create_limit_name if creates_per_second else None,
    ):
        raise ValueError("the query rate limit needs a name of its own")
    if jobs_limit < 1:
        raise ValueError(f"jobs_limit: must be at least 1, got {jobs_limit}")
    if creates_per_second is not None and creates_per_second <= 0:
        raise ValueError(f"creates_per_second: must be positive, got {creates_per_second}")
    if creates_per_second and create_limit_name == jobs_limit_name:
        raise ValueError("the create rate limit needs a name of its own (it decays; the jobs limit must not)")
    done = [f"Prefect API: {_api_url()}"]
    try:
        await ShortAPICredentials.aregister_type_and_schema()
    except httpx.TransportError as exc:
        raise ConnectionError(
            f"cannot reach the Prefect API at {_api_url()} ({type(exc).__name__}: {exc}); start one with "
            "`prefect server start` or point PREFECT_API_URL at yours"
        ) from exc
    done.append("registered block type 'shortapi-credentials'")
    try:
        from prefect_aws import AwsCredentials
        from prefect_aws.s3 import S3Bucket

        for block in (AwsCredentials, S3Bucket):
            await block.aregister_type_and_schema()
        done.append("registered block types 'aws-credentials' and 's3-bucket'")
    except ImportError:  # pragma: no cover - prefect-aws is a dependency, but keep setup usable without it
        pass
    async with get_client() as client:
        verb = await _upsert(client, jobs_limit_name, jobs_limit, 0.0)
        done.append(f"global concurrency limit {jobs_limit_name!r} {verb}: {jobs_limit} jobs in flight")
        if creates_per_second:
            # A rate limit: each create takes a slot that decays away; `limit` bounds a burst.
            burst = max(1, round(creates_per_second))
            verb = await _upsert(client, create_limit_name, burst, creates_per_second)
            done.append(
                f"rate limit {create_limit_name!r} {verb}: {creates_per_second} creates per second (burst {burst})"
            )
        if max_queries_per_second:
            # Shared by every process's query cap; the burst is what may leave on top of the rate in a window.
            burst = shared_burst(max_queries_per_second)
            verb = await _upsert(client, query_limit_name, burst, max_queries_per_second)
            done.append(
                f"rate limit {query_limit_name!r} {verb}: {max_queries_per_second:g} job queries per second shared "
                f"by every process of this Prefect server (burst {burst})"
            )
    return done


async def _upsert(client: PrefectClient, name: str, limit: int, decay: float) -> str:
    """Create the limit, or set its size and decay and activate it; return what was done."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    try:
        await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True, slot_decay_per_second=decay)
        )
        return "created"
    # Every field explicit: the server stores a sent ``null`` decay as a constraint violation (409).
    await client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=limit, active=True, slot_decay_per_second=decay)
    )
    return "updated"


# --------------------------------------------------------------------------------------------- the account's limit

#: Creates accepted without a refusal, as a multiple of the limit, before the limit is probed one higher.
PROBE_PATIENCE = 2
#: The patience doubles each time a probe is refused (the limit was right), up to this multiple.
MAX_PROBE_PATIENCE = 32
#: Runs remembered as told about the account's limit (a long-lived worker runs many).
_TOLD_RUNS = 1024


@dataclass(frozen=True)
class AccountLimitReport:
    """What a process learned of a vendor account's concurrency limit from its refusals.

    Attributes:
        accepted_at_once: jobs of this process the account was running when it last refused one more (raised by
            answers that crossed that refusal); 0 when other work held every slot.
        limit: how many jobs the process keeps in flight on the account now (probed upward from that).
        refusals: creates the account refused for its concurrency in this process (each made nothing).
    """

    accepted_at_once: int
    limit: int
    refusals: int

    def describe(self) -> str:
        """One line: what the account accepted and how to avoid the refusals (the log and the CLI say it)."""
        n = self.accepted_at_once
        refused = f"{self.refusals} create" + ("s" if self.refusals != 1 else "")
        if n == 0:
            return (
                f"ShortAPI refused {refused} for the account's concurrency while no job of this process was running: "
                "other work on the same key (another worker or process) held its slots; nothing was created for the "
                "refused creates, which were sent again later. To avoid the refusals, share one jobs limit between "
                "every process on this key (kling-prefect setup --jobs-limit N, then --jobs-limit kling-jobs-in-flight)"
            )
        jobs = f"{n} job" + ("s" if n != 1 else "")
        return (
            f"ShortAPI accepted {jobs} at once on this account and refused more ({refused} refused for the "
            f"account's concurrency, nothing created or paid for them; each was sent again as jobs ended). To avoid "
            f"the refusals, set --max-concurrency {n} (max_concurrency={n}) or a jobs limit of {n} for every worker "
            f"on this key (kling-prefect setup --jobs-limit {n}, then --jobs-limit kling-jobs-in-flight)"
        )

    def as_dict(self) -> dict[str, int]:
        """JSON-friendly (the CLI's ``--json``)."""
        return {"accepted_at_once": self.accepted_at_once, "limit": self.limit, "refusals": self.refusals}


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class AccountLimiter:
    """How many jobs one process keeps in flight on one vendor account, learned from the account's refusals.

    No limit until the vendor refuses a create for the account's concurrency. Then (:meth:`refused`) the limit
    becomes the jobs this process had running at that moment, which is what the account accepted (at least 1,
    so a step whose slots other work holds still tries, with backoff). Creates that were out when the refusal
    came back and are accepted raise it to the jobs running at once then (the account did accept that many). After
    ``patience x limit`` creates accepted without a refusal the limit is probed one higher; each refused probe
    doubles the patience (up to :data:`MAX_PROBE_PATIENCE`), so a limit that is right costs a refusal rarely.
    Only creates accepted with the limit full count towards a probe: a limit not in use says nothing of the next.

    A step holds one slot from before its create until its job ended (:class:`AccountSlot`). Slots are shared
    by every event loop and thread of the process (sync flows run on Prefect's own loop thread, tasks submitted
    to a thread pool on theirs): the state is under a lock, and a waiter is woken on its own loop.
    """

    def __init__(self, *, patience: int = PROBE_PATIENCE) -> None:
        self._lock = threading.Lock()
        self._limit: int | None = None
        self._held = 0  # slots taken: a create about to be sent or a job in flight
        self._jobs = 0  # of those, jobs the account accepted that have not ended
        self._waiters: deque[_Waiter] = deque()
        self._refusals = 0
        self._accepted_at_once: int | None = None
        self._crossing = 0  # creates in progress when the account last refused: their answers crossed it
        self._base_patience = patience
        self._patience = patience
        self._streak = 0
        self._probed = False  # the limit was last raised by a probe
        self._told: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"AccountLimiter(limit={self._limit}, held={self._held}, jobs={self._jobs})"

    @property
    def limit(self) -> int | None:
        """Jobs the process keeps in flight on the account (``None``: none refused yet, no limit)."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held now (creates being sent and jobs running)."""
        return self._held

    # -- slots

    def _free(self) -> bool:
        return self._limit is None or self._held < self._limit

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served) and take it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._free():
                self._held += 1
                return
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            # Handed a slot as this wait was cancelled: give it back (a cancelled future is handled by _grant).
            if not queued and waiter.future.done() and not waiter.future.cancelled():
                self.release()
            raise

    def take(self) -> None:
        """Take a slot without waiting (a job that already exists, resumed), even over the limit."""
        with self._lock:
            self._held += 1

    def release(self, *, job: bool = False) -> None:
        """Give a slot back (``job``: its job ended) and wake who may take one now."""
        with self._lock:
            self._held = max(0, self._held - 1)
            if job:
                self._jobs = max(0, self._jobs - 1)
            granted = self._grant_locked()
        self._wake(granted)

    def accepted(self, *, created: bool = True) -> None:
        """A held slot's step has a job at the account: ``created`` by its create now, or resumed."""
        with self._lock:
            self._jobs += 1
            if created and self._limit is not None:
                if self._crossing > 0:  # sent before the refusal came back, accepted: the account took this many
                    self._crossing -= 1
                    self._limit = max(self._limit, self._jobs)
                    self._accepted_at_once = max(self._accepted_at_once or 0, self._jobs)
                if self._jobs >= self._limit:  # only a limit in use says anything about the next one up
                    self._streak += 1
                if self._streak >= self._patience * self._limit:
                    self._limit += 1
                    self._streak = 0
                    self._probed = True
            granted = self._grant_locked()
        self._wake(granted)

    def refused(self) -> int:
        """A held slot's create was refused for the account's concurrency: learn from it; returns the new limit.

        The caller still holds its slot (it gives it back with :meth:`release`).
        """
        with self._lock:
            running = self._jobs
            if self._probed and self._limit is not None and running >= self._limit - 1:
                self._patience = min(MAX_PROBE_PATIENCE, self._patience * 2)  # the probe found the same limit
            self._limit = max(1, running)
            self._accepted_at_once = running
            # The other creates out now (slots held without a job, this one's aside) may come back accepted.
            self._crossing = max(0, self._held - self._jobs - 1)
            self._refusals += 1
            self._streak = 0
            self._probed = False
            return self._limit

    def _grant_locked(self) -> list[_Waiter]:
        granted = []
        while self._waiters and self._free():
            granted.append(self._waiters.popleft())
            self._held += 1
        return granted

    def _wake(self, granted: list[_Waiter]) -> None:
        for waiter in granted:
            try:
                waiter.loop.call_soon_threadsafe(self._grant, waiter.future)
            except RuntimeError:  # its loop has closed: nobody waits for this slot
                self.release()

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled while the slot was on its way
            self.release()
        else:
            future.set_result(None)

    # -- what it learned

    def report(self) -> AccountLimitReport | None:
        """What was learned, once the account refused a create (``None`` before)."""
        with self._lock:
            if self._accepted_at_once is None or self._limit is None:
                return None
            return AccountLimitReport(self._accepted_at_once, self._limit, self._refusals)

    def tell_once(self, run: str) -> AccountLimitReport | None:
        """The report, the first time this is asked for ``run`` (a flow run id) after a refusal; else ``None``."""
        report = self.report()
        if report is None:
            return None
        with self._lock:
            if run in self._told:
                return None
            self._told[run] = None
            while len(self._told) > _TOLD_RUNS:
                self._told.popitem(last=False)
        return report

    def reset(self) -> None:
        """Forget what was learned (tests; a plan change at the vendor). Slots held stay held."""
        with self._lock:
            self._limit = None
            self._accepted_at_once = None
            self._crossing = 0
            self._refusals = 0
            self._patience = self._base_patience
            self._streak = 0
            self._probed = False
            self._told.clear()
            granted = self._grant_locked()
        self._wake(granted)


class AccountSlot:
    """One step's place in its account's :class:`AccountLimiter`: none, held for a create, or its job's.

    :func:`account_step` makes one for a clip (``generate_video``): the submit task finds it
    (:func:`current_account_slot`), takes it before each create and gives it back when a create is refused; the
    clip gives it back when its job ended.
    """

    def __init__(self, limiter: AccountLimiter) -> None:
        self.limiter = limiter
        self.state = "none"

    async def acquire(self) -> None:
        """Hold a slot for a create (waiting for one); a no-op when one is held already."""
        if self.state == "none":
            await self.limiter.acquire()
            self.state = "held"

    def accepted(self, *, created: bool = True) -> None:
        """The step has a job at the account (``created`` now, or resumed from an earlier attempt)."""
        if self.state == "job":
            return
        if self.state == "none":
            self.limiter.take()
        self.limiter.accepted(created=created)
        self.state = "job"

    def refused(self, *, busy: bool) -> None:
        """The create was refused and made nothing (``busy``: for the account's concurrency, which teaches the
        limiter); the slot is given back."""
        if busy and self.state == "held":
            self.limiter.refused()
        self.release()

    def release(self) -> None:
        """Give the slot back, if one is held (its job ended, or the step stopped)."""
        if self.state != "none":
            self.limiter.release(job=self.state == "job")
            self.state = "none"


_limiters: dict[tuple[str, str], AccountLimiter] = {}
_limiters_lock = threading.Lock()
_STEP_SLOT: ContextVar[AccountSlot | None] = ContextVar("kling_prefect_account_slot", default=None)


def _account(credentials: Any) -> tuple[str, str]:
    """An account's identity: its API root and a digest of its key (the key itself is never kept)."""
    key = credentials.api_key.get_secret_value() if credentials is not None else ""
    base = str(getattr(credentials, "base_url", "") or "")
    return base.rstrip("/"), hashlib.sha256(key.encode()).hexdigest()[:16]


def account_limiter(credentials: ShortAPICredentials) -> AccountLimiter:
    """The process's limiter of the account these credentials use (one per API root and key)."""
    account = _account(credentials)
    with _limiters_lock:
        limiter = _limiters.get(account)
        if limiter is None:
            limiter = _limiters[account] = AccountLimiter()
        return limiter


def account_reports() -> list[AccountLimitReport]:
    """What this process learned of each account that refused a create (usually one, or none)."""
    with _limiters_lock:
        limiters = list(_limiters.values())
    return [report for report in (limiter.report() for limiter in limiters) if report is not None]


def learned_account_limit(credentials: ShortAPICredentials | None = None) -> int | None:
    """The jobs this process keeps in flight on the account (``None``: it refused nothing yet).

    Args:
        credentials: whose account (default: ``SHORTAPI_KEY``/``SHORTAPI_BASE_URL``).
    """
    return account_limiter(credentials or ShortAPICredentials.from_env()).limit


def current_account_slot() -> AccountSlot | None:
    """The slot of the clip being made in this context (set by :func:`account_step`), if any."""
    return _STEP_SLOT.get()


@asynccontextmanager
async def account_step(credentials: ShortAPICredentials) -> AsyncIterator[AccountSlot]:
    """A clip's slot in its account's limiter for the body; given back at the end if still held."""
    slot = AccountSlot(account_limiter(credentials))
    token = _STEP_SLOT.set(slot)
    try:
        yield slot
    finally:
        _STEP_SLOT.reset(token)
        slot.release()
